//! `cargo xtask bench connect`: connect() to a loopback listener inside an
//! enforced cgroup against outside, and the time from `enforcer launch` to
//! the child's exec.

use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use super::{median, release};
use crate::util;

pub fn run() -> anyhow::Result<()> {
    super::build_then_become_root(&["bench", "connect"])?;
    connect()
}

/// A world-executable copy of the probe (the agent runs as nobody).
pub(super) fn probe() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join("enforcer-bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let dst = dir.join("enforcer-probe");
    std::fs::copy(release("enforcer-probe"), &dst).context("copy probe")?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    Ok(dst)
}

/// A loopback listener with a deep backlog (std's 128 overflows under a
/// connect loop, and the dropped SYNs cost a one-second retransmit each),
/// accepting and closing on two threads.
fn sink_listener() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: re-listen on our own socket with a larger backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let port = listener.local_addr()?.port();
    let second = listener.try_clone()?;
    for l in [listener, second] {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    Ok(port)
}

fn connect() -> anyhow::Result<()> {
    let port = sink_listener()?;
    let probe = probe()?;
    let enforcer = release("enforcer");
    let policy_path = std::env::temp_dir()
        .join("enforcer-bench")
        .join("connect.toml");
    std::fs::write(
        &policy_path,
        format!("[local]\nloopback_ports = [{port}]\n"),
    )?;
    let target = format!("127.0.0.1:{port}");
    // The runs' decisions go to a throwaway audit database, not the machine's.
    let audit_db = std::env::temp_dir()
        .join("enforcer-bench")
        .join("connect-audit.db");
    let iterations = "2000";

    let outside = |_: ()| -> anyhow::Result<f64> {
        let out = util::output(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&probe)
                .args(["connect-bench", &target, iterations]),
        )?;
        parse_ns(&out)
    };
    // `enforcer launch ... -- probe`, as nobody, with a throwaway audit log.
    let launch = || {
        let mut cmd = Command::new(&enforcer);
        cmd.args(["launch", "--policy"])
            .arg(&policy_path)
            .args(["--user", "nobody", "--audit-db"])
            .arg(&audit_db)
            .arg("--")
            .arg(&probe);
        cmd
    };
    let inside = |_: ()| -> anyhow::Result<f64> {
        let out = util::output(launch().args(["connect-bench", &target, iterations]))?;
        parse_ns(&out)
    };
    let (mut o, mut i) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        o.push(outside(())?);
        i.push(inside(())?);
    }
    let (o, i) = (median(o), median(i));
    println!(
        "connect()+close() to a loopback listener, {iterations} per run, median of 7 alternating runs:"
    );
    println!(
        "  outside any cgroup hooks : {o:8.0} ns/op  ({:8.0} ops/s)",
        1e9 / o
    );
    println!(
        "  inside an enforced run   : {i:8.0} ns/op  ({:8.0} ops/s)",
        1e9 / i
    );
    println!("  ratio (enforced / plain) : {:.3}", o / i);

    // Launch to exec: wall time from spawning `enforcer launch` to the
    // child's first instruction, against spawning the same child directly.
    let (mut launched, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let t0 = now_ns();
        let out = util::output(launch().arg("now"))?;
        launched.push((parse_now(&out)? - t0) as f64 / 1e6);
        let t0 = now_ns();
        let out = util::output(Command::new(&probe).arg("now"))?;
        direct.push((parse_now(&out)? - t0) as f64 / 1e6);
    }
    println!("time from spawn to the child's first instruction, median of 21:");
    println!("  enforcer launch          : {:6.2} ms", median(launched));
    println!("  plain spawn (baseline)   : {:6.2} ms", median(direct));
    Ok(())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
}

fn parse_ns(out: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("ok ns_per_op "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("unexpected probe output: {out}"))
}

fn parse_now(out: &str) -> anyhow::Result<u128> {
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix("ok now "))
        .and_then(|v| v.trim().parse().ok());
    match v {
        Some(v) => Ok(v),
        None => bail!("unexpected probe output: {out}"),
    }
}
