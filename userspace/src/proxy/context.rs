//! What every connection handler of a run shares, and what is known about
//! one connection once its server name has been decided.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    approval::ApprovalHub,
    decision::{Cause, Decision, DecisionSink, Layer},
    dns::Resolver,
    policy::{ConnectionVerdict, Policy},
    secrets::Secrets,
};

use super::upstream::Upstream;

/// Where each accepted connection was headed: the kernel's table in a run,
/// a plain map in tests.
pub trait Destinations: Send + Sync {
    /// The destination the client at `peer` dialed, if it is one of ours.
    fn lookup(&self, peer: SocketAddr) -> Option<SocketAddr>;
}

impl Destinations for crate::kernel::origdst::OrigDstTable {
    fn lookup(&self, peer: SocketAddr) -> Option<SocketAddr> {
        crate::kernel::origdst::OrigDstTable::lookup(self, peer)
    }
}

/// Shared by every task of a run's proxy. Cheap to clone.
#[derive(Clone)]
pub struct ProxyContext {
    pub run_id: Arc<str>,
    /// The policy this request (or connection) is decided by: the one in
    /// force when it began ([`ProxyContext::current`]).
    pub policy: Arc<Policy>,
    /// Where the run's rules in force live (a daemon's reload swaps them);
    /// `None` when they never change.
    pub rules: Option<Arc<crate::run::live::LiveRules>>,
    pub origdst: Arc<dyn Destinations>,
    pub resolver: Arc<Resolver>,
    pub sink: DecisionSink,
    pub upstream: Upstream,
    /// Server side of interception (leaves minted by the run CA).
    pub tls_server: Arc<rustls::ServerConfig>,
    /// The run's credentials.
    pub secrets: Arc<Secrets>,
    /// Requests waiting for a human.
    pub approvals: Arc<ApprovalHub>,
    /// Spend caps, rate limits and the loop breaker.
    pub spend: Arc<crate::spend::SpendControl>,
    /// Observe mode: what the policy's rules refuse goes ahead, recorded as
    /// "would deny" (see [`super::observe`]).
    pub observe: bool,
}

impl ProxyContext {
    /// This context with the rules in force now: taken once per
    /// connection and once per request, so that no decision mixes two
    /// versions of the policy.
    #[must_use]
    pub fn current(&self) -> Self {
        let mut now = self.clone();
        if let Some(rules) = &self.rules {
            let r = rules.load();
            now.policy = Arc::clone(&r.policy);
            now.spend = Arc::clone(&r.spend);
        }
        now
    }

    /// The policy's verdict for a connection to `name:port`; in observe
    /// mode a refusal becomes an interception under no `[[host]]` entry
    /// ([`super::observe::OBSERVED`]), recorded as "would deny" when the
    /// connection is made ([`ProxyContext::record_interception`]).
    pub fn connection(&self, name: &str, port: u16) -> ConnectionVerdict {
        match self.policy.connection(name, port) {
            ConnectionVerdict::Refuse { .. } if self.observe => ConnectionVerdict::Intercept {
                host: super::observe::OBSERVED,
            },
            v => v,
        }
    }

    /// Records that a connection to `name:port` is intercepted under the
    /// `[[host]]` entry `host`: its requests are decided one by one.
    pub fn record_interception(&self, name: &str, port: u16, host: usize) {
        if host == super::observe::OBSERVED {
            let reason = match self.policy.connection(name, port) {
                ConnectionVerdict::Refuse { reason } => reason,
                _ => String::from("not allowed by the policy"),
            };
            self.sink.record(
                &Decision::new(
                    Layer::Connection,
                    Cause::WouldDeny,
                    format!("observe mode: would deny (not-in-policy): {reason}; intercepted"),
                )
                .host(name.to_string())
                .port(port),
            );
            return;
        }
        let entry = self.policy.hosts.get(host);
        self.sink.record(
            &Decision::new(
                Layer::Connection,
                Cause::Intercepted,
                "intercepted: requests are checked one by one",
            )
            .host(name.to_string())
            .port(port)
            .rule(
                format!("host {}", entry.map_or("?", |h| h.name.as_str())),
                entry.map(|h| h.line),
            ),
        );
    }
}

/// How the agent reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Redirected by the kernel.
    Transparent,
    /// Through HTTP_PROXY / HTTPS_PROXY.
    Explicit,
}

/// One intercepted connection: the name decisions are made on (TLS server
/// name, Host, or CONNECT authority), and the `[[host]]` entry governing it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub name: String,
    pub port: u16,
    pub tls: bool,
    pub host: usize,
    pub via: Via,
    pub peer: SocketAddr,
}

impl Conn {
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `name` or `name:port` when the port is not the scheme's default.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}
