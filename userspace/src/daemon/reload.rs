//! Reloading the daemon (SIGHUP, `enforcer reload`): the configuration and
//! every policy it names are read and checked again; if anything is wrong
//! the configuration in force stays and the reason is returned. Otherwise
//! each live run is decided by its unit's new policy from its next request
//! on (keeping its connections, credentials, ledger and TTL), and a run
//! whose unit no longer maps to a policy ends (its unit reaches nothing).

use std::sync::Arc;

use super::{
    Directory, Runs, Shared,
    config::DaemonConfig,
    protocol::{ReloadReply, RunReloaded},
    unit_run,
};
use crate::decision::{Cause, Decision, Layer};

/// A reload that changed nothing, logged.
pub fn refused(reason: impl Into<String>) -> ReloadReply {
    let reason = reason.into();
    crate::say!(
        Error,
        "enforcer: reload refused, the configuration in force stays: {reason}"
    );
    ReloadReply::Refused { reason }
}

/// Reads the configuration again and puts it in force (see the module).
pub async fn reload(shared: &Shared, runs: &Runs, directory: &Directory) -> ReloadReply {
    let config = match DaemonConfig::load(&shared.config_path) {
        Ok(c) => c,
        Err(e) => return refused(e.to_string()),
    };
    let old = shared.config.load();
    if config.slice != shared.slice {
        return refused(format!(
            "the slice changed ({} -> {}): that needs a restart of the daemon",
            shared.slice.display(),
            config.slice.display()
        ));
    }
    if config.audit_db != old.audit_db {
        return refused(format!(
            "audit_db changed ({} -> {}): that needs a restart of the daemon",
            old.audit_db.display(),
            config.audit_db.display()
        ));
    }
    let webhook = match super::webhook_for(&config, &shared.upstream_tls) {
        Ok(w) => w,
        Err(e) => return refused(e.to_string()),
    };
    let mut live = runs.lock().await;
    let mut report = Vec::new();
    let mut ended = Vec::new();
    for (cgroup_id, r) in live.iter() {
        let outcome = unit_run::policy_for(&config, &r.unit).and_then(|policy| {
            r.run
                .reload(Arc::clone(&policy))
                .map(|notes| (policy, notes))
                .map_err(|e| format!("its spend state could not be rebuilt: {e}"))
        });
        match outcome {
            Ok((policy, notes)) => {
                let path = policy.source.display().to_string();
                r.run.sink.record(
                    &Decision::new(
                        Layer::Control,
                        Cause::Allowed,
                        format!("policy reloaded: decided by {path} from now on"),
                    )
                    .host("run"),
                );
                report.push(RunReloaded {
                    run_id: r.run.id.clone(),
                    unit: r.unit.clone(),
                    policy: Some(path),
                    notes,
                });
            }
            Err(why) => {
                ended.push(*cgroup_id);
                report.push(RunReloaded {
                    run_id: r.run.id.clone(),
                    unit: r.unit.clone(),
                    policy: None,
                    notes: vec![format!("ended: {why}")],
                });
            }
        }
    }
    let units = config.units.len();
    shared.config.store(Arc::new(config));
    shared.webhook.store(webhook);
    let gone: Vec<_> = {
        let mut dir = directory.write().unwrap_or_else(|e| e.into_inner());
        ended
            .iter()
            .filter_map(|id| {
                dir.remove(id);
                live.remove(id)
            })
            .collect()
    };
    drop(live);
    for r in gone {
        unit_run::end(shared, r, -1).await;
    }
    for r in &report {
        crate::say!(
            Info,
            "enforcer: reload: run {} of {}: {}{}",
            r.run_id,
            r.unit,
            r.policy.as_deref().unwrap_or("ended"),
            if r.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.notes.join("; "))
            }
        );
    }
    crate::say!(
        Info,
        "enforcer: reloaded {}: {units} unit mapping(s), {} live run(s)",
        shared.config_path.display(),
        report.len()
    );
    ReloadReply::Reloaded {
        units,
        runs: report,
    }
}
