//! The agent's environment: the caller's, with the identity of the target
//! user, the explicit proxy, the trust bundle that includes the run's CA,
//! and the placeholders in place of every real credential.

use std::{ffi::OsString, path::PathBuf};

use crate::{launch::target_user::TargetUser, policy::Policy, secrets::Secrets};

/// Proxy variables, upper and lower case (clients disagree on which they read).
const PROXY_VARS: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];
const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy"];

/// What the agent's environment is made from.
pub struct AgentEnv<'a> {
    pub run_id: &'a str,
    pub policy: &'a Policy,
    pub secrets: &'a Secrets,
    /// The trust variables (SSL_CERT_FILE and the like) and their bundle.
    pub trust_env: &'a [(String, PathBuf)],
    pub user: &'a TargetUser,
    /// The explicit proxy's port on 127.0.0.1.
    pub explicit_port: u16,
}

/// The agent's environment: `base` (the caller's), with the identity of
/// the target user, the explicit proxy, and the trust bundle that includes
/// the run's CA; no variable that names a secret keeps its real value.
pub fn build(
    a: &AgentEnv<'_>,
    base: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let ours: std::collections::HashSet<String> = a
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
        // A secret's real value never reaches the agent, whatever it is called.
        .chain(Secrets::hidden_vars(a.policy))
        .collect();
    let mut env: Vec<(OsString, OsString)> = base
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !matches!(k.as_ref(), "HOME" | "USER" | "LOGNAME" | "SHELL" | "MAIL")
                && !ours.contains(k.as_ref())
        })
        .collect();
    let proxy = format!("http://127.0.0.1:{}", a.explicit_port);
    for k in PROXY_VARS {
        env.push((k.into(), proxy.clone().into()));
    }
    for k in NO_PROXY_VARS {
        env.push((k.into(), "localhost,127.0.0.1,::1".into()));
    }
    for (k, v) in a.trust_env {
        env.push((k.into(), v.clone().into()));
    }
    env.push(("HOME".into(), a.user.home.clone().into()));
    env.push(("USER".into(), a.user.name.clone().into()));
    env.push(("LOGNAME".into(), a.user.name.clone().into()));
    env.push(("SHELL".into(), a.user.shell.clone().into()));
    env.push(("ENFORCER_RUN_ID".into(), a.run_id.to_string().into()));
    for (k, placeholder) in a.secrets.env() {
        env.push((k.into(), placeholder.into()));
    }
    env
}
