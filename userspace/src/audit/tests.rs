//! Tests of the audit log as a whole, on real SQLite files: the writer's
//! round trip and failures, the documented queries, concurrency, group
//! commit, redaction, prune, filters and output formats.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::Connection;

use super::{testutil::*, *};
use crate::decision::{Layer, Verdict};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn started(path: &Path, run: &str, name: &str) -> AuditWriter {
    let store = AuditStore::open(path).unwrap();
    store.start_run(&run_info(run, name)).unwrap();
    store.writer()
}

fn count(path: &Path, sql: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn record_complete_and_finish_round_trip() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path().join("audit.db");
    let w = started(&path, "run-1", "billing-agent");
    let summary = rt().block_on(async {
        let mut e = request("run-1", Verdict::Allow, "API.Stripe.com", "POST", "/v1/payment_intents?amount=5000");
        e.secrets = vec![String::from("STRIPE_SECRET_KEY")];
        e.reserved_usd = Some(50.0);
        e.decided_ms = Some(0.25);
        let id = w.record(e).await.unwrap();
        // Committed before record() resolved: another connection sees it.
        assert_eq!(count(&path, "SELECT count(*) FROM events"), 1);
        w.complete(
            id,
            Outcome {
                status: Some(200),
                bytes_up: Some(120),
                bytes_down: Some(3400),
                latency_ms: Some(81.5),
                cost_usd: Some(50.0),
                vendor_txn_id: Some(String::from("pi_123")),
                ..Outcome::default()
            },
        );
        w.record_later(AuditEvent {
            run_id: String::from("run-1"),
            layer: Layer::Dns,
            verdict: Verdict::Deny,
            host: Some(String::from("evil.test")),
            port: Some(53),
            reason: String::from("name not in policy"),
            ..AuditEvent::default()
        });
        for _ in 0..2 {
            w.record(AuditEvent {
                run_id: String::from("run-1"),
                layer: Layer::Kernel,
                verdict: Verdict::Deny,
                host: Some(String::from("10.1.2.3")),
                port: Some(443),
                pid: Some(77),
                comm: Some(String::from("curl")),
                reason: String::from("not redirected"),
                ..AuditEvent::default()
            })
            .await
            .unwrap();
        }
        let mut exfil = request("run-1", Verdict::Deny, "paste.evil.test", "POST", "/upload");
        exfil.reason = String::from("credential exfiltration attempt: STRIPE_SECRET_KEY placeholder sent to paste.evil.test");
        exfil.alarm = Some(crate::decision::Alarm::Exfiltration);
        // Only the typed alarm counts: the same words in a reason do not.
        let mut lookalike = request("run-1", Verdict::Deny, "x.test", "GET", "/");
        lookalike.reason = String::from("credential exfiltration attempt (just words)");
        w.record(lookalike).await.unwrap();
        w.record(exfil).await.unwrap();
        w.record(request("run-1", Verdict::Ask, "api.stripe.com", "POST", "/v1/refunds"))
            .await
            .unwrap();
        let unknown = w
            .finish_run(RunEnd {
                run_id: String::from("nope"),
                ended_at: SystemTime::now(),
                exit_code: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown, AuditError::UnknownRun(String::from("nope")));
        assert_eq!(
            w.start_run(run_info("run-1", "again")).await.unwrap_err(),
            AuditError::DuplicateRun(String::from("run-1"))
        );
        w.healthy().unwrap();
        w.finish_run(RunEnd {
            run_id: String::from("run-1"),
            ended_at: SystemTime::now(),
            exit_code: 3,
        })
        .await
        .unwrap()
    });
    let c = summary.counts;
    assert_eq!(
        (c.requests_allowed, c.requests_refused, c.requests_asked),
        (1, 2, 1)
    );
    assert_eq!(summary.exit_code, Some(3));
    assert_eq!(summary.name, "billing-agent");
    assert_eq!(summary.counts.exfiltration_attempts, 1);
    assert!((summary.spend_usd - 50.0).abs() < 1e-9);
    assert_eq!(
        summary.top_refused.first(),
        Some(&(String::from("10.1.2.3:443"), 2))
    );
    assert_eq!(summary.db_path, path.display().to_string());
    let text = summary.to_string();
    assert!(
        text.lines()
            .next()
            .unwrap_or_default()
            .contains("EXFILTRATION"),
        "{text}"
    );

    let ro = AuditStore::open_read_only(&path).unwrap();
    assert_eq!(ro.summary("run-1").unwrap(), summary);
    let rows = ro.events(&EventFilter::default()).unwrap();
    assert_eq!(rows.len(), 7);
    let alarms: Vec<_> = rows.iter().filter_map(|r| r.alarm.as_deref()).collect();
    assert_eq!(alarms, ["exfiltration"]);
    let first = &rows[0];
    assert_eq!(first.host.as_deref(), Some("api.stripe.com"));
    assert_eq!(first.vendor.as_deref(), Some("stripe"));
    assert_eq!(first.path.as_deref(), Some("/v1/payment_intents"));
    assert!(first.query_redacted);
    assert_eq!(first.status, Some(200));
    assert_eq!((first.bytes_up, first.bytes_down), (Some(120), Some(3400)));
    assert_eq!(first.vendor_txn_id.as_deref(), Some("pi_123"));
    assert_eq!(first.cost_usd, Some(50.0));
    assert_eq!(first.reserved_usd, Some(50.0));
    assert_eq!(first.secrets, vec![String::from("STRIPE_SECRET_KEY")]);
    assert_eq!(first.run_name.as_deref(), Some("billing-agent"));
    assert_eq!(
        (first.pid, first.comm.as_deref()),
        (Some(4242), Some("python3"))
    );
    let dns = rows.iter().find(|r| r.layer == "dns").unwrap();
    assert_eq!(
        (dns.verdict.as_str(), dns.vendor.as_deref()),
        ("deny", Some("evil"))
    );
    let runs = ro.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].exit_code, Some(3));
    assert!(runs[0].ended_at.is_some());
    assert_eq!((runs[0].events, runs[0].allowed, runs[0].denied), (7, 1, 5));
}

/// Yesterday at 12:00 UTC.
fn yesterday_noon() -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(now - now % 86_400 - 86_400 + 43_200)
}

#[test]
fn the_documented_queries_run_as_written() {
    let dir = TempDir::new("queries");
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path).unwrap();
    store
        .start_run(&run_info("run-billing", "billing-agent"))
        .unwrap();
    store
        .start_run(&run_info("run-support", "support-agent"))
        .unwrap();
    let w = store.writer();
    let y = yesterday_noon();
    rt().block_on(async {
        for (i, (run, path, cost, txn)) in [
            ("run-billing", "/v1/payment_intents", 10.0, "pi_1"),
            ("run-billing", "/v1/payment_intents", 15.0, "pi_2"),
            ("run-billing", "/v1/refunds", 5.0, "re_1"),
            ("run-support", "/v1/refunds", 5.0, "re_2"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = request(run, Verdict::Allow, "api.stripe.com", "POST", path);
            e.at = y + Duration::from_secs(60 * i as u64);
            e.cost_usd = Some(cost);
            e.vendor_txn_id = Some(txn.to_owned());
            w.record(e).await.unwrap();
        }
        // Not Stripe, and Stripe today: neither counts for "yesterday".
        let mut other = request(
            "run-billing",
            Verdict::Allow,
            "api.openai.com",
            "POST",
            "/v1/chat",
        );
        other.at = y;
        other.cost_usd = Some(99.0);
        w.record(other).await.unwrap();
        let mut today = request(
            "run-billing",
            Verdict::Allow,
            "api.stripe.com",
            "GET",
            "/v1/customers/cus_1",
        );
        today.cost_usd = Some(1000.0);
        w.record(today).await.unwrap();
        w.record(AuditEvent {
            run_id: String::from("run-billing"),
            layer: Layer::Connection,
            verdict: Verdict::Deny,
            host: Some(String::from("evil.test")),
            port: Some(443),
            reason: String::from("host not in policy"),
            at: y + Duration::from_secs(600),
            ..AuditEvent::default()
        })
        .await
        .unwrap();
        w.flush().await.unwrap();
    });
    drop(w);

    let conn = Connection::open(&path).unwrap();
    let mut q1 = conn
        .prepare("SELECT vendor, endpoint, cost_usd, vendor_txn_id, called_at, policy_verdict FROM audit_log WHERE agent_run_id = 'run-billing' ORDER BY called_at;")
        .unwrap();
    type Q1 = (
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
        String,
        String,
    );
    let rows: Vec<Q1> = q1
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(rows[0].0.as_deref(), Some("stripe"));
    assert_eq!(rows[0].1.as_deref(), Some("POST /v1/payment_intents"));
    assert_eq!(rows[0].2, Some(10.0));
    assert_eq!(rows[0].3.as_deref(), Some("pi_1"));
    assert_eq!(rows[0].5, "allow");
    assert!(
        rows.windows(2).all(|w| w[0].4 <= w[1].4),
        "ordered by called_at"
    );
    let openai = rows
        .iter()
        .find(|r| r.0.as_deref() == Some("openai"))
        .unwrap();
    assert_eq!(openai.1.as_deref(), Some("POST /v1/chat"));
    let refused = rows.iter().find(|r| r.5 == "deny").unwrap();
    assert_eq!(refused.1.as_deref(), Some("evil.test:443"));
    assert_eq!(refused.0.as_deref(), Some("evil"));

    let mut q2 = conn
        .prepare("SELECT agent_name, SUM(cost_usd), COUNT(*) FROM audit_log WHERE vendor = 'stripe' AND date(called_at) = date('now', '-1 day') GROUP BY agent_name ORDER BY 2 DESC;")
        .unwrap();
    let rows: Vec<(String, f64, i64)> = q2
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (String::from("billing-agent"), 30.0, 3),
            (String::from("support-agent"), 5.0, 1),
        ]
    );
}

#[test]
fn two_enforcers_write_one_database_concurrently() {
    let dir = TempDir::new("two-writers");
    let path = dir.path().join("audit.db");
    drop(AuditStore::open(&path).unwrap());
    const N: usize = 400;
    std::thread::scope(|s| {
        for run in ["run-a", "run-b"] {
            let path = path.clone();
            s.spawn(move || {
                let w = started(&path, run, run);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..N {
                        if i % 4 == 0 {
                            w.record_later(request(run, Verdict::Deny, "evil.test", "GET", "/"));
                        } else {
                            w.record(request(
                                run,
                                Verdict::Allow,
                                "api.stripe.com",
                                "GET",
                                "/v1/x",
                            ))
                            .await
                            .unwrap();
                        }
                    }
                    w.flush().await.unwrap();
                    w.healthy().unwrap();
                });
            });
        }
    });
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE run_id = 'run-a'"),
        N as i64
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE run_id = 'run-b'"),
        N as i64
    );
}

/// Rows per second of `record()`, one caller awaiting each row vs 32 tasks.
fn throughput(
    path: &Path,
    opts: &StoreOptions,
    tasks: usize,
    per_task: usize,
) -> (f64, WriterStats) {
    let store = AuditStore::open_with(path, opts).unwrap();
    store
        .start_run(&run_info(&format!("bench-{tasks}"), "bench"))
        .unwrap();
    let w = store.writer();
    let rt = rt();
    let t = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let w = w.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let e = request(
                        "bench",
                        Verdict::Allow,
                        "api.stripe.com",
                        "GET",
                        "/v1/customers/cus_1?expand=x",
                    );
                    w.record(e).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let secs = t.elapsed().as_secs_f64();
    ((tasks * per_task) as f64 / secs, w.stats())
}

#[test]
fn group_commit_batches_concurrent_callers() {
    let dir = TempDir::new("group-commit");
    for (label, opts, seq_rows) in [
        ("synchronous=NORMAL", StoreOptions::default(), 2_000),
        (
            "synchronous=FULL",
            StoreOptions {
                sync_full: true,
                ..StoreOptions::default()
            },
            300,
        ),
    ] {
        let seq_path = dir.path().join(format!("seq-{}.db", opts.sync_full));
        let (seq, seq_stats) = throughput(&seq_path, &opts, 1, seq_rows);
        let con_path = dir.path().join(format!("con-{}.db", opts.sync_full));
        let (con, con_stats) = throughput(&con_path, &opts, 32, 250);
        println!(
            "audit record() {label}: sequential {seq:.0} rows/s ({} rows, {} commits); \
             32 concurrent tasks {con:.0} rows/s ({} rows, {} commits, {:.1} rows/commit)",
            seq_stats.rows,
            seq_stats.commits,
            con_stats.rows,
            con_stats.commits,
            con_stats.rows as f64 / con_stats.commits.max(1) as f64,
        );
        assert_eq!(seq_stats.rows, seq_rows as u64);
        assert_eq!(
            seq_stats.commits, seq_stats.rows,
            "one caller: one commit per row"
        );
        assert_eq!(con_stats.rows, 8_000);
        assert!(
            con_stats.commits < con_stats.rows,
            "concurrent rows share commits"
        );
        assert_eq!(count(&con_path, "SELECT count(*) FROM events"), 8_000);
    }
}

fn files_of(path: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn query_values_and_secrets_never_reach_the_files() {
    let dir = TempDir::new("secrets");
    let path = dir.path().join("audit.db");
    let w = started(&path, "run-s", "agent");
    let reader = Connection::open(&path).unwrap();
    rt().block_on(async {
        for i in 0..50 {
            let target = match i % 3 {
                0 => "/v1/charges?token=SECRETVALUE",
                1 => "/v1/charges?a=1&api_key=SECRETVALUE#SECRETVALUE",
                _ => "http://user:SECRETVALUE@api.stripe.com/v1/x?q=SECRETVALUE",
            };
            let mut e = request("run-s", Verdict::Allow, "api.stripe.com", "GET", target);
            e.secrets = vec![String::from("STRIPE_SECRET_KEY")];
            if i % 2 == 0 {
                let id = w.record(e).await.unwrap();
                w.complete(
                    id,
                    Outcome {
                        status: Some(200),
                        ..Outcome::default()
                    },
                );
            } else {
                w.record_later(e);
            }
        }
        w.flush().await.unwrap();
    });
    let files = files_of(&path);
    assert!(files.len() >= 2, "db and wal: {files:?}");
    for f in &files {
        assert!(
            !contains(&fs::read(f).unwrap(), b"SECRETVALUE"),
            "{} before checkpoint",
            f.display()
        );
    }
    let _: (i64, i64, i64) = reader
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    for f in files_of(&path) {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, b"SECRETVALUE"),
            "{} after checkpoint",
            f.display()
        );
    }
    assert!(
        contains(&fs::read(&path).unwrap(), b"STRIPE_SECRET_KEY"),
        "names are kept"
    );
    let redacted = count(
        &path,
        "SELECT count(*) FROM events WHERE query_redacted = 1",
    );
    assert_eq!(redacted, 50);
    drop(w);
}

#[test]
fn a_failed_write_makes_the_writer_unhealthy_for_good() {
    let dir = TempDir::new("full");
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path).unwrap();
    store.start_run(&run_info("run-f", "agent")).unwrap();
    // A database that cannot grow behaves like a full disk (SQLITE_FULL).
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let _: i64 = store
        .conn
        .query_row(&format!("PRAGMA max_page_count = {}", pages + 2), [], |r| {
            r.get(0)
        })
        .unwrap();
    let w = store.writer();
    rt().block_on(async {
        let mut failure = None;
        for _ in 0..200 {
            let mut e = request("run-f", Verdict::Allow, "api.stripe.com", "GET", "/");
            e.reason = "x".repeat(1500);
            match w.record(e).await {
                Ok(_) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("the database filled up");
        assert!(matches!(failure, AuditError::DiskFull { .. }), "{failure}");
        assert!(failure.to_string().contains("--no-audit"), "{failure}");
        assert_eq!(w.healthy().unwrap_err(), failure);
        let later = w
            .record(request("run-f", Verdict::Allow, "a.test", "GET", "/"))
            .await;
        assert_eq!(later.unwrap_err(), failure);
        w.record_later(request("run-f", Verdict::Deny, "a.test", "GET", "/"));
        w.complete(1, Outcome::default());
        assert_eq!(w.flush().await.unwrap_err(), failure);
        let end = RunEnd {
            run_id: String::from("run-f"),
            ended_at: SystemTime::now(),
            exit_code: 0,
        };
        assert_eq!(w.finish_run(end).await.unwrap_err(), failure);
    });
}

#[test]
fn pending_records_fail_together_with_the_batch() {
    let dir = TempDir::new("full-concurrent");
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path).unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let _: i64 = store
        .conn
        .query_row(&format!("PRAGMA max_page_count = {}", pages + 1), [], |r| {
            r.get(0)
        })
        .unwrap();
    let w = store.writer();
    let results = rt().block_on(async {
        let mut handles = Vec::new();
        for _ in 0..32 {
            let w = w.clone();
            handles.push(tokio::spawn(async move {
                let mut e = request("r", Verdict::Allow, "a.test", "GET", "/");
                e.reason = "y".repeat(2000);
                let mut out = Vec::new();
                for _ in 0..20 {
                    out.push(w.record(e.clone()).await.is_ok());
                }
                out
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let ok = results.iter().filter(|r| **r).count();
    assert!(ok < results.len(), "some writes failed");
    assert_eq!(
        count(&path, "SELECT count(*) FROM events") as usize,
        ok,
        "every acknowledged row is in the database, and only those"
    );
    assert!(w.healthy().is_err());
}

#[test]
fn prune_deletes_old_events_and_ended_runs() {
    let dir = TempDir::new("prune");
    let path = dir.path().join("audit.db");
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let store = AuditStore::open(&path).unwrap();
    let mut old = run_info("old", "agent");
    old.started_at = now - 40 * day;
    store.start_run(&old).unwrap();
    let mut live = run_info("live", "agent");
    live.started_at = now - 40 * day;
    store.start_run(&live).unwrap();
    store.start_run(&run_info("recent", "agent")).unwrap();
    let w = store.writer();
    rt().block_on(async {
        for (run, age_days, n) in [
            ("old", 40, 3),
            ("live", 35, 2),
            ("live", 1, 4),
            ("recent", 0, 5),
        ] {
            for _ in 0..n {
                let mut e = request(run, Verdict::Allow, "api.stripe.com", "GET", "/");
                e.at = now - age_days * day;
                w.record(e).await.unwrap();
            }
        }
        // An event of the old run stamped after its end still goes with it.
        let mut late = request("old", Verdict::Deny, "x.test", "GET", "/");
        late.at = now - 2 * day;
        w.record(late).await.unwrap();
        for (run, ended) in [("old", now - 39 * day), ("recent", now)] {
            w.finish_run(RunEnd {
                run_id: run.to_owned(),
                ended_at: ended,
                exit_code: 0,
            })
            .await
            .unwrap();
        }
    });
    drop(w);
    let store = AuditStore::open(&path).unwrap();
    let report = store.prune(parse_age("30d").unwrap()).unwrap();
    assert_eq!(report, PruneReport { events: 6, runs: 1 });
    let runs: Vec<String> = store
        .runs(&RunFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(runs, vec![String::from("recent"), String::from("live")]);
    assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 9);
    assert_eq!(
        store.prune(parse_age("30d").unwrap()).unwrap(),
        PruneReport::default()
    );
    drop(store);
    let ro = AuditStore::open_read_only(&path).unwrap();
    let e = ro.prune(Duration::ZERO).unwrap_err();
    assert!(matches!(e, AuditError::ReadOnly { .. }), "{e}");
}

#[test]
fn prune_works_in_chunks() {
    let dir = TempDir::new("prune-chunks");
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path).unwrap();
    let old = clock::to_text(SystemTime::now() - Duration::from_secs(100 * 86_400));
    store
        .conn
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12001)
             INSERT INTO events (run_id, at, layer, verdict, reason)
             SELECT 'r', ?1, 'kernel', 'deny', 'x' FROM n",
            [&old],
        )
        .unwrap();
    assert_eq!(
        store.prune(Duration::from_secs(86_400)).unwrap().events,
        12_001
    );
}

/// Three runs and six events over the last hour; returns the time they start from.
fn filter_fixture(path: &Path) -> SystemTime {
    let store = AuditStore::open(path).unwrap();
    let base = SystemTime::now() - Duration::from_secs(3_600);
    for (i, run) in ["r1", "r2", "r3"].iter().enumerate() {
        let mut info = run_info(run, &format!("agent-{run}"));
        info.started_at = base + Duration::from_secs(600 * i as u64);
        store.start_run(&info).unwrap();
    }
    let w = store.writer();
    rt().block_on(async {
        let evs = [
            ("r1", Layer::Request, Verdict::Allow, "api.stripe.com", 0),
            ("r1", Layer::Connection, Verdict::Deny, "evil.test", 60),
            ("r1", Layer::Dns, Verdict::Deny, "files.evil.test", 120),
            ("r2", Layer::Request, Verdict::Ask, "api.stripe.com", 700),
            ("r2", Layer::Kernel, Verdict::Deny, "10.0.0.1", 710),
            (
                "r3",
                Layer::Request,
                Verdict::Allow,
                "uploads.stripe.com",
                1300,
            ),
        ];
        for (run, layer, verdict, host, secs) in evs {
            let mut e = request(run, verdict, host, "GET", "/p");
            e.layer = layer;
            e.at = base + Duration::from_secs(secs);
            w.record(e).await.unwrap();
        }
    });
    base
}

#[test]
fn runs_and_events_filters() {
    let dir = TempDir::new("filters");
    let path = dir.path().join("audit.db");
    let base = filter_fixture(&path);
    let s = AuditStore::open_read_only(&path).unwrap();
    let ids = |rows: Vec<RunRow>| rows.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.runs(&RunFilter::default()).unwrap()),
        ["r3", "r2", "r1"]
    );
    assert_eq!(
        ids(s
            .runs(&RunFilter {
                limit: Some(2),
                ..RunFilter::default()
            })
            .unwrap()),
        ["r3", "r2"]
    );
    assert_eq!(
        ids(s
            .runs(&RunFilter {
                since: Some(base + Duration::from_secs(300)),
                ..RunFilter::default()
            })
            .unwrap()),
        ["r3", "r2"]
    );

    let hosts = |f: EventFilter| {
        s.events(&f)
            .unwrap()
            .into_iter()
            .map(|e| e.host.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(hosts(EventFilter::default()).len(), 6);
    assert_eq!(
        hosts(EventFilter {
            run_id: Some(String::from("r1")),
            ..EventFilter::default()
        }),
        ["api.stripe.com", "evil.test", "files.evil.test"]
    );
    assert_eq!(
        hosts(EventFilter {
            verdict: Some(Verdict::Deny),
            ..EventFilter::default()
        }),
        ["evil.test", "files.evil.test", "10.0.0.1"]
    );
    assert_eq!(
        hosts(EventFilter {
            layer: Some(Layer::Request),
            ..EventFilter::default()
        }),
        ["api.stripe.com", "api.stripe.com", "uploads.stripe.com"]
    );
    assert_eq!(
        hosts(EventFilter {
            host: Some(String::from("API.stripe.com")),
            ..EventFilter::default()
        }),
        ["api.stripe.com", "api.stripe.com"]
    );
    assert_eq!(
        hosts(EventFilter {
            host: Some(String::from("*.evil.test")),
            ..EventFilter::default()
        }),
        ["evil.test", "files.evil.test"]
    );
    assert_eq!(
        hosts(EventFilter {
            since: Some(base + Duration::from_secs(700)),
            ..EventFilter::default()
        }),
        ["api.stripe.com", "10.0.0.1", "uploads.stripe.com"]
    );
    assert_eq!(
        hosts(EventFilter {
            limit: Some(2),
            ..EventFilter::default()
        }),
        ["10.0.0.1", "uploads.stripe.com"],
        "the most recent, oldest first"
    );
    assert_eq!(
        hosts(EventFilter {
            run_id: Some(String::from("r1")),
            verdict: Some(Verdict::Deny),
            layer: Some(Layer::Dns),
            ..EventFilter::default()
        }),
        ["files.evil.test"]
    );
    assert!(
        hosts(EventFilter {
            run_id: Some(String::from("zz")),
            ..EventFilter::default()
        })
        .is_empty()
    );
}

#[test]
fn table_json_lines_and_csv_output() {
    let dir = TempDir::new("formats");
    let path = dir.path().join("audit.db");
    let _ = filter_fixture(&path);
    let store = AuditStore::open(&path).unwrap();
    let w = store.writer();
    rt().block_on(async {
        let mut e = request("r1", Verdict::Deny, "evil.test", "POST", "/a,b\"c\n?x=1");
        e.reason = String::from("a reason, with \"quotes\"\nand a newline \x1b[31mred");
        e.secrets = vec![String::from("A"), String::from("B")];
        w.record(e).await.unwrap();
    });
    drop(w);
    let s = AuditStore::open_read_only(&path).unwrap();
    let runs = s.runs(&RunFilter::default()).unwrap();
    let events = s.events(&EventFilter::default()).unwrap();

    let mut table = Vec::new();
    write_events(&mut table, &events, OutputFormat::Table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), events.len() + 1, "{table}");
    assert!(!table.contains('\x1b'), "{table:?}");
    assert!(table.contains("api.stripe.com:443"), "{table}");
    let mut rt_ = Vec::new();
    write_runs(&mut rt_, &runs, OutputFormat::Table).unwrap();
    let rt_ = String::from_utf8(rt_).unwrap();
    assert_eq!(rt_.lines().count(), 4, "{rt_}");
    assert!(rt_.contains("agent-r1"), "{rt_}");

    let mut jl = Vec::new();
    write_events(&mut jl, &events, OutputFormat::JsonLines).unwrap();
    let parsed: Vec<serde_json::Value> = String::from_utf8(jl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), events.len());
    let last = parsed.last().unwrap();
    assert_eq!(last["reason"], events.last().unwrap().reason.as_str());
    assert_eq!(last["secrets"], serde_json::json!(["A", "B"]));
    assert_eq!(last["query_redacted"], true);
    let mut jl = Vec::new();
    write_runs(&mut jl, &runs, OutputFormat::JsonLines).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8(jl).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["run_id"], "r3");

    let mut c = Vec::new();
    write_events(&mut c, &events, OutputFormat::Csv).unwrap();
    let mut reader = csv::Reader::from_reader(c.as_slice());
    let header = reader.headers().unwrap().clone();
    assert_eq!(header.get(0), Some("id"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), events.len());
    let last = records.last().unwrap();
    assert_eq!(
        last.get(col("reason")),
        Some(events.last().unwrap().reason.as_str())
    );
    assert_eq!(last.get(col("path")), Some("/a,b\"c\n"));
    assert_eq!(last.get(col("secrets")), Some("A;B"));
    assert_eq!(last.get(col("host")), Some("evil.test"));
    let mut c = Vec::new();
    write_runs(&mut c, &runs, OutputFormat::Csv).unwrap();
    let mut reader = csv::Reader::from_reader(c.as_slice());
    assert_eq!(reader.records().count(), 3);

    let mut empty = Vec::new();
    write_events(&mut empty, &[], OutputFormat::Table).unwrap();
    assert_eq!(String::from_utf8(empty).unwrap().lines().count(), 1);
}

#[test]
fn output_formats_parse() {
    assert_eq!(
        "table".parse::<OutputFormat>().unwrap(),
        OutputFormat::Table
    );
    assert_eq!(
        "jsonl".parse::<OutputFormat>().unwrap(),
        OutputFormat::JsonLines
    );
    assert_eq!(
        "JSON".parse::<OutputFormat>().unwrap(),
        OutputFormat::JsonLines
    );
    assert_eq!("csv".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
    let e = "xml".parse::<OutputFormat>().unwrap_err();
    assert_eq!(e, AuditError::InvalidFormat(String::from("xml")));
    assert!(e.to_string().contains("jsonl"));
}

#[test]
fn writer_handles_are_send_sync_and_cheap() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<AuditWriter>();
    let _ = Arc::new(0);
}

#[test]
fn every_layer_and_verdict_is_recorded() {
    let dir = TempDir::new("layers");
    let path = dir.path().join("audit.db");
    let w = started(&path, "run-l", "agent");
    rt().block_on(async {
        for layer in [
            Layer::Kernel,
            Layer::Dns,
            Layer::Connection,
            Layer::Request,
            Layer::Control,
        ] {
            for verdict in [Verdict::Allow, Verdict::Deny, Verdict::Ask] {
                w.record(AuditEvent {
                    run_id: String::from("run-l"),
                    layer,
                    verdict,
                    reason: String::from("r"),
                    ..AuditEvent::default()
                })
                .await
                .unwrap();
            }
        }
    });
    w.healthy().unwrap();
    assert_eq!(
        count(&path, "SELECT count(DISTINCT layer) FROM audit_log"),
        5
    );
    assert_eq!(count(&path, "SELECT count(*) FROM events"), 15);
}

/// The child half of `acknowledged_rows_survive_sigkill`: records rows from
/// 16 tasks as fast as it can, printing each id once `record()` returned.
#[test]
#[ignore = "run by acknowledged_rows_survive_sigkill in a child process"]
fn sigkill_child() {
    let Some(path) = std::env::var_os("ENFORCER_AUDIT_SIGKILL_DB") else {
        return;
    };
    let w = AuditStore::open(Path::new(&path)).unwrap().writer();
    rt().block_on(async {
        let mut handles = Vec::new();
        for _ in 0..16 {
            let w = w.clone();
            handles.push(tokio::spawn(async move {
                loop {
                    let e = request("kill", Verdict::Allow, "api.stripe.com", "GET", "/");
                    let id = w.record(e).await.unwrap();
                    println!("ACK {id}");
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    });
}

#[test]
fn acknowledged_rows_survive_sigkill() {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Command, Stdio},
    };
    let dir = TempDir::new("sigkill");
    let path = dir.path().join("audit.db");
    drop(AuditStore::open(&path).unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "audit::tests::sigkill_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ENFORCER_AUDIT_SIGKILL_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ack = |line: std::io::Result<String>| {
        line.ok()
            .and_then(|l| l.strip_prefix("ACK ").and_then(|id| id.parse::<i64>().ok()))
    };
    let mut acked = Vec::new();
    while acked.len() < 2_000 {
        match lines.next() {
            Some(line) => acked.extend(ack(line)),
            None => break,
        }
    }
    child.kill().unwrap(); // SIGKILL, in the middle of the load
    acked.extend(lines.filter_map(ack));
    child.wait().unwrap();
    assert!(
        acked.len() >= 2_000,
        "the child recorded {} rows",
        acked.len()
    );

    let conn = Connection::open(&path).unwrap();
    let mut exists = conn
        .prepare("SELECT count(*) FROM events WHERE id = ?1")
        .unwrap();
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| exists.query_row([id], |r| r.get::<_, i64>(0)).unwrap() != 1)
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let rows = count(&path, "SELECT count(*) FROM events");
    println!(
        "SIGKILL under load: {} rows acknowledged, {rows} in the database",
        acked.len()
    );
}

#[test]
fn a_labelled_run_is_found_by_its_label_and_an_unlabelled_one_by_its_id() {
    let dir = TempDir::new("labels");
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path).unwrap();
    let mut labelled = run_info("20261130-120000-aaaaaa", "billing-agent");
    labelled.label = Some(String::from("billing/run_abc123"));
    labelled.unit = Some(String::from("billing-agent.service"));
    store.start_run(&labelled).unwrap();
    store
        .start_run(&run_info("20261130-120000-bbbbbb", "support-agent"))
        .unwrap();
    let w = store.writer();
    rt().block_on(async {
        for run in ["20261130-120000-aaaaaa", "20261130-120000-bbbbbb"] {
            w.record(request(
                run,
                Verdict::Allow,
                "api.stripe.com",
                "GET",
                "/v1/x",
            ))
            .await
            .unwrap();
        }
        w.flush().await.unwrap();
    });
    drop(w);
    let conn = Connection::open(&path).unwrap();
    let row = |agent_run_id: &str| -> Vec<(String, Option<String>, Option<String>)> {
        conn.prepare("SELECT enforcer_run_id, label, unit FROM audit_log WHERE agent_run_id = ?1")
            .unwrap()
            .query_map([agent_run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        row("billing/run_abc123"),
        [(
            String::from("20261130-120000-aaaaaa"),
            Some(String::from("billing/run_abc123")),
            Some(String::from("billing-agent.service"))
        )]
    );
    assert_eq!(
        row("20261130-120000-bbbbbb"),
        [(String::from("20261130-120000-bbbbbb"), None, None)]
    );
    // A labelled run answers to its label, not to enforcer's id.
    assert!(row("20261130-120000-aaaaaa").is_empty());
}
