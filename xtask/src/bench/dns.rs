//! `cargo xtask bench dns`: DNS queries per second through the kernel
//! redirect to enforcer's resolver, for an allowed name (answered from the
//! run's table: the same path as a cached upstream answer) and for a refused
//! one (NXDOMAIN, no upstream query), against a trivial responder that
//! answers every query with NXDOMAIN without looking at it (the floor: what
//! a UDP round trip costs on this machine).
//!
//! The probe runs as `nobody`; inside the run its queries go to
//! 127.0.0.1:53, which the kernel redirects to the resolver. Runs alternate;
//! medians. Each run writes its decisions to a throwaway audit database.
//!
//! Then a flood: the probe sends queries for distinct refused names at a
//! fixed rate while it looks up an allowed name every 100 ms (1 s each, no
//! retry): how many allowed lookups succeed and how long they take, and
//! enforcer's resident memory before and after the flood (100 000 names at
//! the lowest rate).

use std::{
    io::BufRead as _,
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use super::{median, release};
use crate::util;

/// Queries per client per run.
const QUERIES: &str = "20000";
const ROUNDS: usize = 5;

pub fn run() -> anyhow::Result<()> {
    super::build_then_become_root(&["bench", "dns"])?;
    dns()
}

/// Answers every query with its own header turned into an NXDOMAIN reply.
fn trivial_responder() -> anyhow::Result<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let port = sock.local_addr()?.port();
    for _ in 0..2 {
        let s = sock.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if n >= 12 {
                    buf[2] |= 0x80; // QR
                    buf[3] = (buf[3] & 0xf0) | 3; // NXDOMAIN
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
    }
    Ok(port)
}

/// Flood rates (names per second) and durations: the first sends 100 000
/// distinct names, slowly enough for the resolver to answer each.
const FLOODS: [(u32, u32); 3] = [(10_000, 10), (30_000, 5), (100_000, 3)];

/// What one flood run reported.
struct Flood {
    report: String,
    rss_before_kib: u64,
    rss_after_kib: u64,
    hwm_kib: u64,
}

impl Flood {
    /// The word after `key` in the probe's report.
    fn field(&self, key: &str) -> &str {
        let mut words = self.report.split_whitespace();
        while let Some(w) = words.next() {
            if w == key {
                return words.next().unwrap_or("?");
            }
        }
        "?"
    }
}

/// One `enforcer launch` of `enforcer-probe dns-flood`, with enforcer's
/// resident memory read when the flood starts and once it is over.
fn flood(
    enforcer: &std::path::Path,
    probe: &std::path::Path,
    policy: &std::path::Path,
    db: &std::path::Path,
    rate: u32,
    seconds: u32,
) -> anyhow::Result<Flood> {
    let mut child = Command::new(enforcer)
        .args(["launch", "--policy"])
        .arg(policy)
        .args(["--user", "nobody", "--approver", "none"])
        .args(["--resolve", "allowed.bench.test=192.0.2.10"])
        .args(["--resolver", "127.0.0.1:1", "--audit-db"])
        .arg(db)
        .arg("--")
        .arg(probe)
        .args(["dns-flood", "127.0.0.1:53", "allowed.bench.test"])
        .args([rate.to_string(), seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().context("probe stdout")?;
    let (mut before, mut after, mut hwm, mut report) = (0, 0, 0, String::new());
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        match line.as_str() {
            "phase start" => before = super::procstat::read(pid).map_or(0, |r| r.rss_kib),
            "phase end" => {
                std::thread::sleep(Duration::from_millis(300));
                let r = super::procstat::read(pid).unwrap_or_default();
                (after, hwm) = (r.rss_kib, r.hwm_kib);
            }
            l if l.starts_with("ok flood") || l.starts_with("err") => report = line,
            _ => {}
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success() && report.starts_with("ok"),
        "flood at {rate}/s: {status}: {report}"
    );
    Ok(Flood {
        report,
        rss_before_kib: before,
        rss_after_kib: after,
        hwm_kib: hwm,
    })
}

fn parse_qps(out: &str) -> anyhow::Result<(f64, String)> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("ok qps "))
        .with_context(|| format!("unexpected probe output: {out}"))?;
    let (qps, code) = line.split_once(' ').unwrap_or((line, ""));
    Ok((qps.parse()?, code.to_string()))
}

fn dns() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("enforcer-bench");
    std::fs::create_dir_all(&dir)?;
    let probe = super::connect::probe()?;
    let enforcer = release("enforcer");
    let policy = dir.join("dns.toml");
    std::fs::write(
        &policy,
        "[[host]]\nname = \"allowed.bench.test\"\naction = \"allow\"\n",
    )?;
    let floor_port = trivial_responder()?;
    let db = dir.join("dns-audit.db");

    let direct = |threads: &str| -> anyhow::Result<(f64, String)> {
        let server = format!("127.0.0.1:{floor_port}");
        parse_qps(&util::output(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&probe)
                .args(["dns-bench", &server, "allowed.bench.test", QUERIES, threads]),
        )?)
    };
    let enforced = |name: &str, threads: &str| -> anyhow::Result<(f64, String)> {
        parse_qps(&util::output(
            Command::new(&enforcer)
                .args(["launch", "--policy"])
                .arg(&policy)
                .args(["--user", "nobody", "--approver", "none"])
                // Static: the bench never asks this machine's resolver.
                .args(["--resolve", "allowed.bench.test=192.0.2.10"])
                .args(["--resolver", "127.0.0.1:1", "--audit-db"])
                .arg(&db)
                .arg("--")
                .arg(&probe)
                .args(["dns-bench", "127.0.0.1:53", name, QUERIES, threads]),
        )?)
    };
    println!(
        "DNS over UDP, {QUERIES} queries per client per run, median of {ROUNDS} alternating runs:"
    );
    for threads in ["1", "4"] {
        let (mut floor, mut allowed, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        let mut codes = Vec::new();
        for _ in 0..ROUNDS {
            let (q, _) = direct(threads)?;
            floor.push(q);
            let (q, c) = enforced("allowed.bench.test", threads)?;
            allowed.push(q);
            codes.push(format!("allowed: {c}"));
            let (q, c) = enforced("refused.bench.test", threads)?;
            refused.push(q);
            codes.push(format!("refused: {c}"));
        }
        codes.sort();
        codes.dedup();
        let (f, a, r) = (median(floor), median(allowed), median(refused));
        println!("  {threads} client(s):");
        println!("    trivial responder, no enforcement : {f:8.0} q/s");
        println!(
            "    enforced, allowed name (table)     : {a:8.0} q/s  ({:.2} of the floor)",
            a / f
        );
        println!(
            "    enforced, refused name (NXDOMAIN)  : {r:8.0} q/s  ({:.2} of the floor)",
            r / f
        );
        println!("    answers: {}", codes.join("; "));
    }
    println!(
        "Flood of distinct refused names (UDP, not waiting for answers) while the allowed name is looked up every 100 ms (1 s timeout, no retry):"
    );
    for (rate, seconds) in FLOODS {
        let f = flood(&enforcer, &probe, &policy, &db, rate, seconds)?;
        println!(
            "  {rate:>6} names/s for {seconds} s: sent {} answered {} | allowed lookups answered {} | p50 {} ms, p99 {} ms, max {} ms | RSS {:.1} -> {:.1} MiB (peak {:.1})",
            f.field("sent"),
            f.field("answered"),
            f.field("allowed"),
            f.field("p50_ms"),
            f.field("p99_ms"),
            f.field("max_ms"),
            f.rss_before_kib as f64 / 1024.0,
            f.rss_after_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0,
        );
    }
    let _ = std::fs::remove_file(&db);
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("dns-audit.db{ext}")));
    }
    Ok(())
}
