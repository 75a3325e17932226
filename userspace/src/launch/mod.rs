//! `enforcer launch`: validate the policy, build the run's cgroup and attach
//! the kernel programs, start the proxy and resolver, start the agent inside
//! the cgroup as an unprivileged user, wait for it, then tear everything down.

pub mod child;
pub mod clone3;
pub mod command;
pub mod connector;
pub mod isolation;
pub mod seccomp;
pub mod signals;
pub mod supervisor;
pub mod target_user;
pub mod unix_list;
pub mod watchdog;

use std::{
    ffi::OsString,
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use crate::{
    approval::{ApprovalHub, ApproverMode, terminal::Terminal},
    cli::Approver,
    cli::LaunchArgs,
    decision::{DecisionSink, LogMode},
    dns::{self, Resolver},
    kernel::{
        Enforcement, RunCgroup,
        bpffs::{self, BpffsError, PinDir},
        cgroup::{self, CgroupError},
        loader::LoadError,
    },
    policy::{Policy, PolicyError},
    proxy::Listeners,
    run::{Run, RunError, agent_env, kernel_events},
    runid,
    runs::{self, RunRecord},
    secrets::Secrets,
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
    Isolation(#[from] isolation::IsolationError),
    #[error(transparent)]
    UnixList(#[from] unix_list::UnixListError),
    #[error(transparent)]
    Connector(#[from] connector::ConnectorError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Spend(#[from] crate::spend::SpendError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Report(#[from] crate::ci::report::ReportError),
    #[error(
        "CI mode builds its report and exit status from the audit log: drop --no-audit (or pass --no-ci)"
    )]
    CiWithoutAudit,
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
            Self::Policy(_) | Self::Resolve(_) | Self::UnixList(_) | Self::CiWithoutAudit => 2,
            Self::Tls(crate::tls::TlsError::CaFile { .. })
            | Self::Secret(_)
            | Self::Spend(crate::spend::SpendError::InvalidRule(_)) => 2,
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
    for w in policy.warnings() {
        crate::say!(Warn, "enforcer: warning: {w}");
    }
    // Before anything is read with root's rights (secrets, CA files): a
    // user without them learns that, not that a secret is missing.
    if !nix::unistd::geteuid().is_root() {
        return Err(LaunchError::NotRoot);
    }
    let resolver_overrides = args
        .resolver
        .iter()
        .map(|r| dns::config::parse_resolver(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(dns::ResolveError::from)?;
    let upstream_dns = match dns::config::upstreams(&resolver_overrides) {
        Ok(u) => u,
        Err(e) => {
            crate::say!(
                Info,
                "enforcer: note: {e}; allowed names resolve only through --resolve entries"
            );
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
    let ttl = args.ttl.or(policy.run.ttl);
    let approval_timeout = args.approval_timeout;
    let upstream_timeout = args.upstream_timeout;
    // Real values are read now, as root, before anything else exists; a
    // missing or unreadable source stops here.
    let secrets = Arc::new(Secrets::load(&policy, ttl)?);
    let user = target_user::resolve(args.user.as_deref(), args.allow_root)?;
    // A key file the agent could read or swap would give it the real key.
    let gids: Vec<u32> = user.groups.iter().copied().chain([user.gid]).collect();
    if !user.is_root() {
        crate::secrets::private::check_files(
            &policy,
            &crate::secrets::private::Agent {
                uid: user.uid,
                gids: &gids,
            },
        )?;
    }
    // Listed unix sockets are resolved now, before the agent exists.
    let (unix, notes) = unix_list::UnixAllowlist::resolve(
        &policy.local.unix_sockets,
        unix_list::AgentIds {
            uid: user.uid,
            gids: &gids,
        },
    )?;
    for n in notes {
        crate::say!(Info, "enforcer: note: {n}");
    }
    let (cmd, cmd_args) = args
        .command
        .split_first()
        .ok_or(command::CommandError::Empty)?;
    let program = command::resolve(cmd, std::env::var_os("PATH").as_deref())?;
    // What isolates this run from the user's other processes (other runs
    // included) is checked before anything exists: a kernel that cannot
    // provide it stops the launch here, unless the user says otherwise.
    let isolation = isolation::Isolation::prepare(&user.name, args.allow_unisolated)?;
    if !isolation.missing.is_empty() {
        crate::say!(
            Warn,
            "{}",
            isolation::warning(&user.name, &isolation.missing)
        );
    }
    if user.is_root() {
        crate::say!(
            Warn,
            "enforcer: WARNING: the agent runs as ROOT (--allow-root). A root agent can detach \
             the kernel programs, leave its cgroup and read every secret on this host. Its \
             confinement is advisory."
        );
    }

    // The audit log must be writable before anything happens: a run that
    // cannot be recorded does not start (unless --no-audit).
    let audit_store = if args.no_audit {
        crate::say!(
            Warn,
            "enforcer: WARNING: --no-audit: nothing will record what the agent does"
        );
        None
    } else {
        Some(crate::audit::AuditStore::open(&args.audit_db)?)
    };

    if args.mode == crate::ci::report::RunMode::Observe {
        crate::say!(
            Warn,
            "enforcer: !!! OBSERVE MODE: every HTTP(S) request, connection and DNS name the \
             policy would refuse is LET THROUGH and recorded as \"would deny\". DNS and HTTPS \
             exfiltration are open for this run: use it only for a trusted recording run, never \
             on untrusted input. The kernel boundary (raw sockets, UDP, unlisted ports) is \
             enforced as always; secrets are injected only as the policy says. !!!"
        );
    }
    let ci = crate::ci::CiOptions::resolve(&args.ci, |k| std::env::var_os(k));
    if ci.enabled && args.no_audit {
        return Err(LaunchError::CiWithoutAudit);
    }
    let (approvals, terminal) = if ci.enabled {
        crate::ci::announce(&ci, policy.has_ask());
        (
            Arc::new(ApprovalHub::new(ApproverMode::Ci, approval_timeout)),
            None,
        )
    } else {
        approvers(args.approver, approval_timeout, &policy)?
    };

    tracing::debug!(elapsed = ?t0.elapsed(), "request validated");
    let run_id = runid::new_run_id();
    // Daily caps live in the audit database, opened above.
    let spend = Arc::new(crate::spend::SpendControl::open(
        &policy,
        &run_id,
        (!args.no_audit).then_some(args.audit_db.as_path()),
    )?);
    let cgroup_root = cgroup::cgroup2_mount()?;
    let bpf_root = bpffs::ensure_mounted()?;
    // The run is recorded before its cgroup exists: `enforcer cleanup`
    // leaves runs whose enforcer is alive alone, so it cannot take this one
    // apart while it starts. Until the watchdog takes over, a failed start
    // removes the record again.
    let runs_dir = PathBuf::from(runs::RUNS_DIR);
    let record = RunRecord {
        run_id: run_id.clone(),
        enforcer_pid: std::process::id(),
        cgroup: cgroup_root.join(cgroup::RUNS_DIR).join(&run_id),
        pins: bpf_root.join(bpffs::PINS_DIR).join(&run_id),
        policy: args.policy.clone(),
        pinned: args.pin,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        unit: None,
        label: args.label.as_ref().map(ToString::to_string),
    };
    record
        .save(&runs_dir)
        .map_err(io_err("cannot record the run under /run/enforcer"))?;
    let record_guard = RecordGuard {
        runs_dir: runs_dir.clone(),
        run_id: run_id.clone(),
    };
    let cgroup = RunCgroup::create(&cgroup_root, &run_id)?;
    let pins = PinDir::create(&bpf_root, &run_id)?;
    if let Some(store) = &audit_store {
        let invoking = std::env::var("SUDO_USER").unwrap_or_else(|_| user.name.clone());
        store.start_run(&crate::run::info::run_info(
            &run_id,
            &policy,
            &crate::run::info::Starter {
                invoking: &invoking,
                uid: user.uid,
                label: args.label.as_ref(),
                unit: None,
            },
            &args.command,
            cgroup.path(),
            ttl,
        ))?;
    }
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
    // From here on the watchdog (or, pinned, `enforcer cleanup`) owns the record.
    std::mem::forget(record_guard);

    // The run's CA: its key lives in this process only; the agent trusts its
    // certificate through a bundle of the system roots plus it.
    let ca_lifetime = crate::run::ca_lifetime(&policy);
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
    // The writer thread starts only now: the watchdog above had to be
    // forked while this process was single-threaded.
    let audit_writer = audit_store.map(crate::audit::AuditStore::writer);
    let sink = DecisionSink::with_audit(&run_id, mode, audit_writer);
    let run = Run {
        id: run_id.clone(),
        rules: Arc::new(crate::run::live::LiveRules::new(policy, spend)),
        resolver,
        secrets,
        approvals,
        sink,
        ca,
        upstream_tls,
        upstream_timeout,
        audit_db: (!args.no_audit).then(|| args.audit_db.clone()),
        agent_pid: Arc::default(),
        observe: args.mode == crate::ci::report::RunMode::Observe,
    };
    let plan = Plan {
        run,
        kill_on_expiry: args.kill_on_expiry,
        trust_env: trust.env(),
        user,
        isolation,
        program,
        argv0: cmd.clone(),
        args: cmd_args.to_vec(),
        pin: args.pin,
        report: args.report.clone(),
        ci,
        mode: args.mode,
        terminal,
        unix,
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "cgroup, pins, watchdog and runtime ready");
    let outcome = runtime.block_on(supervise(plan, &cgroup, pins, t0));
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

/// Removes the run record if the launch fails before the watchdog starts.
struct RecordGuard {
    runs_dir: PathBuf,
    run_id: String,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        RunRecord::remove(&self.runs_dir, &self.run_id);
    }
}

/// One launch: its run, and how its one agent is started.
struct Plan {
    run: Run,
    kill_on_expiry: bool,
    trust_env: Vec<(String, PathBuf)>,
    user: target_user::TargetUser,
    isolation: isolation::Isolation,
    program: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
    pin: bool,
    report: Option<PathBuf>,
    ci: crate::ci::CiOptions,
    mode: crate::ci::report::RunMode,
    /// The launching terminal, when it prompts for approvals.
    terminal: Option<Terminal>,
    /// The policy's unix sockets, resolved at start.
    unix: unix_list::UnixAllowlist,
}

enum Outcome {
    Exited(i32),
    #[allow(dead_code)]
    KeptPinned,
}

/// The async part of a run: listeners, kernel programs, the agent, teardown.
async fn supervise(
    mut plan: Plan,
    cgroup: &RunCgroup,
    pins: PinDir,
    t0: std::time::Instant,
) -> Result<Outcome, LaunchError> {
    // The connector (supervised connects, as the agent) starts first: its
    // exec overlaps with loading the kernel programs.
    let connector = if plan.unix.is_empty() {
        None
    } else {
        Some(connector::Connector::spawn(
            cgroup.dir().as_fd(),
            &plan.user,
        )?)
    };
    let listeners = Listeners::bind()
        .await
        .map_err(io_err("cannot bind the proxy listeners on loopback"))?;
    let cfg = plan.run.kernel_config(cgroup.id()?, &listeners);
    tracing::debug!(elapsed = ?t0.elapsed(), "listeners bound");
    let mut enforcement = Enforcement::attach(cgroup.dir().as_fd(), pins)?;
    enforcement.register(&cfg)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "programs attached");
    let origdst = Arc::new(enforcement.origdst(cfg.cgroup_id));
    let ring = enforcement.take_events()?;

    let record_kernel = plan.run.kernel_recorder();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(kernel_events::pump(ring, record_kernel.clone()));
    let explicit_port = cfg.explicit_port4;
    plan.run.serve(
        listeners,
        origdst,
        std::path::Path::new(runs::RUNS_DIR),
        &mut tasks,
    )?;
    let cgroup_path = cgroup.path().to_path_buf();
    let forwarder = signals::Forwarder::start(move || {
        let _ = cgroup::kill_all(&cgroup_path, Duration::from_secs(5));
    })
    .map_err(io_err("cannot install signal handlers"))?;
    if forwarder.interrupted() {
        enforcement.detach()?;
        return Err(LaunchError::Interrupted);
    }

    let connects = match connector {
        Some(c) => {
            if let Err(e) = c.wait_ready(Duration::from_secs(5)) {
                enforcement.detach()?;
                return Err(e.into());
            }
            Some(Arc::new(supervisor::Connects {
                list: plan.unix.clone(),
                connector: c,
            }))
        }
        None => None,
    };
    let spec = child::ChildSpec {
        program: plan.program.clone(),
        argv0: plan.argv0.clone(),
        args: plan.args.clone(),
        env: agent_env::build(
            &agent_env::AgentEnv {
                run_id: &plan.run.id,
                policy: &plan.run.policy(),
                secrets: &plan.run.secrets,
                trust_env: &plan.trust_env,
                user: &plan.user,
                explicit_port,
            },
            std::env::vars_os(),
        ),
        user: plan.user.clone(),
        cgroup: cgroup.dir().as_fd(),
        seccomp: seccomp::FilterOptions {
            unix_sockets: connects.is_some(),
            user_namespaces: plan.run.policy().local.allow_user_namespaces,
        },
        isolation: &plan.isolation,
        terminal: plan.terminal.as_ref().and_then(Terminal::agent_side),
    };
    crate::say!(
        Info,
        "enforcer: run {} started: {} as {} (uid {}), policy {}",
        plan.run.id,
        plan.program.display(),
        plan.user.name,
        plan.user.uid,
        plan.run.policy().source.display()
    );
    if let Some(t) = &plan.terminal {
        t.say(&format!(
            "enforcer: approvals are asked on this terminal. Real prompts start with \
             [enforcer approval {}]; the agent never sees this code.\n",
            t.code()
        ));
    }
    let started = match child::spawn(spec) {
        Ok(s) => s,
        Err(e) => {
            enforcement.detach()?;
            return Err(e.into());
        }
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "agent started");
    let terminal_task = plan
        .terminal
        .take()
        .map(|t| tokio::spawn(t.run(Arc::clone(&plan.run.approvals), plan.run.id.clone())));
    let child_pid = started.pid;
    forwarder.set_child(child_pid as u32);
    plan.run
        .agent_pid
        .store(child_pid as u32, std::sync::atomic::Ordering::SeqCst);
    if let Some(left) = plan.run.secrets.ttl_left() {
        tasks.spawn(crate::run::expiry::expiry(
            left,
            plan.kill_on_expiry,
            cgroup.path().to_path_buf(),
            plan.run.sink.clone(),
        ));
    }

    // The seccomp supervisor runs on its own thread (it blocks in ioctl).
    let (stop_read, stop_write) = stop_pipe().map_err(io_err("cannot create a pipe"))?;
    let supervisor_thread = {
        let record: supervisor::Report = Arc::new(record_kernel.clone());
        let listener = started.listener;
        std::thread::Builder::new()
            .name("seccomp".into())
            .spawn(move || supervisor::serve(listener, stop_read, connects, record))
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
    if let Some(mut t) = terminal_task {
        // Let the last of the agent's output reach the screen; the real
        // terminal gets its settings back when the relay ends.
        if tokio::time::timeout(Duration::from_secs(2), &mut t)
            .await
            .is_err()
        {
            t.abort();
            let _ = t.await;
        }
    }
    drop(stop_write);
    let _ = supervisor_thread.join();
    drop(forwarder);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let counters = enforcement.counters();
    if counters.events_lost > 0 || counters.table_full > 0 {
        crate::say!(
            Warn,
            "enforcer: note: {} kernel refusal reports were lost (ring buffer full); {} sockets were \
             refused because a socket table was full",
            counters.events_lost,
            counters.table_full
        );
    }
    enforcement.detach()?;
    let _ = plan.pin;
    let code = summarize(&plan, code).await?;
    Ok(Outcome::Exited(code))
}

/// The run's approval queue and, with `--approver terminal` on a terminal,
/// the pseudo-terminal the agent gets instead of the real one.
fn approvers(
    approver: Approver,
    timeout: Duration,
    policy: &Policy,
) -> Result<(Arc<ApprovalHub>, Option<Terminal>), LaunchError> {
    let mode = if approver == Approver::None {
        ApproverMode::None
    } else {
        ApproverMode::Humans
    };
    let hub = Arc::new(ApprovalHub::new(mode, timeout));
    let asks = policy.has_ask();
    let terminal = match approver {
        Approver::Terminal if asks => {
            let t = Terminal::open().map_err(io_err("cannot set up the agent's terminal"))?;
            if t.is_none() && asks {
                crate::say!(
                    Info,
                    "enforcer: note: stdin is not a terminal (or enforcer is not in its \
                     foreground): approvals only through `sudo enforcer approve ID` from \
                     another terminal"
                );
            }
            t
        }
        Approver::Terminal | Approver::Socket | Approver::None => None,
    };
    hub.set_terminal(terminal.is_some());
    if approver == Approver::None && asks {
        crate::say!(
            Info,
            "enforcer: note: --approver none: every request that needs an approval is denied"
        );
    }
    Ok((hub, terminal))
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

/// Exit status of a run whose audit log failed while it ran (EX_IOERR),
/// whatever the agent's own status: the run was not fully recorded, and
/// from the failure on nothing was forwarded.
pub const EXIT_AUDIT_FAILED: i32 = 74;

/// The end-of-run summary on stderr (from the audit log when there is one
/// that still works, otherwise from the run's own counts), and `--report
/// FILE.json`. Returns the exit status: the agent's, or
/// [`EXIT_AUDIT_FAILED`] when the audit log failed during the run.
async fn summarize(plan: &Plan, code: i32) -> Result<i32, LaunchError> {
    let sink = &plan.run.sink;
    let from_log = match sink.audit() {
        Some(writer) => {
            let end = crate::audit::RunEnd {
                run_id: plan.run.id.clone(),
                ended_at: std::time::SystemTime::now(),
                exit_code: code,
            };
            match writer.finish_run(end).await {
                Ok(summary) => Some(summary),
                Err(e) => {
                    if writer.failure().is_none() {
                        crate::say!(
                            Warn,
                            "enforcer: warning: the run's end could not be recorded: {e}"
                        );
                    }
                    None
                }
            }
        }
        None => None,
    };
    let failure = sink.audit().and_then(crate::audit::AuditWriter::failure);
    let summary = from_log.unwrap_or_else(|| {
        let t = sink.tally();
        crate::audit::RunSummary {
            run_id: plan.run.id.clone(),
            name: plan.run.policy().run.name.clone(),
            started_at: None,
            ended_at: None,
            exit_code: Some(code),
            counts: t.counts,
            top_refused: t.top_refused(crate::audit::TOP_REFUSED),
            spend_usd: plan.run.spend().ledger.run_spent() as f64
                / crate::spend::MICROS_PER_USD as f64,
            db_path: match (&failure, sink.audit()) {
                (Some(_), Some(w)) => format!("{} (FAILED during the run)", w.path().display()),
                _ => String::from("(none: --no-audit)"),
            },
            audit_failed_at: None,
            audit_error: None,
        }
    });
    let mut summary = summary;
    if let Some((e, at)) = &failure {
        summary.audit_failed_at = Some(crate::logging::format_rfc3339(*at));
        summary.audit_error = Some(e.to_string());
    }
    match crate::logging::format() {
        crate::logging::Format::Json => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr().lock(), "{}", summary.json_line());
        }
        crate::logging::Format::Human => crate::say!(Info, "{summary}"),
    }
    let code = match &failure {
        Some((e, at)) => {
            crate::say!(
                Error,
                "enforcer: THE AUDIT LOG FAILED at {}: {e}\n\
                 enforcer:   since then no request was forwarded (each was refused with 503); \
                 the counts above are enforcer's own, not the log's, and the log lacks what \
                 happened after the failure. Exit status {EXIT_AUDIT_FAILED} (the agent's was {code}).",
                crate::logging::format_rfc3339(*at)
            );
            EXIT_AUDIT_FAILED
        }
        None => code,
    };
    let code = crate::ci::conclude(
        crate::ci::report::Inputs {
            opts: &plan.ci,
            mode: plan.mode,
            policy: &plan.run.policy().source,
            summary,
            code,
        },
        plan.run.audit_db.as_deref(),
        plan.report.as_deref(),
    )?;
    Ok(code)
}
