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

/// What a run changes in its agent's environment: variables it sets
/// (proxy, trust bundle, placeholders, run id) and variables it removes.
pub struct Overrides {
    pub set: Vec<(String, String)>,
    pub unset: Vec<String>,
}

/// The run's part of the environment, without the user's identity (for
/// `enforcer exec`, whose unit already runs as its user).
pub fn overrides(
    run_id: &str,
    policy: &Policy,
    secrets: &Secrets,
    trust_env: &[(String, PathBuf)],
    explicit_port: u16,
) -> Overrides {
    let mut unset: Vec<String> = ["ALL_PROXY", "all_proxy"].map(String::from).to_vec();
    unset.extend(Secrets::hidden_vars(policy));
    let mut set = Vec::new();
    let proxy = format!("http://127.0.0.1:{explicit_port}");
    for k in PROXY_VARS {
        set.push((k.to_string(), proxy.clone()));
    }
    for k in NO_PROXY_VARS {
        set.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    for (k, v) in trust_env {
        set.push((k.clone(), v.display().to_string()));
    }
    set.push(("ENFORCER_RUN_ID".to_string(), run_id.to_string()));
    for (k, placeholder) in secrets.env() {
        set.push((k.to_string(), placeholder.to_string()));
    }
    Overrides { set, unset }
}

/// The agent's environment: `base` (the caller's), with the identity of
/// the target user, the explicit proxy, and the trust bundle that includes
/// the run's CA; no variable that names a secret keeps its real value.
pub fn build(
    a: &AgentEnv<'_>,
    base: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let o = overrides(a.run_id, a.policy, a.secrets, a.trust_env, a.explicit_port);
    let ours: std::collections::HashSet<&str> = o
        .set
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(o.unset.iter().map(String::as_str))
        .collect();
    let mut env: Vec<(OsString, OsString)> = base
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !matches!(k.as_ref(), "HOME" | "USER" | "LOGNAME" | "SHELL" | "MAIL")
                && !ours.contains(k.as_ref())
        })
        .collect();
    env.extend(o.set.into_iter().map(|(k, v)| (k.into(), v.into())));
    env.push(("HOME".into(), a.user.home.clone().into()));
    env.push(("USER".into(), a.user.name.clone().into()));
    env.push(("LOGNAME".into(), a.user.name.clone().into()));
    env.push(("SHELL".into(), a.user.shell.clone().into()));
    env
}
