//! A run: one agent's policy, credentials, ledger, approvals, TTL, counters
//! and audit identity, and the listeners that serve it (proxy, resolver,
//! control socket). Owned by neither `launch` nor a daemon: `launch` makes
//! a cgroup, starts one run and spawns one child into it; whatever governs
//! many cgroups starts one run per cgroup.

pub mod agent_env;
pub mod expiry;
pub mod info;
pub mod kernel_events;
pub mod label;
pub mod live;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use tokio::task::JoinSet;

use crate::{
    approval::ApprovalHub,
    decision::DecisionSink,
    dns::{self, Resolver},
    kernel::KernelConfig,
    policy::Policy,
    proxy::{
        Listeners, ProxyContext, context::Destinations, explicit, transparent, upstream::Upstream,
    },
    secrets::Secrets,
    spend::SpendControl,
    tls,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot create the run's control socket: {0}")]
    Control(#[source] std::io::Error),
    #[error(transparent)]
    Spend(#[from] crate::spend::SpendError),
}

/// Everything one run decides with, shared by its listeners' tasks.
pub struct Run {
    pub id: String,
    /// The policy and spend state (caps, rate limits, loop breaker) in
    /// force: swapped by a reload, read once per request.
    pub rules: Arc<live::LiveRules>,
    pub resolver: Arc<Resolver>,
    /// The run's credentials (real values and the placeholders the agent
    /// holds), fixed at start: a reload never changes them.
    pub secrets: Arc<Secrets>,
    /// Requests waiting for a human.
    pub approvals: Arc<ApprovalHub>,
    /// Where decisions go: counts, log lines, audit rows.
    pub sink: DecisionSink,
    /// The run's CA: its key lives in this process only.
    pub ca: Arc<tls::RunCa>,
    pub upstream_tls: rustls::ClientConfig,
    pub upstream_timeout: Duration,
    /// The audit database, when the run has one.
    pub audit_db: Option<PathBuf>,
    /// The agent's pid once it runs (for `enforcer status` and revocation).
    pub agent_pid: Arc<AtomicU32>,
    /// Observe mode: what the policy's rules refuse goes ahead, recorded as
    /// "would deny" (`proxy::observe`); the kernel boundary is unchanged.
    pub observe: bool,
}

impl Run {
    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.rules.load().policy)
    }

    /// The spend state in force now.
    pub fn spend(&self) -> Arc<SpendControl> {
        Arc::clone(&self.rules.load().spend)
    }

    /// Puts `policy` in force for the run's next requests and DNS queries.
    /// The run keeps its credentials, TTL, approvals and audit identity; its
    /// spend state takes the new caps and limits with what it already spent
    /// and called carried over ([`SpendControl::reloaded`]). What the new
    /// policy changes that a live run cannot take (its agent's environment
    /// and the kernel's tables were set at start) is returned, one line
    /// each, for the reload's report.
    pub fn reload(&self, policy: Arc<Policy>) -> Result<Vec<String>, RunError> {
        let old = self.rules.load();
        let spend =
            SpendControl::reloaded(&old.spend, &policy, &self.id, self.audit_db.as_deref())?;
        let mut notes = Vec::new();
        for s in &policy.secrets {
            if !self.secrets.iter().any(|have| have.name == s.name) {
                notes.push(format!(
                    "secret {} is new: this run's agent has no placeholder for it (restart the unit)",
                    s.name
                ));
            }
        }
        if policy.local != old.policy.local {
            notes.push(String::from(
                "[local] changed: it applies to runs started from now on (restart the unit)",
            ));
        }
        let denied = self
            .approvals
            .deny_all("enforcer: the policy was reloaded while it waited (ask again)");
        if denied > 0 {
            notes.push(format!(
                "{denied} request(s) waiting for approval were denied: they were asked under the old rules"
            ));
        }
        if self.approvals.forget_always() {
            notes.push(String::from(
                "its `always` approvals were forgotten (the next call of those rules is asked again)",
            ));
        }
        self.resolver.set_policy(Arc::clone(&policy));
        self.rules.store(live::Rules {
            policy,
            spend: Arc::new(spend),
        });
        Ok(notes)
    }

    /// What the kernel programs need to serve this run's processes in the
    /// cgroup `cgroup_id` through `listeners`.
    pub fn kernel_config(&self, cgroup_id: u64, listeners: &Listeners) -> KernelConfig {
        KernelConfig {
            cgroup_id,
            proxy_port4: Listeners::port(&listeners.transparent4),
            proxy_port6: listeners.transparent6.as_ref().map_or(0, Listeners::port),
            dns_port4: Listeners::dns_port(&listeners.dns_udp4),
            dns_port6: listeners.dns_udp6.as_ref().map_or(0, Listeners::dns_port),
            explicit_port4: Listeners::port(&listeners.explicit4),
            loopback_ports: self.policy().local.loopback_ports.clone(),
        }
    }

    /// Starts serving the run on `listeners` (proxy, explicit proxy,
    /// resolver) and on its control socket under `runs_dir`; `origdst` is
    /// the kernel's record of where each of the run's connections was
    /// headed. The tasks end when `tasks` is aborted.
    pub fn serve(
        &self,
        listeners: Listeners,
        origdst: Arc<dyn Destinations>,
        runs_dir: &std::path::Path,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), RunError> {
        let rules = self.rules.load();
        let ctx = ProxyContext {
            run_id: Arc::from(self.id.as_str()),
            policy: Arc::clone(&rules.policy),
            rules: Some(Arc::clone(&self.rules)),
            origdst,
            resolver: Arc::clone(&self.resolver),
            sink: self.sink.clone(),
            upstream: Upstream::new(
                Arc::clone(&self.resolver),
                self.upstream_tls.clone(),
                self.upstream_timeout,
            ),
            tls_server: tls::ca::server_config(Arc::clone(&self.ca))?,
            secrets: Arc::clone(&self.secrets),
            approvals: Arc::clone(&self.approvals),
            spend: Arc::clone(&rules.spend),
            observe: self.observe,
        };
        let ipv6 = listeners.transparent6.is_some();
        tasks.spawn(transparent::serve(listeners.transparent4, ctx.clone()));
        tasks.spawn(explicit::serve(listeners.explicit4, ctx.clone()));
        if let Some(l6) = listeners.transparent6 {
            tasks.spawn(transparent::serve(l6, ctx));
        }
        let dns_ctx = dns::server::DnsContext {
            policy: Arc::clone(&rules.policy),
            rules: Some(Arc::clone(&self.rules)),
            resolver: Arc::clone(&self.resolver),
            secrets: Arc::clone(&self.secrets),
            sink: self.sink.clone(),
            ipv6,
            observe: self.observe,
        };
        tasks.spawn(dns::server::serve_udp(listeners.dns_udp4, dns_ctx.clone()));
        tasks.spawn(dns::server::serve_tcp(listeners.dns_tcp4, dns_ctx.clone()));
        if let (Some(u), Some(t)) = (listeners.dns_udp6, listeners.dns_tcp6) {
            tasks.spawn(dns::server::serve_udp(u, dns_ctx.clone()));
            tasks.spawn(dns::server::serve_tcp(t, dns_ctx));
        }
        let control_path = crate::control::socket_path(runs_dir, &self.id);
        let control = crate::control::server::ControlSocket::bind(&control_path)
            .map_err(RunError::Control)?;
        tasks.spawn(control.serve(crate::control::server::ControlContext {
            run_id: self.id.clone(),
            name: rules.policy.run.name.clone(),
            secrets: Arc::clone(&self.secrets),
            sink: self.sink.clone(),
            agent_pid: Arc::clone(&self.agent_pid),
            audit_db: self.audit_db.clone(),
            approvals: Arc::clone(&self.approvals),
            rules: Arc::clone(&self.rules),
        }));
        Ok(())
    }

    /// Records what the kernel (or the seccomp supervisor) refused, as this
    /// run's decision.
    pub fn kernel_recorder(
        &self,
    ) -> impl Fn(crate::kernel::events::KernelEvent) + Clone + Send + Sync + 'static {
        let sink = self.sink.clone();
        let resolver = Arc::clone(&self.resolver);
        move |e| sink.record(&kernel_events::decision(&e, &resolver.names))
    }
}

/// How long the run's CA (and its leaves) stay valid: the policy's TTL, or a
/// day, plus an hour of slack.
pub fn ca_lifetime(policy: &Policy) -> Duration {
    policy.run.ttl.unwrap_or(Duration::from_secs(24 * 3600)) + Duration::from_secs(3600)
}
