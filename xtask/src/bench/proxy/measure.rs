//! Runs every measurement: the origin, the peers, a fresh `enforcer launch`
//! per enforcer measurement, CPU and memory sampling around each oha run.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    C32, Cpu, EnforcerMode, Measurement, Memory, Options, PeerKind, Results, SCENARIOS, Scenario,
    Shape, Via,
};
use crate::bench::{
    install, median,
    oha::{self, Load, ORIGIN_NAME},
    origin::{ORIGIN_ADDR, Origin},
    peers::{self, Peer},
    procstat::{self, Baseline, Sampler},
};
use crate::util;

pub(super) struct Bench<'a> {
    opts: &'a Options,
    dir: &'a Path,
    oha: PathBuf,
    enforcer: &'a Path,
    // Field order is drop order: peers first, then the origin and its namespace.
    peers: HashMap<PeerKind, Peer>,
    peer_idle_kib: HashMap<PeerKind, u64>,
    origin: Origin,
    intercept_policy: PathBuf,
    pass_policy: PathBuf,
    cost_policy: PathBuf,
    profile_policy: PathBuf,
    /// `--audit-db` for every run (when this enforcer has an audit log): in
    /// the scratch directory, on the same file system as the default one.
    audit_db: Option<PathBuf>,
    interrupted: &'a AtomicBool,
    scenarios: Vec<&'static Scenario>,
}

impl<'a> Bench<'a> {
    pub(super) fn start(
        opts: &'a Options,
        dir: &'a Path,
        oha: &Path,
        enforcer: &'a Path,
        mitmdump: &Path,
        interrupted: &'a AtomicBool,
    ) -> anyhow::Result<Self> {
        let scenarios: Vec<&'static Scenario> = SCENARIOS
            .iter()
            .filter(|s| {
                s.via == Via::Direct
                    || opts.only.is_empty()
                    || opts.only.iter().any(|w| s.key.contains(w.as_str()))
            })
            .collect();
        let origin = Origin::start(dir)?;
        let oha = oha::world_executable_copy(oha, dir)?;
        let intercept_policy = dir.join("intercepted.toml");
        std::fs::write(
            &intercept_policy,
            format!(
                "[run]\nname = \"bench-intercepted\"\n\n[[host]]\nname = \"{ORIGIN_NAME}\"\n\n  \
                 [[host.rule]]\n  method = \"GET\"\n  path = \"/**\"\n  action = \"allow\"\n"
            ),
        )?;
        let pass_policy = dir.join("pass-through.toml");
        std::fs::write(
            &pass_policy,
            format!(
                "[run]\nname = \"bench-pass-through\"\n\n[[host]]\nname = \"{ORIGIN_NAME}\"\naction = \"allow\"\n"
            ),
        )?;
        let cost_policy = dir.join("cost-checked.toml");
        std::fs::write(
            &cost_policy,
            format!(
                "[run]\nname = \"bench-cost\"\n\n[[host]]\nname = \"{ORIGIN_NAME}\"\nspend_cap_usd = 1000000000\n\n  \
                 [[host.rule]]\n  method = \"GET\"\n  path = \"/**\"\n  action = \"allow\"\n  \
                 cost = {{ fixed_usd = 0.0001 }}\n"
            ),
        )?;
        // A vendor profile for the origin, and a rule naming its endpoint
        // with a merchant header and a query field required.
        let profile = dir.join("bench-vendor.toml");
        std::fs::write(
            &profile,
            format!(
                "[vendor]\nname = \"bench\"\nhosts = [\"{ORIGIN_NAME}\"]\n\n[refusal]\n\
                 body = {{ error = {{ type = \"invalid_request_error\", message = \"{{message}}\" }} }}\n\n\
                 [[endpoint]]\nname = \"files.read\"\nmethod = \"GET\"\npath = \"/*\"\n"
            ),
        )?;
        let profile_policy = dir.join("profiled.toml");
        std::fs::write(
            &profile_policy,
            format!(
                "[run]\nname = \"bench-profile\"\n\n[[host]]\nvendor_file = \"{}\"\n\n  \
                 [[host.rule]]\n  endpoint = \"files.read\"\n  action = \"allow\"\n  \
                 require = {{ header.\"Stripe-Account\" = [\"acct_1\", \"acct_2\"], query.customer = \"cus_*\" }}\n",
                profile.display()
            ),
        )?;
        let help = util::output(Command::new(enforcer).args(["launch", "--help"]))?;
        let audit_db = help.contains("--audit-db").then(|| dir.join("audit.db"));
        let mut peers = HashMap::new();
        let wanted = |k: PeerKind| scenarios.iter().any(|s| s.via == Via::Peer(k));
        if wanted(PeerKind::Squid) {
            peers.insert(PeerKind::Squid, peers::squid(dir)?);
        }
        if wanted(PeerKind::Tinyproxy) {
            peers.insert(PeerKind::Tinyproxy, peers::tinyproxy(dir)?);
        }
        if wanted(PeerKind::Mitmproxy) {
            peers.insert(
                PeerKind::Mitmproxy,
                peers::mitmproxy(mitmdump, dir, &origin.ca_file)?,
            );
        }
        // Idle memory: started, listening, nothing asked yet.
        std::thread::sleep(Duration::from_millis(500));
        let peer_idle_kib = peers
            .iter()
            .map(|(k, p)| (*k, procstat::read(p.daemon.pid()).map_or(0, |r| r.rss_kib)))
            .collect();
        Ok(Self {
            opts,
            dir,
            oha,
            enforcer,
            peers,
            peer_idle_kib,
            origin,
            intercept_policy,
            pass_policy,
            cost_policy,
            profile_policy,
            audit_db,
            interrupted,
            scenarios,
        })
    }

    /// The servers' processes, to check they are gone after the bench.
    pub(super) fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .peers
            .iter()
            .map(|(k, p)| (k.name().to_string(), p.daemon.pid()))
            .collect();
        v.push(("nginx".into(), self.origin.nginx_pid()));
        v
    }

    pub(super) fn run(&self) -> anyhow::Result<Results> {
        // Warm-up, and a check that every path answers 200 before spending
        // minutes on it.
        eprintln!("xtask: warm-up: every path once");
        for s in &self.scenarios {
            let m = self.measure(
                s,
                Shape {
                    concurrency: 4,
                    keep_alive: true,
                },
                0.5,
            )?;
            // Peers may fail some requests by design (tinyproxy closes
            // keep-alive connections); those are counted in the table.
            let broken = m.report.ok == 0
                || (m.report.failed > 0 && s.via != Via::Peer(PeerKind::Tinyproxy));
            if broken {
                bail!(
                    "{}: {} of {} requests failed in the warm-up ({}); logs in {}",
                    s.label,
                    m.report.failed,
                    m.report.ok + m.report.failed,
                    m.report.top_failure.as_deref().unwrap_or("?"),
                    install::bench_dir().join("logs").display()
                );
            }
        }
        let total: usize = self.scenarios.iter().map(|s| s.shapes.len()).sum();
        let mut results = Results::new();
        for round in 0..self.opts.rounds {
            eprintln!(
                "xtask: round {}/{}: {total} measurements of {} s",
                round + 1,
                self.opts.rounds,
                self.opts.seconds
            );
            let mut order: Vec<(&Scenario, Shape)> = self
                .scenarios
                .iter()
                .flat_map(|s| s.shapes.iter().map(move |sh| (*s, *sh)))
                .collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (s, shape) in order {
                let m = self.measure(s, shape, self.opts.seconds)?;
                if m.report.failed > 0 {
                    eprintln!(
                        "xtask: note: {} at c={}: {} of {} requests failed ({})",
                        s.label,
                        shape.label(),
                        m.report.failed,
                        m.report.ok + m.report.failed,
                        m.report.top_failure.as_deref().unwrap_or("?")
                    );
                }
                results.entry((s.key, shape)).or_default().push(m);
            }
        }
        Ok(results)
    }

    fn load(&self, s: &Scenario, shape: Shape, seconds: f64) -> Load {
        let proxy = match s.via {
            Via::Peer(k) => self.peers.get(&k).map(|p| p.url.clone()),
            _ => None,
        };
        let cacert = match s.via {
            Via::Direct | Via::Enforcer(EnforcerMode::PassThrough) => {
                Some(self.origin.ca_file.display().to_string())
            }
            // The run's CA, added by the agent's shell from the environment.
            Via::Enforcer(_) => None,
            // mitmproxy's own CA; through a tunnel, the origin's.
            Via::Peer(k) => Some(
                self.peers
                    .get(&k)
                    .and_then(|p| p.cacert.as_ref())
                    .unwrap_or(&self.origin.ca_file)
                    .display()
                    .to_string(),
            ),
        };
        Load {
            scheme: s.scheme,
            concurrency: shape.concurrency,
            keep_alive: shape.keep_alive,
            seconds,
            proxy,
            cacert,
            // Through enforcer's explicit listener the name goes in the
            // request (CONNECT origin.bench.test:443) and enforcer resolves it.
            connect_to: s.via != Via::Enforcer(EnforcerMode::Explicit),
            query: (s.via == Via::Enforcer(EnforcerMode::Profiled)).then_some("customer=cus_1"),
            headers: if s.via == Via::Enforcer(EnforcerMode::Profiled) {
                &["Stripe-Account: acct_1"]
            } else {
                &[]
            },
        }
    }

    fn measure(&self, s: &Scenario, shape: Shape, seconds: f64) -> anyhow::Result<Measurement> {
        let load = self.load(s, shape, seconds);
        let args = load.args(ORIGIN_ADDR);
        let origin0 = self.origin.cpu_s();
        let reaped0 = procstat::reaped_children_cpu_s();
        let machine0 = procstat::machine_cpu();
        let t0 = Instant::now();
        let (out, samples, client, proxy) = match s.via {
            Via::Direct => {
                let mut cmd = Command::new(&self.oha);
                cmd.args(&args);
                let (out, _) = self.run_measured(&mut cmd, seconds, None)?;
                let client = procstat::reaped_children_cpu_s() - reaped0;
                (out, None, Some(client), None)
            }
            Via::Peer(k) => {
                let pid = self.peers.get(&k).context("peer not started")?.daemon.pid();
                let mut cmd = Command::new(&self.oha);
                cmd.args(&args);
                let (out, samples) =
                    self.run_measured(&mut cmd, seconds, Some((pid, Baseline::Now)))?;
                let client = procstat::reaped_children_cpu_s() - reaped0;
                let proxy = samples.map(|s| s.cpu_s());
                (out, samples, Some(client), proxy)
            }
            Via::Enforcer(mode) => {
                let mut cmd = self.enforcer_launch(mode, &args)?;
                // The agent sleeps 0.3 s before oha starts: the baseline
                // reading (CPU, idle memory) is taken once the agent runs,
                // after enforcer's own start-up and before any request.
                let (out, samples) =
                    self.run_measured(&mut cmd, seconds + 0.6, Some((0, Baseline::AgentStarted)))?;
                let client = samples.and_then(|s| s.agent_cpu_s);
                let proxy = samples.map(|s| s.cpu_s());
                (out, samples, client, proxy)
            }
        };
        let machine = procstat::machine_cpu();
        Ok(Measurement {
            report: oha::parse(&out)?,
            cpu: Cpu {
                client,
                proxy,
                origin: self.origin.cpu_s() - origin0,
                machine_busy: machine.busy_s - machine0.busy_s,
                machine_steal: machine.steal_s - machine0.steal_s,
                wall: t0.elapsed().as_secs_f64(),
            },
            idle_rss_kib: samples.map(|s| s.baseline.rss_kib),
            max_rss_kib: samples.map(|s| s.max_rss_kib),
        })
    }

    /// `enforcer launch ... -- sh -c '...' oha ARGS`: the agent's shell
    /// adds the run's CA (and, for the explicit path, the proxy) from the
    /// environment enforcer gives it.
    fn enforcer_launch(&self, mode: EnforcerMode, args: &[String]) -> anyhow::Result<Command> {
        let policy = match mode {
            EnforcerMode::PassThrough => &self.pass_policy,
            EnforcerMode::Intercept | EnforcerMode::Explicit | EnforcerMode::Unaudited => {
                &self.intercept_policy
            }
            EnforcerMode::CostChecked => &self.cost_policy,
            EnforcerMode::Profiled => &self.profile_policy,
        };
        let extra = match mode {
            EnforcerMode::PassThrough => "",
            EnforcerMode::Intercept
            | EnforcerMode::Unaudited
            | EnforcerMode::CostChecked
            | EnforcerMode::Profiled => " --cacert \"$NODE_EXTRA_CA_CERTS\"",
            EnforcerMode::Explicit => {
                " --cacert \"$NODE_EXTRA_CA_CERTS\" -x \"$HTTP_PROXY\" --no-pre-lookup"
            }
        };
        let script = format!("sleep 0.3; \"$@\"{extra}; s=$?; sleep 0.3; exit $s");
        // A fresh audit database for every run, so runs compare equally.
        if let Some(db) = &self.audit_db {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("enforcer.log"))?;
        let mut cmd = Command::new(self.enforcer);
        cmd.args(["launch", "--policy"])
            .arg(policy)
            .args(["--user", "nobody", "--resolve"])
            .arg(format!("{ORIGIN_NAME}={ORIGIN_ADDR}"))
            .arg("--upstream-ca")
            .arg(&self.origin.ca_file)
            .args(
                self.audit_db
                    .iter()
                    .filter(|_| mode != EnforcerMode::Unaudited)
                    .flat_map(|p| [OsStr::new("--audit-db"), p.as_os_str()]),
            )
            .args((mode == EnforcerMode::Unaudited).then_some("--no-audit"))
            .args(["--", "/bin/sh", "-c", &script, "sh"])
            .arg(&self.oha)
            .args(args)
            .stderr(log);
        Ok(cmd)
    }

    /// Runs `cmd` (oha, or enforcer launching oha) to completion and returns
    /// its stdout, sampling `sample` = (pid, baseline delay) meanwhile (pid 0:
    /// the spawned process itself). Killed if it overruns or on Ctrl-C.
    fn run_measured(
        &self,
        cmd: &mut Command,
        seconds: f64,
        sample: Option<(u32, Baseline)>,
    ) -> anyhow::Result<(String, Option<procstat::Samples>)> {
        if self.interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", util::describe(cmd)))?;
        let sampler = sample
            .map(|(pid, after)| Sampler::start(if pid == 0 { child.id() } else { pid }, after));
        let mut stdout = child.stdout.take().context("stdout")?;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            let late = Instant::now() > deadline;
            if late || self.interrupted.load(Ordering::Relaxed) {
                // enforcer forwards SIGTERM to the agent and cleans up its run.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(10) {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                if late {
                    bail!("{} did not finish in time", util::describe(cmd));
                }
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let samples = sampler.map(Sampler::finish);
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "{} failed ({status}); logs in {}: {}",
                util::describe(cmd),
                install::bench_dir().join("logs").display(),
                out.trim()
            );
        }
        Ok((out, samples))
    }

    /// Memory of each proxy over the whole run.
    pub(super) fn memory(&self, results: &Results) -> Vec<Memory> {
        let mut out = Vec::new();
        let all = |pred: &dyn Fn(&Scenario) -> bool| -> Vec<(Shape, Measurement)> {
            let mut v = Vec::new();
            for s in self.scenarios.iter().filter(|s| pred(s)) {
                for sh in s.shapes {
                    for m in results.get(&(s.key, *sh)).into_iter().flatten() {
                        v.push((*sh, m.clone()));
                    }
                }
            }
            v
        };
        let ms = all(&|s| matches!(s.via, Via::Enforcer(_)));
        if !ms.is_empty() {
            let idle: Vec<f64> = ms
                .iter()
                .filter_map(|(_, m)| m.idle_rss_kib)
                .map(|k| k as f64)
                .collect();
            out.push(Memory {
                name: "enforcer".into(),
                idle_kib: median(idle) as u64,
                max_kib: ms.iter().filter_map(|(_, m)| m.max_rss_kib).max().unwrap_or(0),
                max_c32_kib: ms
                    .iter()
                    .filter(|(sh, _)| *sh == C32)
                    .filter_map(|(_, m)| m.max_rss_kib)
                    .max()
                    .unwrap_or(0),
                note: "a fresh `enforcer launch` per measurement; idle = after start-up, before the first request (median)".into(),
            });
        }
        for k in [PeerKind::Squid, PeerKind::Tinyproxy, PeerKind::Mitmproxy] {
            let Some(p) = self.peers.get(&k) else {
                continue;
            };
            let ms = all(&|s| s.via == Via::Peer(k));
            let now = procstat::read(p.daemon.pid()).unwrap_or_default();
            out.push(Memory {
                name: k.name().into(),
                idle_kib: self.peer_idle_kib.get(&k).copied().unwrap_or(0),
                max_kib: ms
                    .iter()
                    .filter_map(|(_, m)| m.max_rss_kib)
                    .max()
                    .unwrap_or(0)
                    .max(now.hwm_kib),
                max_c32_kib: ms
                    .iter()
                    .filter(|(sh, _)| *sh == C32)
                    .filter_map(|(_, m)| m.max_rss_kib)
                    .max()
                    .unwrap_or(0),
                note: format!(
                    "one process for the whole bench; idle = after start-up, before the first request; {:.1} MB after the bench",
                    now.rss_kib as f64 / 1024.0
                ),
            });
        }
        out
    }
}
