//! `cargo xtask bench daemon`: one `enforcer daemon` governing a slice made
//! here (as systemd makes `agents.slice/<unit>.service`), against the same
//! requests sent directly and against `enforcer launch`, in one run:
//!
//! - intercepted HTTPS through one run (N connections) and through N runs
//!   at once (one connection each), as requests/s ratios to direct with N
//!   connections (the `bench proxy` origin and load generator);
//! - the time from a unit's start to its first allowed response, against
//!   `enforcer launch` of the same command (median);
//! - the daemon's memory idle and with N runs live (per run).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    install, median,
    oha::{self, Load, ORIGIN_NAME, PATH},
    origin::{ORIGIN_ADDR, Origin},
    procstat, release,
};
use crate::util::{self, cargo, exec};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Rounds of every measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent runs (and connections) of the many-runs measurement.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Start-up measurements of each kind (daemon unit, launch).
    #[arg(long, default_value_t = 9)]
    starts: u32,
}

impl Options {
    fn argv(&self) -> Vec<String> {
        vec![
            "bench".into(),
            "daemon".into(),
            "--rounds".into(),
            self.rounds.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--runs".into(),
            self.runs.to_string(),
            "--starts".into(),
            self.starts.to_string(),
        ]
    }
}

/// The daemon, its slice and its scratch directory; all removed on drop.
struct Setup {
    dir: PathBuf,
    slice: PathBuf,
    slice_name: String,
    socket: PathBuf,
    daemon: Option<Child>,
    enforcer: PathBuf,
    oha: PathBuf,
    policy: PathBuf,
    origin_ca: PathBuf,
}

impl Setup {
    fn start(enforcer: PathBuf, oha: &Path, origin: &Origin, dir: PathBuf) -> anyhow::Result<Self> {
        let root = util::cgroup2_root().context("no cgroup2 mount")?;
        let slice_name = format!("enft-bench-{}.slice", std::process::id());
        let slice = root.join(&slice_name);
        std::fs::create_dir(&slice).with_context(|| format!("mkdir {}", slice.display()))?;
        let policy = dir.join("intercepted.toml");
        std::fs::write(
            &policy,
            format!(
                "[run]\nname = \"bench-daemon\"\n\n[[host]]\nname = \"{ORIGIN_NAME}\"\n\n  \
                 [[host.rule]]\n  method = \"GET\"\n  path = \"/**\"\n  action = \"allow\"\n"
            ),
        )?;
        let config = dir.join("enforcer.toml");
        std::fs::write(
            &config,
            format!(
                "slice = \"{slice_name}\"\naudit_db = \"{}\"\n[[unit]]\nmatch = \"bench-*.service\"\npolicy = \"{}\"\n",
                dir.join("audit.db").display(),
                policy.display()
            ),
        )?;
        let mut s = Self {
            socket: dir.join("daemon.sock"),
            oha: oha::world_executable_copy(oha, &dir)?,
            dir,
            slice,
            slice_name,
            daemon: None,
            enforcer,
            policy,
            origin_ca: origin.ca_file.clone(),
        };
        let log = std::fs::File::create(s.dir.join("daemon.log"))?;
        let child = Command::new(&s.enforcer)
            .args(["daemon", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&s.socket)
            .arg("--resolve")
            .arg(format!("{ORIGIN_NAME}={ORIGIN_ADDR}"))
            .arg("--upstream-ca")
            .arg(&s.origin_ca)
            .stderr(log)
            .spawn()
            .context("start the daemon")?;
        s.daemon = Some(child);
        let t0 = Instant::now();
        while !s.socket.exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "the daemon did not come up; see {}",
                    s.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// oha at a lower priority than enforcer: on two cores, 50 load
    /// generators at the default priority would leave the daemon (one
    /// process) a 50th of the CPU, and the bench would measure the
    /// scheduler. The same for every path.
    fn oha_cmd(&self) -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", LOAD_NICENESS]).arg(&self.oha);
        c
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Child::id)
    }

    /// A unit's cgroup, made fresh.
    fn unit(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.slice.join(name);
        std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }

    /// Spawns `script` (with `args` as `$@`) as `nobody` through
    /// `enforcer exec` in the unit `name`, as systemd would start it.
    fn spawn_unit(&self, name: &str, script: &str, args: &[String]) -> anyhow::Result<Child> {
        let cgroup = self.unit(name)?;
        Command::new("/bin/sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && shift && exec \"$@\"")
            .arg(&cgroup)
            .arg("--")
            .args([
                "setpriv",
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--clear-groups",
            ])
            .arg(&self.enforcer)
            .arg("exec")
            .arg("--socket")
            .arg(&self.socket)
            .args(["--", "/bin/sh", "-c", script, "sh"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn a unit")
    }

    /// Removes the units' cgroups (their processes are done or killed).
    fn clear_units(&self) {
        for e in std::fs::read_dir(&self.slice)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let t0 = Instant::now();
                while std::fs::remove_dir(e.path()).is_err()
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.clear_units();
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // What a stopped daemon leaves attached on purpose.
        let _ = Command::new(&self.enforcer)
            .args(["cleanup", "--daemon", &self.slice_name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.slice);
        let logs = install::bench_dir().join("logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            let _ = std::fs::copy(self.dir.join("daemon.log"), logs.join("daemon.log"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// oha's arguments for `concurrency` keep-alive connections.
fn load(concurrency: u32, seconds: f64, cacert: Option<String>) -> Vec<String> {
    Load {
        scheme: "https",
        concurrency,
        keep_alive: true,
        seconds,
        proxy: None,
        cacert,
        connect_to: true,
        query: None,
        headers: &[],
    }
    .args(ORIGIN_ADDR)
}

/// The agent's script: oha (at the load generators' priority), trusting the
/// run's CA from its environment.
const OHA_SCRIPT: &str = "sleep 0.2; exec nice -n 10 \"$@\" --cacert \"$NODE_EXTRA_CA_CERTS\"";

/// `nice` of every load generator (see [`Setup::oha_cmd`]).
const LOAD_NICENESS: &str = "10";

fn wait_output(child: Child) -> anyhow::Result<String> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "a measured process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Requests/s (and p50) of one round of each shape.
struct Round {
    direct: oha::Report,
    /// N direct load generators with one connection each (the same shape
    /// as the N runs).
    direct_many_rps: f64,
    direct_many_p50_ms: f64,
    one_run: oha::Report,
    many_runs_rps: f64,
    many_runs_p50_ms: f64,
    many_failed: u64,
    peak_rss_kib: u64,
}

fn round(s: &Setup, opts: &Options, n: u32, r: u32) -> anyhow::Result<Round> {
    let direct_args = load(n, opts.seconds, Some(s.origin_ca.display().to_string()));
    let direct = oha::parse(&util::output(s.oha_cmd().args(&direct_args))?)?;
    let one_args = load(1, opts.seconds, Some(s.origin_ca.display().to_string()));
    let direct_many = (0..n)
        .map(|_| {
            s.oha_cmd()
                .args(&one_args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawn oha")
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .map(|c| wait_output(c).and_then(|o| oha::parse(&o)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let one = s.spawn_unit(
        &format!("bench-one-{r}.service"),
        OHA_SCRIPT,
        &std::iter::once(s.oha.display().to_string())
            .chain(load(n, opts.seconds, None))
            .collect::<Vec<_>>(),
    )?;
    let one_run = oha::parse(&wait_output(one)?)?;
    s.clear_units();
    let per_unit: Vec<String> = std::iter::once(s.oha.display().to_string())
        .chain(load(1, opts.seconds, None))
        .collect();
    let children = (0..n)
        .map(|i| {
            s.spawn_unit(
                &format!("bench-many-{r}-{i}.service"),
                OHA_SCRIPT,
                &per_unit,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pid = s.daemon_pid();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            peak = peak.max(procstat::read(pid).map_or(0, |r| r.rss_kib));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    let mut reports = Vec::new();
    for c in children {
        reports.push(oha::parse(&wait_output(c)?)?);
    }
    let peak_rss_kib = sampler.join().unwrap_or(0);
    s.clear_units();
    Ok(Round {
        direct_many_rps: direct_many.iter().map(|r| r.rps).sum(),
        direct_many_p50_ms: median(direct_many.iter().map(|r| r.p50_ms).collect()),
        direct,
        one_run,
        many_runs_rps: reports.iter().map(|r| r.rps).sum(),
        many_runs_p50_ms: median(reports.iter().map(|r| r.p50_ms).collect()),
        many_failed: reports.iter().map(|r| r.failed).sum(),
        peak_rss_kib,
    })
}

/// Milliseconds from spawning `cmd` to its successful exit.
fn timed(child: Child, t0: Instant) -> anyhow::Result<f64> {
    wait_output(child)?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Start to first allowed response: a unit through the daemon, and
/// `enforcer launch`, alternating; medians in ms.
fn starts(s: &Setup, opts: &Options) -> anyhow::Result<(f64, f64)> {
    let curl = format!(
        "curl -sS -o /dev/null --cacert \"$NODE_EXTRA_CA_CERTS\" https://{ORIGIN_NAME}{PATH}"
    );
    let (mut unit, mut launch) = (Vec::new(), Vec::new());
    for i in 0..opts.starts {
        let t0 = Instant::now();
        let c = s.spawn_unit(&format!("bench-start-{i}.service"), &curl, &[])?;
        unit.push(timed(c, t0)?);
        s.clear_units();
        let t0 = Instant::now();
        let c = Command::new(&s.enforcer)
            .args(["launch", "--policy"])
            .arg(&s.policy)
            .args(["--user", "nobody", "--resolve"])
            .arg(format!("{ORIGIN_NAME}={ORIGIN_ADDR}"))
            .arg("--upstream-ca")
            .arg(&s.origin_ca)
            .arg("--audit-db")
            .arg(s.dir.join("launch-audit.db"))
            .args(["--", "/bin/sh", "-c", &curl])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        launch.push(timed(c, t0)?);
    }
    Ok((median(unit), median(launch)))
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.rounds == 0
        || opts.runs == 0
        || opts.starts == 0
        || opts.seconds.is_nan()
        || opts.seconds <= 0.0
    {
        bail!("--rounds, --runs, --starts and --seconds must be greater than zero");
    }
    crate::setup::run()?;
    exec(cargo().args(["build", "--release", "-p", "enforcer"]))?;
    let oha_bin = install::oha()?;
    let argv = opts.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    if let Some(code) = util::ensure_root(&argv)? {
        std::process::exit(code);
    }
    install::debian_packages()?;
    let dir = std::env::temp_dir().join(format!("enforcer-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let origin = Origin::start(&dir)?;
    let s = Setup::start(release("enforcer"), &oha_bin, &origin, dir)?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_kib = procstat::read(s.daemon_pid()).map_or(0, |r| r.rss_kib);
    let n = opts.runs;
    let mut rounds = Vec::new();
    for r in 0..opts.rounds {
        rounds.push(round(&s, opts, n, r)?);
    }
    let (unit_ms, launch_ms) = starts(&s, opts)?;
    let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let direct = med(&|r| r.direct.rps);
    let one = med(&|r| r.one_run.rps);
    let many = med(&|r| r.many_runs_rps);
    let peak = med(&|r| r.peak_rss_kib as f64);
    println!(
        "\n## enforcer daemon: {n} connections, {} rounds of {} s (medians)\n",
        opts.rounds, opts.seconds
    );
    println!("| path | requests/s | ratio to direct | p50 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| direct HTTPS, {n} connections | {direct:.0} | 1.00 | {:.2} |",
        med(&|r| r.direct.p50_ms)
    );
    println!(
        "| daemon, 1 run, {n} connections (intercepted) | {one:.0} | {:.2} | {:.2} |",
        one / direct,
        med(&|r| r.one_run.p50_ms)
    );
    let direct_many = med(&|r| r.direct_many_rps);
    println!(
        "| direct HTTPS, {n} load generators at once, 1 connection each | {direct_many:.0} | {:.2} | {:.2} |",
        direct_many / direct,
        med(&|r| r.direct_many_p50_ms)
    );
    println!(
        "| daemon, {n} runs at once, 1 connection each (intercepted) | {many:.0} | {:.2} ({:.2} of the line above) | {:.2} |",
        many / direct,
        many / direct_many,
        med(&|r| r.many_runs_p50_ms)
    );
    let failed: u64 = rounds
        .iter()
        .map(|r| r.direct.failed + r.one_run.failed + r.many_failed)
        .sum();
    println!("\nfailed requests (all rounds): {failed}");
    println!(
        "\n| start to first allowed response (median of {}) | ms |",
        opts.starts
    );
    println!("|---|---:|");
    println!("| unit through the daemon (`enforcer exec -- curl`) | {unit_ms:.1} |");
    println!("| `enforcer launch -- curl` | {launch_ms:.1} |");
    println!("| ratio launch / daemon | {:.1} |", launch_ms / unit_ms);
    println!("\n| daemon memory | KiB |");
    println!("|---|---:|");
    println!("| idle | {idle_kib} |");
    println!("| peak with {n} runs live (median of rounds) | {peak:.0} |");
    println!(
        "| per live run | {:.0} |",
        (peak - idle_kib as f64).max(0.0) / f64::from(n)
    );
    drop(s);
    drop(origin);
    Ok(())
}
