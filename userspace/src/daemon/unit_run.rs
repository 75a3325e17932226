//! Starting and ending the run of one unit: its policy's run object, its
//! listeners, its entry in the kernel's table of runs, and its audit rows.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::task::JoinSet;

use super::{DaemonError, Shared, config::DaemonConfig, peer::Peer, protocol::Started};
use crate::{
    approval::{ApprovalHub, ApproverMode},
    decision::DecisionSink,
    dns::{self, Resolver},
    kernel::KernelConfig,
    policy::Policy,
    proxy::Listeners,
    run::{Run, agent_env, label::Label},
    runid,
    runs::{self, RunRecord},
    secrets::Secrets,
    tls,
};

/// A unit's live run.
pub struct UnitRun {
    pub unit: String,
    pub run: Arc<Run>,
    pub cgroup: PathBuf,
    pub kernel: KernelConfig,
    pub tasks: JoinSet<()>,
    /// Removed with the run.
    pub trust: tls::trust::TrustFiles,
    /// The process the run was started for (a pidfd: readable once it has
    /// exited, whatever its pid became).
    pub agent: std::os::fd::OwnedFd,
}

impl UnitRun {
    /// Whether the process the run was started for has exited (a unit
    /// restarted at once asks again from the same cgroup).
    pub fn agent_exited(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut pfd = libc::pollfd {
            fd: self.agent.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }
}

/// A run record saved for a run that is starting: removed on drop unless
/// the start succeeded ([`Recorded::keep`]).
struct Recorded(Option<String>);

impl Recorded {
    fn save(record: RunRecord) -> Result<Self, DaemonError> {
        record
            .save(Path::new(runs::RUNS_DIR))
            .map_err(|e| DaemonError::Io {
                context: "cannot record the run under /run/enforcer/runs",
                source: e,
            })?;
        Ok(Self(Some(record.run_id)))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            RunRecord::remove(Path::new(runs::RUNS_DIR), &id);
        }
    }
}

/// The policy `unit` runs under in `config`, or why it gets none.
pub fn policy_for(config: &DaemonConfig, unit: &str) -> Result<Arc<Policy>, String> {
    let entry = config
        .policy_for(unit)
        .ok_or_else(|| format!("no [[unit]] entry matches {unit}"))?;
    if !entry.policy.local.unix_sockets.is_empty() {
        return Err(format!(
            "policy {} lists unix sockets, which units started by `enforcer exec` cannot use yet",
            entry.policy.source.display()
        ));
    }
    Ok(Arc::clone(&entry.policy))
}

/// Starts the run of `peer`'s unit under the policy its name maps to.
pub async fn start(
    shared: &Shared,
    peer: &Peer,
    unit: &str,
    cgroup_id: u64,
    label: Option<Label>,
) -> Result<(UnitRun, Started), DaemonError> {
    let policy = policy_for(&shared.config.load(), unit).map_err(DaemonError::Refused)?;
    // A key file the unit's user could read (or replace) would hand it the
    // real key: refused, as launch refuses it.
    crate::secrets::private::check_files(
        &policy,
        &crate::secrets::private::Agent {
            uid: peer.uid,
            gids: &peer.privilege.gids,
        },
    )?;
    let run_id = runid::new_run_id();
    // Recorded first: `enforcer cleanup` takes a control socket or trust
    // bundle without a live record for an orphan and removes it, so
    // nothing of the run may exist before its record (removed again if
    // the start fails). Also how `status`, `revoke`, `approve`... find it
    // by run id, unit name or label.
    let record = Recorded::save(RunRecord {
        run_id: run_id.clone(),
        enforcer_pid: std::process::id(),
        cgroup: shared.cgroup_root.join(&peer.cgroup),
        pins: PathBuf::new(),
        policy: policy.source.clone(),
        pinned: true,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        unit: Some(unit.to_string()),
        label: label.as_ref().map(ToString::to_string),
    })?;
    let resolver = Arc::new(Resolver::new(
        &shared.resolve,
        shared.upstream_dns.clone(),
        dns::budget::Limits::default(),
        Arc::clone(&policy),
    )?);
    let secrets = Arc::new(Secrets::load(&policy, policy.run.ttl)?);
    let spend = Arc::new(crate::spend::SpendControl::open(
        &policy,
        &run_id,
        shared.audit_db.as_deref(),
    )?);
    let approvals = Arc::new(ApprovalHub::new(
        ApproverMode::Humans,
        shared.approval_timeout,
    ));
    let lifetime = crate::run::ca_lifetime(&policy);
    let ca = Arc::new(tls::RunCa::generate(&run_id, lifetime)?);
    let trust = tls::trust::TrustFiles::write(&run_id, ca.cert_pem(), None)?;
    if let Some(w) = &shared.audit {
        let info = crate::run::info::run_info(
            &run_id,
            &policy,
            &crate::run::info::Starter {
                invoking: unit,
                uid: peer.uid,
                label: label.as_ref(),
                unit: Some(unit),
            },
            &[std::ffi::OsString::from(unit)],
            &shared.cgroup_root.join(&peer.cgroup),
            policy.run.ttl,
        );
        w.start_run(info).await?;
    }
    let sink = DecisionSink::with_audit(&run_id, shared.log_mode, shared.audit.clone());
    let run = Arc::new(Run {
        id: run_id.clone(),
        rules: Arc::new(crate::run::live::LiveRules::new(Arc::clone(&policy), spend)),
        resolver,
        secrets,
        approvals,
        sink,
        ca,
        upstream_tls: shared.upstream_tls.clone(),
        upstream_timeout: shared.upstream_timeout,
        audit_db: shared.audit_db.clone(),
        agent_pid: Arc::new(std::sync::atomic::AtomicU32::new(peer.pid as u32)),
        observe: false,
    });
    let listeners = Listeners::bind_in(Some(shared.ports.clone()))
        .await
        .map_err(DaemonError::Listeners)?;
    let kernel = run.kernel_config(cgroup_id, &listeners);
    shared.enforcement.register(&kernel)?;
    let mut tasks = JoinSet::new();
    let origdst = Arc::new(shared.enforcement.origdst(cgroup_id));
    if let Err(e) = run.serve(
        listeners,
        origdst,
        std::path::Path::new(crate::runs::RUNS_DIR),
        &mut tasks,
    ) {
        shared.enforcement.unregister(&kernel);
        return Err(e.into());
    }
    tasks.spawn(crate::approval::webhook::watch(
        Arc::clone(&run.approvals),
        Arc::clone(&shared.webhook),
        unit.to_string(),
    ));
    record.keep();
    let env = agent_env::overrides(
        &run_id,
        &policy,
        &run.secrets,
        &trust.env(),
        kernel.explicit_port4,
    );
    let started = Started {
        run_id,
        set: env.set,
        unset: env.unset,
        user_namespaces: policy.local.allow_user_namespaces,
    };
    Ok((
        UnitRun {
            agent: peer.pidfd.try_clone().map_err(|e| DaemonError::Io {
                context: "cannot keep the unit's pidfd",
                source: e,
            })?,
            unit: unit.to_string(),
            run,
            cgroup: peer.cgroup.clone(),
            kernel,
            tasks,
            trust,
        },
        started,
    ))
}

/// Ends a run whose unit is gone (or that the daemon gives up): its cgroup
/// reaches nothing from now on, its listeners close, its audit row ends.
pub async fn end(shared: &Shared, mut r: UnitRun, code: i32) {
    shared.enforcement.unregister(&r.kernel);
    r.tasks.abort_all();
    while r.tasks.join_next().await.is_some() {}
    if let Some(w) = &shared.audit {
        let end = crate::audit::RunEnd {
            run_id: r.run.id.clone(),
            ended_at: std::time::SystemTime::now(),
            exit_code: code,
        };
        if let Err(e) = w.finish_run(end).await {
            tracing::warn!("recording the end of run {} failed: {e}", r.run.id);
        }
    }
    RunRecord::remove(Path::new(runs::RUNS_DIR), &r.run.id);
    crate::say!(Info, "enforcer: run {} of {} ended", r.run.id, r.unit);
}
