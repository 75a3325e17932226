//! `cargo xtask bench`: measurements taken side by side in one run and
//! reported as ratios (the machines are shared and noisy; absolute numbers
//! drift, ratios much less).

mod connect;
mod daemon;
mod dns;
mod install;
mod oha;
mod origin;
mod peers;
mod procstat;
mod proxy;
mod stream;

use clap::Subcommand;

use crate::util;

#[derive(Subcommand, Clone)]
pub enum Which {
    /// connect() to a loopback listener inside an enforced cgroup vs outside,
    /// and the time from `enforcer launch` to the child's exec.
    Connect,
    /// HTTP(S) through enforcer (pass-through, intercepted, plain HTTP)
    /// against direct, squid, tinyproxy and mitmproxy: requests/s, latency
    /// and memory, as ratios to direct.
    Proxy(proxy::Options),
    /// DNS queries per second through the kernel redirect to enforcer's
    /// resolver (allowed and refused names) against a trivial responder;
    /// then allowed lookups during a flood of refused names, and enforcer's
    /// memory before and after it.
    Dns,
    /// One `enforcer daemon` serving 1 run and many runs at once against
    /// direct (requests/s ratios), a unit's start to its first allowed
    /// response against `enforcer launch`, and the daemon's memory per run.
    Daemon(daemon::Options),
    /// Time to first byte of a streamed (SSE) response through a cost rule
    /// that reads the response, against direct.
    Stream(stream::Options),
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Connect => connect::run(),
        Which::Proxy(opts) => proxy::run(&opts),
        Which::Dns => dns::run(),
        Which::Stream(opts) => stream::run(&opts),
        Which::Daemon(opts) => daemon::run(&opts),
    }
}

/// Builds enforcer and the probe (release), then continues as root:
/// `Ok(())` in the process that should measure; a process that re-ran itself
/// with sudo exits with the child's code.
fn build_then_become_root(argv: &[&str]) -> anyhow::Result<()> {
    crate::setup::run()?;
    util::exec(util::cargo().args([
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "enforcer-e2e",
        "--bins",
    ]))?;
    if let Some(code) = util::ensure_root(argv)? {
        std::process::exit(code);
    }
    Ok(())
}

fn release(bin: &str) -> std::path::PathBuf {
    util::target_dir().join("release").join(bin)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
