//! The policy file: parsing (TOML with spans), validation, and the decisions
//! the rest of enforcer asks of it. Anything not named is denied.
//!
//! CONTRACT (used by launch, proxy and dns; keep these names and shapes):
//! - `Policy::load(path)` / `Policy::parse(text, path)` -> `Result<Policy, PolicyError>`
//! - `PolicyError` renders every problem as `file:line:col: message`, the
//!   offending source line with a caret, and what was expected.
//! - `Policy.run`, `Policy.local`, `Policy.tcp`, `Policy.hosts`, `Policy.secrets`
//! - `Policy::connection(name, port)`, `HostPolicy::decide(method, path)`,
//!   `Policy::tcp_rule(name_or_ip, port)`, `Policy::summary()`, `Policy::explain(method, url)`

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed and validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from (for messages and the audit log).
    pub source: PathBuf,
    pub run: RunSettings,
    pub local: LocalSettings,
    pub tcp: Vec<TcpRule>,
    pub hosts: Vec<HostPolicy>,
    pub secrets: Vec<SecretSpec>,
}

/// `[run]`
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// Defaults to the file stem.
    pub name: String,
    pub ttl: Option<Duration>,
    pub spend_cap_usd: Option<f64>,
}

/// `[local]`: what the run may reach on this host without the proxy.
#[derive(Debug, Clone, Default)]
pub struct LocalSettings {
    /// Loopback TCP ports the agent may connect to directly.
    pub loopback_ports: Vec<u16>,
    /// Unix socket paths the agent may connect to (absolute paths, or `@name` for abstract).
    pub unix_sockets: Vec<String>,
    /// Whether the agent may create user namespaces (default false).
    pub allow_user_namespaces: bool,
}

/// `[[tcp]]`: a raw TCP destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRule {
    /// A DNS name or an IP literal.
    pub host: String,
    pub port: u16,
}

/// `[[host]]`
#[derive(Debug, Clone)]
pub struct HostPolicy {
    pub name: String,
}

/// `[[secret]]`
#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{rendered}")]
pub struct PolicyError {
    pub rendered: String,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            rendered: format!("{}: cannot read policy file: {e}", path.display()),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(_text: &str, path: &Path) -> Result<Self, PolicyError> {
        Ok(Self {
            source: path.to_path_buf(),
            run: RunSettings::default(),
            local: LocalSettings::default(),
            tcp: Vec::new(),
            hosts: Vec::new(),
            secrets: Vec::new(),
        })
    }

    /// The `[[tcp]]` rule that allows `host` (a name or IP literal) on `port`.
    pub fn tcp_rule(&self, host: &str, port: u16) -> Option<&TcpRule> {
        self.tcp
            .iter()
            .find(|r| r.port == port && r.host.eq_ignore_ascii_case(host))
    }
}
