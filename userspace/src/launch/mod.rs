//! `enforcer launch`: validate the policy, build the run's cgroup and attach
//! the kernel programs, start the proxy and resolver, start the agent inside
//! the cgroup as an unprivileged user, wait for it, then tear everything down.

pub mod child;
pub mod command;
pub mod seccomp;
pub mod signals;
pub mod supervisor;
pub mod target_user;
pub mod watchdog;

use std::{
    ffi::OsString,
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use crate::{
    cli::LaunchArgs,
    decision::{Decision, DecisionSink, Layer, LogMode, Verdict},
    dns::{self, Resolver},
    kernel::{
        Enforcement, KernelConfig, RunCgroup,
        bpffs::{self, BpffsError, PinDir},
        cgroup::{self, CgroupError},
        events::{self, KernelEvent},
        loader::LoadError,
    },
    policy::{Policy, PolicyError},
    proxy::{Listeners, ProxyContext, explicit, transparent, upstream::Upstream},
    runid,
    runs::{self, RunRecord},
    tls,
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Resolve(#[from] dns::ResolveError),
    #[error(
        "enforcer launch must run as root (it creates cgroups and loads eBPF programs); \
         try: sudo enforcer launch ..."
    )]
    NotRoot,
    #[error(transparent)]
    User(#[from] target_user::UserError),
    #[error(transparent)]
    Command(#[from] command::CommandError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Child(#[from] child::ChildError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("interrupted before the agent started")]
    Interrupted,
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Policy(_) | Self::Resolve(_) => 2,
            Self::Tls(crate::tls::TlsError::CaFile { .. }) => 2,
            Self::Command(command::CommandError::NotFound(_) | command::CommandError::Empty) => 127,
            Self::Command(command::CommandError::NotExecutable(_)) => 126,
            Self::Child(child::ChildError::Spawn { source, .. }) => match source.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            },
            Self::Interrupted => 130,
            _ => 1,
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Io { context, source }
}

/// Runs a launch to completion and returns the exit code to use.
pub fn run(args: LaunchArgs) -> Result<i32, LaunchError> {
    let t0 = std::time::Instant::now();
    // Everything that can be wrong with the request is checked before the
    // kernel is touched.
    let policy = Arc::new(Policy::load(&args.policy)?);
    let resolver_overrides = args
        .resolver
        .iter()
        .map(|r| dns::config::parse_resolver(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(dns::ResolveError::from)?;
    let upstream_dns = match dns::config::upstreams(&resolver_overrides) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("enforcer: note: {e}; allowed names resolve only through --resolve entries");
            Vec::new()
        }
    };
    let resolver = Arc::new(Resolver::new(
        &args.resolve,
        upstream_dns,
        dns::budget::Limits::default(),
        Arc::clone(&policy),
    )?);
    let upstream_roots = tls::upstream::root_store(&args.upstream_ca)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(LaunchError::NotRoot);
    }
    let user = target_user::resolve(args.user.as_deref(), args.allow_root)?;
    let (cmd, cmd_args) = args
        .command
        .split_first()
        .ok_or(command::CommandError::Empty)?;
    let program = command::resolve(cmd, std::env::var_os("PATH").as_deref())?;
    if user.is_root() {
        eprintln!(
            "enforcer: WARNING: the agent runs as ROOT (--allow-root). A root agent can detach \
             the kernel programs, leave its cgroup and read every secret on this host. Its \
             confinement is advisory."
        );
    }

    tracing::debug!(elapsed = ?t0.elapsed(), "request validated");
    let run_id = runid::new_run_id();
    let cgroup_root = cgroup::cgroup2_mount()?;
    let bpf_root = bpffs::ensure_mounted()?;
    let cgroup = RunCgroup::create(&cgroup_root, &run_id)?;
    let pins = PinDir::create(&bpf_root, &run_id)?;
    let runs_dir = PathBuf::from(runs::RUNS_DIR);
    let trust_dir = PathBuf::from(tls::trust::TRUST_DIR).join(&run_id);
    // Forked while this process is still single-threaded.
    let watchdog = if args.pin {
        None
    } else {
        Some(
            watchdog::start(watchdog::Leftovers {
                cgroup: cgroup.path().to_path_buf(),
                pins: pins.path().to_path_buf(),
                record: RunRecord::path(&runs_dir, &run_id),
                trust: trust_dir.clone(),
            })
            .map_err(io_err("cannot start the watchdog process"))?,
        )
    };
    let record = RunRecord {
        run_id: run_id.clone(),
        enforcer_pid: std::process::id(),
        cgroup: cgroup.path().to_path_buf(),
        pins: pins.path().to_path_buf(),
        policy: args.policy.clone(),
        pinned: args.pin,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    record
        .save(&runs_dir)
        .map_err(io_err("cannot record the run under /run/enforcer"))?;

    // The run's CA: its key lives in this process only; the agent trusts its
    // certificate through a bundle of the system roots plus it.
    let ca_lifetime = plan_ca_lifetime(&policy);
    let ca = Arc::new(tls::RunCa::generate(&run_id, ca_lifetime)?);
    let base_bundle = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let trust = tls::trust::TrustFiles::write(&run_id, ca.cert_pem(), base_bundle.as_deref())?;
    let upstream_tls = tls::upstream::client_config(upstream_roots)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("enforcer")
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    let mode = if args.log_json {
        LogMode::Json
    } else {
        LogMode::Human {
            verbose: args.verbose,
        }
    };
    let sink = DecisionSink::new(&run_id, mode);
    let plan = Plan {
        run_id: run_id.clone(),
        policy,
        resolver,
        ca,
        trust_env: trust.env(),
        upstream_tls,
        user,
        program,
        argv0: cmd.clone(),
        args: cmd_args.to_vec(),
        pin: args.pin,
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "cgroup, pins, watchdog and runtime ready");
    let outcome = runtime.block_on(supervise(plan, &cgroup, pins, sink, t0));
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(trust);

    let pinned_alive = matches!(outcome, Ok(Outcome::KeptPinned));
    if !pinned_alive {
        cgroup.remove()?;
    } else {
        std::mem::forget(cgroup);
    }
    RunRecord::remove(&runs_dir, &run_id);
    if let Some(w) = watchdog {
        w.done();
    }
    match outcome? {
        Outcome::Exited(code) => Ok(code),
        Outcome::KeptPinned => Ok(0),
    }
}

struct Plan {
    run_id: String,
    policy: Arc<Policy>,
    resolver: Arc<Resolver>,
    ca: Arc<tls::RunCa>,
    trust_env: Vec<(String, PathBuf)>,
    upstream_tls: rustls::ClientConfig,
    user: target_user::TargetUser,
    program: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
    pin: bool,
}

enum Outcome {
    Exited(i32),
    #[allow(dead_code)]
    KeptPinned,
}

/// The async part of a run: listeners, kernel programs, the agent, teardown.
async fn supervise(
    plan: Plan,
    cgroup: &RunCgroup,
    pins: PinDir,
    sink: DecisionSink,
    t0: std::time::Instant,
) -> Result<Outcome, LaunchError> {
    let listeners = Listeners::bind()
        .await
        .map_err(io_err("cannot bind the proxy listeners on loopback"))?;
    let cfg = KernelConfig {
        proxy_port4: Listeners::port(&listeners.transparent4),
        proxy_port6: listeners.transparent6.as_ref().map_or(0, Listeners::port),
        dns_port4: Listeners::dns_port(&listeners.dns_udp4),
        dns_port6: listeners.dns_udp6.as_ref().map_or(0, Listeners::dns_port),
        explicit_port4: Listeners::port(&listeners.explicit4),
        loopback_ports: plan.policy.local.loopback_ports.clone(),
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "listeners bound");
    let mut enforcement = Enforcement::attach(cgroup, pins, &cfg)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "programs attached");
    let origdst = Arc::new(enforcement.take_origdst()?);
    let ring = enforcement.take_events()?;

    let record_kernel = {
        let sink = sink.clone();
        move |e: KernelEvent| sink.record(&kernel_decision(&e))
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(events_task(ring, record_kernel.clone()));
    let explicit_port = Listeners::port(&listeners.explicit4);
    let ctx = ProxyContext {
        run_id: Arc::from(plan.run_id.as_str()),
        policy: Arc::clone(&plan.policy),
        origdst,
        resolver: Arc::clone(&plan.resolver),
        sink: sink.clone(),
        upstream: Upstream::new(Arc::clone(&plan.resolver), plan.upstream_tls.clone()),
        tls_server: tls::ca::server_config(Arc::clone(&plan.ca))?,
    };
    tasks.spawn(transparent::serve(listeners.transparent4, ctx.clone()));
    tasks.spawn(explicit::serve(listeners.explicit4, ctx.clone()));
    if let Some(l6) = listeners.transparent6 {
        tasks.spawn(transparent::serve(l6, ctx.clone()));
    }
    let dns_ctx = dns::server::DnsContext {
        policy: Arc::clone(&plan.policy),
        resolver: Arc::clone(&plan.resolver),
        sink: sink.clone(),
        ipv6: cfg.proxy_port6 != 0,
    };
    tasks.spawn(dns::server::serve_udp(listeners.dns_udp4, dns_ctx.clone()));
    tasks.spawn(dns::server::serve_tcp(listeners.dns_tcp4, dns_ctx.clone()));
    if let (Some(u), Some(t)) = (listeners.dns_udp6, listeners.dns_tcp6) {
        tasks.spawn(dns::server::serve_udp(u, dns_ctx.clone()));
        tasks.spawn(dns::server::serve_tcp(t, dns_ctx));
    }

    let cgroup_path = cgroup.path().to_path_buf();
    let forwarder = signals::Forwarder::start(move || {
        let _ = cgroup::kill_all(&cgroup_path, Duration::from_secs(5));
    })
    .map_err(io_err("cannot install signal handlers"))?;
    if forwarder.interrupted() {
        enforcement.detach()?;
        return Err(LaunchError::Interrupted);
    }

    let unix = Arc::new(supervisor::UnixAllowlist::from_policy(
        &plan.policy.local.unix_sockets,
    ));
    let spec = child::ChildSpec {
        program: plan.program.clone(),
        argv0: plan.argv0.clone(),
        args: plan.args.clone(),
        env: child_env(&plan, explicit_port),
        user: plan.user.clone(),
        cgroup: cgroup.dir().as_fd(),
        seccomp: seccomp::FilterOptions {
            unix_sockets: !unix.is_empty(),
            user_namespaces: plan.policy.local.allow_user_namespaces,
        },
    };
    eprintln!(
        "enforcer: run {} started: {} as {} (uid {}), policy {}",
        plan.run_id,
        plan.program.display(),
        plan.user.name,
        plan.user.uid,
        plan.policy.source.display()
    );
    let started = match child::spawn(spec) {
        Ok(s) => s,
        Err(e) => {
            enforcement.detach()?;
            return Err(e.into());
        }
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "agent started");
    let child_pid = started.pid;
    forwarder.set_child(child_pid as u32);

    // The seccomp supervisor runs on its own thread (it blocks in ioctl).
    let (stop_read, stop_write) = stop_pipe().map_err(io_err("cannot create a pipe"))?;
    let supervisor_thread = {
        let record = record_kernel.clone();
        let unix = Arc::clone(&unix);
        let listener = started.listener;
        std::thread::Builder::new()
            .name("seccomp".into())
            .spawn(move || supervisor::serve(listener, stop_read, unix, record))
            .map_err(io_err("cannot start the seccomp supervisor"))?
    };

    let status = tokio::task::spawn_blocking(move || child::wait(child_pid))
        .await
        .map_err(|e| LaunchError::Io {
            context: "waiting for the agent",
            source: std::io::Error::other(e),
        })?
        .map_err(io_err("waiting for the agent"))?;
    forwarder.set_child(0);
    drop(started.pidfd);
    let code = exit_code(status);

    // The direct child is gone; whatever it left behind goes too.
    cgroup.kill_all(Duration::from_secs(10))?;
    drop(stop_write);
    let _ = supervisor_thread.join();
    drop(forwarder);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let counters = enforcement.counters();
    if counters.events_lost > 0 || counters.table_full > 0 {
        eprintln!(
            "enforcer: note: {} kernel refusal reports were lost (ring buffer full); {} sockets were \
             refused because a socket table was full",
            counters.events_lost, counters.table_full
        );
    }
    enforcement.detach()?;
    let _ = plan.pin;
    print_summary(&plan.run_id, code, &sink);
    Ok(Outcome::Exited(code))
}

/// Reads the kernel's refusal reports until the task is aborted.
async fn events_task(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    record: impl FnMut(KernelEvent),
) {
    if let Err(e) = events::pump(ring, record).await {
        tracing::warn!("reading kernel refusal reports failed: {e}");
    }
}

fn kernel_decision(e: &KernelEvent) -> Decision {
    let reason =
        if e.reason_code == enforcer_common::Reason::UnixPathRefused as u32 && e.path.is_none() {
            "unix sockets are refused: the policy lists none ([local] unix_sockets)"
        } else {
            e.reason
        };
    let mut d = Decision::new(Layer::Kernel, Verdict::Deny, reason).process(e.pid, e.comm.clone());
    if let Some(a) = e.addr {
        d = d.host(a.to_string());
        if e.port != 0 {
            d = d.port(e.port);
        }
    } else if let Some(p) = &e.path {
        d = d.host(format!("unix:{p}"));
    } else if !e.family.is_empty() {
        d = d.host(format!("{} socket", e.family));
    }
    d
}

/// Proxy variables, upper and lower case (clients disagree on which they read).
const PROXY_VARS: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];
const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy"];

/// The agent's environment: ours, with the identity of the target user, the
/// explicit proxy, and the trust bundle that includes the run's CA.
fn child_env(plan: &Plan, explicit_port: u16) -> Vec<(OsString, OsString)> {
    let ours: std::collections::HashSet<String> = plan
        .trust_env
        .iter()
        .map(|(k, _)| k.clone())
        .chain(
            PROXY_VARS
                .iter()
                .chain(NO_PROXY_VARS)
                .map(|s| s.to_string()),
        )
        .chain(["ALL_PROXY", "all_proxy"].map(String::from))
        .collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !matches!(k.as_ref(), "HOME" | "USER" | "LOGNAME" | "SHELL" | "MAIL")
                && !ours.contains(k.as_ref())
        })
        .collect();
    let proxy = format!("http://127.0.0.1:{explicit_port}");
    for k in PROXY_VARS {
        env.push((k.into(), proxy.clone().into()));
    }
    for k in NO_PROXY_VARS {
        env.push((k.into(), "localhost,127.0.0.1,::1".into()));
    }
    for (k, v) in &plan.trust_env {
        env.push((k.into(), v.clone().into()));
    }
    env.push(("HOME".into(), plan.user.home.clone().into()));
    env.push(("USER".into(), plan.user.name.clone().into()));
    env.push(("LOGNAME".into(), plan.user.name.clone().into()));
    env.push(("SHELL".into(), plan.user.shell.clone().into()));
    env.push(("ENFORCER_RUN_ID".into(), plan.run_id.clone().into()));
    env
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

fn stop_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own both new descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn print_summary(run_id: &str, code: i32, sink: &DecisionSink) {
    let t = sink.tally();
    eprintln!(
        "enforcer: run {run_id} finished with exit code {code}: {} allowed, {} refused, {} asked",
        t.allowed, t.denied, t.asked
    );
    let top = t.top_refused(5);
    if !top.is_empty() {
        let list: Vec<String> = top.iter().map(|(d, n)| format!("{d} ({n}x)")).collect();
        eprintln!("enforcer: top refused: {}", list.join(", "));
    }
}

/// How long the run's CA (and its leaves) stay valid: the policy's TTL, or a
/// day, plus an hour of slack.
fn plan_ca_lifetime(policy: &Policy) -> Duration {
    policy.run.ttl.unwrap_or(Duration::from_secs(24 * 3600)) + Duration::from_secs(3600)
}
