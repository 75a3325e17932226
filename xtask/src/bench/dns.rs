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

use std::{net::UdpSocket, process::Command};

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
    let _ = std::fs::remove_file(&db);
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("dns-audit.db{ext}")));
    }
    Ok(())
}
