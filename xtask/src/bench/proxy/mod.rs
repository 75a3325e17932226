//! `cargo xtask bench proxy`: HTTP(S) requests through enforcer against the
//! same requests sent directly to the origin, and through squid, tinyproxy
//! and mitmproxy, all in one run: requests/s, p50/p99 latency, the proxy's
//! CPU time per request and its memory, reported as ratios to direct.
//!
//! Every measurement is one oha run of `--seconds` against nginx in a
//! network namespace (see `origin`). Rounds alternate every path and shape;
//! the table shows medians. For enforcer, oha runs as the agent inside
//! `enforcer launch` (user nobody), so its connections are redirected by
//! the kernel like any agent's; each such run is a fresh `enforcer launch`.

mod measure;
mod report;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::{Context as _, bail};

use super::{
    install,
    oha::{self},
    origin::{self},
    procstat::{self},
    release,
};
use crate::util::{self, cargo, exec};
use measure::Bench;
use report::report;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Rounds of every measurement, alternating paths; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Measure this enforcer binary instead of building target/release/enforcer.
    #[arg(long, value_name = "PATH")]
    enforcer: Option<PathBuf>,
    /// Only the paths whose key contains one of these words (comma-separated,
    /// e.g. `enforcer,squid`); the direct baselines always run.
    #[arg(long, value_delimiter = ',', value_name = "WORDS")]
    only: Vec<String>,
}

impl Options {
    fn argv(&self) -> Vec<String> {
        let mut a = vec![
            "bench".into(),
            "proxy".into(),
            "--rounds".into(),
            self.rounds.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
        ];
        if let Some(e) = &self.enforcer {
            a.push("--enforcer".into());
            a.push(e.display().to_string());
        }
        if !self.only.is_empty() {
            a.push("--only".into());
            a.push(self.only.join(","));
        }
        a
    }
}

/// How many connections, and whether they are kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    concurrency: u32,
    keep_alive: bool,
}

const C1: Shape = Shape {
    concurrency: 1,
    keep_alive: true,
};
const C32: Shape = Shape {
    concurrency: 32,
    keep_alive: true,
};
/// A new connection (TCP + TLS handshake) for every request.
const C32_NEW: Shape = Shape {
    concurrency: 32,
    keep_alive: false,
};

impl Shape {
    fn label(self) -> String {
        if self.keep_alive {
            format!("{}", self.concurrency)
        } else {
            format!("{}, new conn/req", self.concurrency)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKind {
    Squid,
    Tinyproxy,
    Mitmproxy,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Squid => "squid",
            Self::Tinyproxy => "tinyproxy",
            Self::Mitmproxy => "mitmproxy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnforcerMode {
    /// Whole-host allow: TLS relayed untouched.
    PassThrough,
    /// A host with a GET rule: TLS terminated, each request decided.
    Intercept,
    /// Intercepted, but reached through the explicit listener (HTTPS_PROXY, CONNECT).
    Explicit,
    /// Intercepted, with `--no-audit` (to price the audit log).
    Unaudited,
    /// Intercepted, each request with a cost reserved and committed under
    /// a per-run spend cap.
    CostChecked,
    /// Intercepted, the request decided by a vendor profile's endpoint
    /// with a header and a query field required (issue 15).
    Profiled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Enforcer(EnforcerMode),
    Peer(PeerKind),
}

struct Scenario {
    key: &'static str,
    label: &'static str,
    via: Via,
    scheme: &'static str,
    shapes: &'static [Shape],
}

const DIRECT_HTTPS: &str = "direct-https";
const DIRECT_HTTP: &str = "direct-http";

/// Everything measured, in the order of a round (odd rounds run it backwards).
const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: DIRECT_HTTPS,
        label: "direct HTTPS (baseline)",
        via: Via::Direct,
        scheme: "https",
        shapes: &[C1, C32, C32_NEW],
    },
    Scenario {
        key: "enforcer-pass",
        label: "enforcer, pass-through HTTPS",
        via: Via::Enforcer(EnforcerMode::PassThrough),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "enforcer-intercept",
        label: "enforcer, intercepted HTTPS",
        via: Via::Enforcer(EnforcerMode::Intercept),
        scheme: "https",
        shapes: &[C1, C32, C32_NEW],
    },
    Scenario {
        key: "enforcer-noaudit",
        label: "enforcer, intercepted HTTPS, --no-audit",
        via: Via::Enforcer(EnforcerMode::Unaudited),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "enforcer-cost",
        label: "enforcer, intercepted HTTPS, cost-checked",
        via: Via::Enforcer(EnforcerMode::CostChecked),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "enforcer-profile",
        label: "enforcer, intercepted HTTPS, profile rule with field constraints",
        via: Via::Enforcer(EnforcerMode::Profiled),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "enforcer-explicit",
        label: "enforcer, intercepted HTTPS via HTTPS_PROXY (CONNECT)",
        via: Via::Enforcer(EnforcerMode::Explicit),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "squid-connect",
        label: "squid, CONNECT tunnel",
        via: Via::Peer(PeerKind::Squid),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "tinyproxy-connect",
        label: "tinyproxy, CONNECT tunnel",
        via: Via::Peer(PeerKind::Tinyproxy),
        scheme: "https",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "mitmproxy-intercept",
        label: "mitmproxy, intercepted HTTPS (CONNECT)",
        via: Via::Peer(PeerKind::Mitmproxy),
        scheme: "https",
        shapes: &[C1, C32, C32_NEW],
    },
    Scenario {
        key: DIRECT_HTTP,
        label: "direct HTTP (baseline)",
        via: Via::Direct,
        scheme: "http",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "enforcer-http",
        label: "enforcer, plain HTTP (intercepted host)",
        via: Via::Enforcer(EnforcerMode::Intercept),
        scheme: "http",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "squid-http",
        label: "squid, plain HTTP",
        via: Via::Peer(PeerKind::Squid),
        scheme: "http",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "tinyproxy-http",
        label: "tinyproxy, plain HTTP",
        via: Via::Peer(PeerKind::Tinyproxy),
        scheme: "http",
        shapes: &[C1, C32],
    },
    Scenario {
        key: "mitmproxy-http",
        label: "mitmproxy, plain HTTP",
        via: Via::Peer(PeerKind::Mitmproxy),
        scheme: "http",
        shapes: &[C1, C32],
    },
];

impl Scenario {
    fn baseline(&self) -> &'static str {
        if self.scheme == "https" {
            DIRECT_HTTPS
        } else {
            DIRECT_HTTP
        }
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.rounds == 0 || opts.seconds.is_nan() || opts.seconds <= 0.0 {
        bail!("--rounds and --seconds must be greater than zero");
    }
    let enforcer = match &opts.enforcer {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?,
        None => {
            crate::setup::run()?;
            exec(cargo().args(["build", "--release", "-p", "enforcer"]))?;
            release("enforcer")
        }
    };
    let oha = install::oha()?;
    let argv = opts.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    if let Some(code) = util::ensure_root(&argv)? {
        std::process::exit(code);
    }
    install::debian_packages()?;
    let mitmdump = install::mitmproxy()?;

    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))?;
    }
    let dir = RunDir::create()?;
    let result = (|| {
        let bench = Bench::start(opts, &dir.0, &oha, &enforcer, &mitmdump, &interrupted)?;
        let results = bench.run()?;
        let memory = bench.memory(&results);
        Ok::<_, anyhow::Error>((results, memory, bench.pids()))
    })();
    // Everything the bench started is gone by now (guards); check it.
    let pids = result.as_ref().map(|r| r.2.clone()).unwrap_or_default();
    let leftovers = leftovers(&pids, &dir.enforcer_runs());
    dir.keep_logs();
    let (results, memory, _) = result?;
    report(opts, &results, &memory);
    if !leftovers.is_empty() {
        bail!("the bench left things behind: {leftovers:?}");
    }
    eprintln!("xtask: no namespace, server process or enforcer run left behind");
    Ok(())
}

/// The bench's scratch directory in /tmp (world-readable: nginx's workers
/// and the agent read from it); removed on drop, logs kept in `.bench/logs`.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("enforcer-bench-proxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(d))
    }

    /// The ids of the enforcer runs the bench launched (from their logs).
    fn enforcer_runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join("enforcer.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("enforcer: run "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Copies the servers' logs to `.bench/logs` (replacing the last run's).
    fn keep_logs(&self) {
        let logs = install::bench_dir().join("logs");
        let _ = std::fs::remove_dir_all(&logs);
        let _ = std::fs::create_dir_all(&logs);
        let copy = |d: &Path| {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let name = p
                        .strip_prefix(&self.0)
                        .map(|r| r.to_string_lossy().replace('/', "-"))
                        .unwrap_or_default();
                    let _ = std::fs::copy(&p, logs.join(name));
                }
            }
        };
        copy(&self.0);
        for sub in ["nginx", "squid", "tinyproxy"] {
            copy(&self.0.join(sub));
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a run lives while it runs (and must not be after): its record
/// (and anything else named after it in the runs directory), trust files,
/// cgroup and pinned programs.
fn run_traces(run: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/run/enforcer/runs")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(run))
        .map(|e| e.path())
        .collect();
    v.push(PathBuf::from("/run/enforcer/trust").join(run));
    v.push(PathBuf::from("/sys/fs/bpf/enforcer").join(run));
    if let Some(root) = util::cgroup2_root() {
        v.push(root.join("enforcer").join(run));
    }
    v
}

/// What is still there that the bench started: the namespace, the peers'
/// processes, and anything of the enforcer runs it launched.
fn leftovers(pids: &[(String, u32)], runs: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    if !origin::netns_gone() {
        found.push(format!("network namespace {}", origin::NETNS.ns));
    }
    for (name, pid) in pids {
        if procstat::read(*pid).is_some() {
            found.push(format!("{name} (pid {pid})"));
        }
    }
    for run in runs {
        for p in run_traces(run) {
            if p.exists() {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// One measurement.
#[derive(Debug, Clone)]
struct Measurement {
    report: oha::Report,
    cpu: Cpu,
    /// The proxy's resident set before the load (enforcer: after start-up,
    /// before the agent sends anything), KiB.
    idle_rss_kib: Option<u64>,
    /// Highest resident set sampled during the load, KiB.
    max_rss_kib: Option<u64>,
}

/// CPU seconds each party used during one measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// oha (under enforcer: every process of the agent's cgroup).
    client: Option<f64>,
    /// The proxy process (None for direct).
    proxy: Option<f64>,
    /// nginx, master and workers.
    origin: f64,
    /// Every CPU of the machine, busy (not idle, not stolen).
    machine_busy: f64,
    /// Stolen by the hypervisor.
    machine_steal: f64,
    /// Wall time of the measurement.
    wall: f64,
}

impl Cpu {
    /// Busy CPU that none of client, proxy and origin used (other
    /// processes, the bench itself, enforcer's start-up and teardown).
    fn other(&self) -> f64 {
        (self.machine_busy - self.client.unwrap_or(0.0) - self.proxy.unwrap_or(0.0) - self.origin)
            .max(0.0)
    }
}

type Results = HashMap<(&'static str, Shape), Vec<Measurement>>;

/// Memory of one proxy over the whole bench.
#[derive(Debug, Clone, Default)]
struct Memory {
    name: String,
    idle_kib: u64,
    max_kib: u64,
    /// The highest at 32 keep-alive connections.
    max_c32_kib: u64,
    note: String,
}
