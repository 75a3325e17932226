//! Daily ledger tests: caps across connections and threads, persistence,
//! day keys, crashed runs' reservations, coexistence with the audit tables.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use time::macros::date;

use super::*;

const USD: i64 = 1_000_000;
const HOST: &str = "api.stripe.com";
const DAY: Date = date!(2026 - 11 - 22);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "enforcer-spend-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn db(&self) -> PathBuf {
        self.0.join("audit.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, run: &str, cap_usd: i64) -> DailyLedger {
    DailyLedger::open(
        path,
        "billing-agent",
        run,
        vec![(HOST.into(), cap_usd * USD)],
    )
    .unwrap()
}

fn over(r: Result<DailyReservation, SpendError>) -> OverCap {
    match r {
        Err(SpendError::OverCap(o)) => o,
        other => panic!("expected a cap refusal, got {other:?}"),
    }
}

#[test]
fn cap_reserve_commit_release() {
    let dir = TempDir::new();
    let l = open(&dir.db(), "run-a", 100);
    assert_eq!(l.cap(HOST), Some(100 * USD));
    let a = l.reserve_on(HOST, 60 * USD, DAY).unwrap();
    assert_eq!(a.day(), "2026-11-22");
    let o = over(l.reserve_on(HOST, 41 * USD, DAY));
    assert_eq!(
        o,
        OverCap {
            cap_micros: 100 * USD,
            spent_micros: 0,
            in_flight_micros: 60 * USD,
            requested_micros: 41 * USD,
            scope: "daily host api.stripe.com (2026-11-22 UTC)".into(),
        }
    );
    // Commit a smaller actual cost: headroom comes back.
    assert_eq!(a.commit(Some(25 * USD)).unwrap(), 25 * USD);
    assert_eq!(l.usage(HOST, DAY).unwrap(), (25 * USD, 0));
    // Released (vendor refused): nothing spent.
    let b = l.reserve_on(HOST, 75 * USD, DAY).unwrap();
    assert!(l.reserve_on(HOST, 1, DAY).is_err());
    b.release().unwrap();
    assert_eq!(l.usage(HOST, DAY).unwrap(), (25 * USD, 0));
    // Dropped unsettled: released by the next transaction.
    {
        let _c = l.reserve_on(HOST, 75 * USD, DAY).unwrap();
    }
    let d = l.reserve_on(HOST, 75 * USD, DAY).unwrap();
    assert_eq!(l.usage(HOST, DAY).unwrap(), (25 * USD, 75 * USD));
    assert_eq!(d.commit(None).unwrap(), 75 * USD);
    assert_eq!(l.usage(HOST, DAY).unwrap(), (100 * USD, 0));
    assert_eq!(over(l.reserve_on(HOST, 1, DAY)).spent_micros, 100 * USD);
    // Zero always fits; the next day starts afresh.
    l.reserve_on(HOST, 0, DAY).unwrap().commit(None).unwrap();
    let next = l
        .reserve_on(HOST, 100 * USD, date!(2026 - 11 - 23))
        .unwrap();
    next.commit(None).unwrap();
    assert_eq!(
        l.usage(HOST, date!(2026 - 11 - 23)).unwrap(),
        (100 * USD, 0)
    );
}

#[test]
fn uncapped_hosts_and_other_policies_are_separate() {
    let dir = TempDir::new();
    let l = open(&dir.db(), "run-a", 10);
    // No daily cap on this host: nothing is stored.
    let r = l
        .reserve_on("api.openai.com", 1_000_000 * USD, DAY)
        .unwrap();
    assert_eq!(r.commit(None).unwrap(), 1_000_000 * USD);
    assert_eq!(l.usage("api.openai.com", DAY).unwrap(), (0, 0));
    l.reserve_on(HOST, 10 * USD, DAY)
        .unwrap()
        .commit(None)
        .unwrap();
    // Another policy with the same host pattern has its own budget.
    let other = DailyLedger::open(
        &dir.db(),
        "support-agent",
        "run-b",
        vec![(HOST.into(), 10 * USD)],
    )
    .unwrap();
    other
        .reserve_on(HOST, 10 * USD, DAY)
        .unwrap()
        .commit(None)
        .unwrap();
    assert!(l.reserve_on(HOST, 1, DAY).is_err());
    // A pattern listed twice keeps the lower cap; caps are clamped.
    let dup = DailyLedger::open(
        &dir.db(),
        "p",
        "run-c",
        vec![
            ("a".into(), 5 * USD),
            ("a".into(), 3 * USD),
            ("b".into(), -1),
            ("c".into(), i64::MAX),
        ],
    )
    .unwrap();
    assert_eq!(
        (dup.cap("a"), dup.cap("b"), dup.cap("c")),
        (Some(3 * USD), Some(0), Some(MAX_MICROS))
    );
    assert!(dup.reserve_on("b", 1, DAY).is_err());
    assert_eq!(dup.reserve_on("b", -5, DAY).unwrap().micros(), 0);
}

#[test]
fn persisted_across_reopen() {
    let dir = TempDir::new();
    {
        let l = open(&dir.db(), "run-a", 100);
        l.reserve_on(HOST, 40 * USD, DAY)
            .unwrap()
            .commit(None)
            .unwrap();
    }
    let l = open(&dir.db(), "run-b", 100);
    assert_eq!(l.usage(HOST, DAY).unwrap(), (40 * USD, 0));
    assert_eq!(
        over(l.reserve_on(HOST, 70 * USD, DAY)).spent_micros,
        40 * USD
    );
    l.reserve_on(HOST, 60 * USD, DAY)
        .unwrap()
        .commit(None)
        .unwrap();
    // A later run with a higher cap sees the same spend.
    drop(l);
    let l = open(&dir.db(), "run-c", 150);
    assert_eq!(
        over(l.reserve_on(HOST, 51 * USD, DAY)).spent_micros,
        100 * USD
    );
}

/// Two runs (two connections) on two groups of threads, reserving $3 at a
/// time against a $100 daily cap and committing, some releasing first:
/// together they stop at exactly 33 calls, $99.00.
#[test]
fn two_connections_never_overshoot() {
    let dir = TempDir::new();
    let a = open(&dir.db(), "run-a", 100);
    let b = open(&dir.db(), "run-b", 100);
    let committed = AtomicUsize::new(0);
    let barrier = Barrier::new(8);
    std::thread::scope(|s| {
        for t in 0..8 {
            let ledger = if t % 2 == 0 { a.clone() } else { b.clone() };
            let (committed, barrier) = (&committed, &barrier);
            s.spawn(move || {
                barrier.wait();
                let mut n = 0;
                loop {
                    n += 1;
                    match ledger.reserve_on(HOST, 3 * USD, DAY) {
                        Ok(r) if n % 4 == 0 => r.release().unwrap(),
                        Ok(r) => {
                            r.commit(None).unwrap();
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(SpendError::OverCap(o)) => {
                            // Only stop when nothing in flight could free room.
                            if o.in_flight_micros == 0 {
                                return;
                            }
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert_eq!(committed.load(Ordering::Relaxed), 33);
    assert_eq!(a.usage(HOST, DAY).unwrap(), (99 * USD, 0));
    assert_eq!(b.usage(HOST, DAY).unwrap(), (99 * USD, 0));
}

/// Separate ledgers (separate connections) in separate threads, each
/// making one reservation at the same moment: at most the cap is reserved.
#[test]
fn simultaneous_reservations_from_many_connections() {
    let dir = TempDir::new();
    open(&dir.db(), "setup", 10);
    let barrier = Arc::new(Barrier::new(12));
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (db, barrier, ok) = (dir.db(), barrier.clone(), ok.clone());
            std::thread::spawn(move || {
                let l = open(&db, &format!("run-{i}"), 10);
                barrier.wait();
                if let Ok(r) = l.reserve_on(HOST, 3 * USD, DAY) {
                    ok.fetch_add(1, Ordering::Relaxed);
                    r.commit(None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 3);
    assert_eq!(
        open(&dir.db(), "check", 10).usage(HOST, DAY).unwrap(),
        (9 * USD, 0)
    );
}

/// A run whose enforcer is gone (here: a child process standing in for
/// it, killed) leaves reservations behind; they are released when a cap
/// would refuse, and on open.
#[test]
fn crashed_runs_reservations_are_released() {
    let dir = TempDir::new();
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let owner = Owner::of(child.id());
    assert!(owner.start > 0, "{owner:?}");
    let crashed = DailyLedger::open_as(
        &dir.db(),
        "billing-agent",
        "run-crashed",
        vec![(HOST.into(), 100 * USD)],
        owner,
    )
    .unwrap();
    let held = crashed.reserve_on(HOST, 60 * USD, DAY).unwrap();
    std::mem::forget(held);
    drop(crashed);

    let live = open(&dir.db(), "run-live", 100);
    // The owner is alive: its reservation counts.
    assert_eq!(
        over(live.reserve_on(HOST, 50 * USD, DAY)).in_flight_micros,
        60 * USD
    );
    assert_eq!(live.release_dead().unwrap(), 0);

    child.kill().unwrap();
    child.wait().unwrap();
    // The refusal path notices the owner is gone and releases its hold.
    live.reserve_on(HOST, 50 * USD, DAY)
        .unwrap()
        .commit(None)
        .unwrap();
    assert_eq!(live.usage(HOST, DAY).unwrap(), (50 * USD, 0));

    // On open: a reservation left by a process of another boot.
    let other_boot = Owner {
        pid: std::process::id(),
        start: Owner::current().start,
        boot: "00000000-0000-0000-0000-000000000000".into(),
    };
    let ghost = DailyLedger::open_as(
        &dir.db(),
        "billing-agent",
        "run-ghost",
        vec![(HOST.into(), 100 * USD)],
        other_boot,
    )
    .unwrap();
    std::mem::forget(ghost.reserve_on(HOST, 30 * USD, DAY).unwrap());
    drop(ghost);
    assert_eq!(live.usage(HOST, DAY).unwrap(), (50 * USD, 30 * USD));
    // A pid that was reused by another process (start time differs).
    let reused = Owner {
        pid: std::process::id(),
        start: Owner::current().start + 1,
        boot: Owner::current().boot,
    };
    let reuse = DailyLedger::open_as(
        &dir.db(),
        "billing-agent",
        "run-reused",
        vec![(HOST.into(), 100 * USD)],
        reused,
    )
    .unwrap();
    // (Opening it released the other boot's reservation.)
    assert_eq!(live.usage(HOST, DAY).unwrap(), (50 * USD, 0));
    std::mem::forget(reuse.reserve_on(HOST, 10 * USD, DAY).unwrap());
    drop(reuse);
    assert_eq!(live.usage(HOST, DAY).unwrap(), (50 * USD, 10 * USD));
    let reopened = open(&dir.db(), "run-next", 100);
    assert_eq!(reopened.usage(HOST, DAY).unwrap(), (50 * USD, 0));
}

#[test]
fn commit_after_release_still_counts() {
    let dir = TempDir::new();
    let l = open(&dir.db(), "run-a", 100);
    let r = l.reserve_on(HOST, 20 * USD, DAY).unwrap();
    // Someone wrongly released it (as if this process had died).
    {
        let conn = lock(&l.inner.conn);
        conn.execute("DELETE FROM spend_reservations", []).unwrap();
    }
    r.commit(None).unwrap();
    assert_eq!(l.usage(HOST, DAY).unwrap(), (20 * USD, 0));
}

#[test]
fn our_own_process_is_alive() {
    let me = Owner::current();
    assert!(me.pid > 0 && me.start > 0 && !me.boot.is_empty(), "{me:?}");
    assert!(alive(
        i64::from(me.pid),
        i64::try_from(me.start).unwrap(),
        &me.boot,
        &me
    ));
    assert!(!alive(0, 0, &me.boot, &me));
    assert!(!alive(-1, 0, &me.boot, &me));
    assert!(!alive(i64::MAX, 0, &me.boot, &me));
}

#[test]
fn lives_beside_the_audit_tables() {
    let dir = TempDir::new();
    drop(crate::audit::AuditStore::open(&dir.db()).unwrap());
    let l = open(&dir.db(), "run-a", 100);
    l.reserve_on(HOST, 5 * USD, DAY)
        .unwrap()
        .commit(None)
        .unwrap();
    drop(l);
    // The audit module still opens (and migrates) the file.
    drop(crate::audit::AuditStore::open(&dir.db()).unwrap());
    assert_eq!(
        open(&dir.db(), "run-b", 100).usage(HOST, DAY).unwrap(),
        (5 * USD, 0)
    );
}

#[test]
fn storage_errors_are_errors() {
    let dir = TempDir::new();
    let e = DailyLedger::open(&dir.0, "p", "r", vec![]).unwrap_err();
    assert!(matches!(e, SpendError::Storage { .. }), "{e}");
    let missing = dir.0.join("no/such/dir/audit.db");
    assert!(DailyLedger::open(&missing, "p", "r", vec![]).is_err());
}
