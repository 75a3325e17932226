//! Starting and ending the run of one unit: its policy's run object, its
//! listeners, its entry in the kernel's table of runs, and its audit rows.

use std::{path::PathBuf, sync::Arc};

use tokio::task::JoinSet;

use super::{DaemonError, Shared, peer::Peer, protocol::Started};
use crate::{
    approval::{ApprovalHub, ApproverMode},
    decision::DecisionSink,
    dns::{self, Resolver},
    kernel::KernelConfig,
    proxy::Listeners,
    run::{Run, agent_env, label::Label},
    runid,
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
}

/// Starts the run of `peer`'s unit under `policy_index`'s policy.
pub async fn start(
    shared: &Shared,
    peer: &Peer,
    unit: &str,
    cgroup_id: u64,
    label: Option<Label>,
) -> Result<(UnitRun, Started), DaemonError> {
    let entry = shared
        .config
        .policy_for(unit)
        .ok_or_else(|| DaemonError::Refused(format!("no [[unit]] entry matches {unit}")))?;
    let policy = Arc::clone(&entry.policy);
    if !policy.local.unix_sockets.is_empty() {
        return Err(DaemonError::Refused(format!(
            "policy {} lists unix sockets, which units started by `enforcer exec` cannot use yet",
            policy.source.display()
        )));
    }
    let run_id = runid::new_run_id();
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
    crate::say!(Info, "enforcer: run {} of {} ended", r.run.id, r.unit);
}
