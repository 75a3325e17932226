//! Credentials: the agent holds placeholders; the real values, read by the
//! enforcer as root before the agent exists, are swapped in only on
//! intercepted requests to the hosts each secret is bound to, after policy
//! passes, and only while the run's credentials are live (not expired, not
//! revoked). A placeholder seen anywhere else is an exfiltration attempt.

pub mod basic;
pub mod decode;
pub mod inject;
pub mod matcher;
pub mod placeholder;
pub mod private;
pub mod redact;
pub mod scan;
pub mod source;
pub mod variants;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use zeroize::Zeroizing;

use crate::policy::{Injection, Policy, SecretSource};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {name}: environment variable {var} is not set for enforcer. sudo resets the \
         environment: pass it with `sudo --preserve-env={var} enforcer ...`, or better, keep the \
         key in a root-only file and use `from = \"file:/path\"`"
    )]
    MissingEnv { name: String, var: String },
    #[error("secret {name}: cannot read {path}: {source}")]
    File {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "secret {name}: `credential:{credential}` needs $CREDENTIALS_DIRECTORY, which systemd \
         sets only for a service with `LoadCredential={credential}:/path/to/key` (enforcer.service; \
         never an agent's unit): run enforcer as that service, or use `file:/path`"
    )]
    NoCredentialsDirectory { name: String, credential: String },
    #[error(
        "secret {name}: enforcer's service has no credential {credential} ({path}: {source}); add \
         `LoadCredential={credential}:/path/to/key` to enforcer.service"
    )]
    Credential {
        name: String,
        credential: String,
        path: String,
        source: std::io::Error,
    },
    #[error("secret {name}: the value from {from} is empty")]
    Empty { name: String, from: String },
    #[error(
        "secret {name}: the value from {from} contains a control character (newline, NUL...): \
         refusing to put it in HTTP headers"
    )]
    ControlCharacter { name: String, from: String },
    #[error("secret {name}: the value from {from} is longer than {max} bytes")]
    TooLong {
        name: String,
        from: String,
        max: usize,
    },
    #[error("secret {name}: refusing {path}: {why}")]
    Exposed {
        name: String,
        path: String,
        why: String,
    },
}

/// Longest secret value accepted.
pub const MAX_SECRET: usize = 8 * 1024;

/// One secret of the run.
pub struct Secret {
    /// The environment variable the agent sees.
    pub name: String,
    /// What the agent holds instead of the value.
    pub placeholder: String,
    value: Zeroizing<String>,
    /// Index of its `[[secret]]` in the policy.
    pub spec: usize,
    pub injection: Injection,
    /// The encodings of the value that responses must not echo.
    cores: redact::CoreCache,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl Secret {
    /// The real value. Never log it, never write it anywhere but upstream.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Whether the run's credentials may be used right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Live,
    Expired,
    Revoked,
}

impl Access {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Live => "credentials live",
            Self::Expired => "credentials expired: the run's TTL has passed",
            Self::Revoked => "credentials revoked (enforcer revoke)",
        }
    }
}

/// The run's secrets and the state of its credentials.
#[derive(Debug)]
pub struct Secrets {
    list: Vec<Secret>,
    started: Instant,
    ttl: Option<Duration>,
    revoked: AtomicBool,
    revoked_at: std::sync::Mutex<Option<SystemTime>>,
}

impl Secrets {
    /// Reads every `[[secret]]` of the policy (as root, before the agent
    /// exists) and makes its placeholder. Any missing or unreadable source
    /// is an error: the run does not start.
    pub fn load(policy: &Policy, ttl: Option<Duration>) -> Result<Self, SecretError> {
        let mut list = Vec::with_capacity(policy.secrets.len());
        for (i, spec) in policy.secrets.iter().enumerate() {
            let value = source::read(&spec.name, &spec.from)?;
            let placeholder = placeholder::generate(&value, spec.placeholder_prefix.as_deref());
            list.push(Secret {
                name: spec.name.clone(),
                placeholder,
                value,
                spec: i,
                injection: spec.injection.clone(),
                cores: redact::CoreCache::default(),
            });
        }
        Ok(Self {
            list,
            started: Instant::now(),
            ttl,
            revoked: AtomicBool::new(false),
            revoked_at: std::sync::Mutex::new(None),
        })
    }

    /// Secrets with these values (in the policy's order), for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(policy: &Policy, values: &[&str]) -> Self {
        let list = policy
            .secrets
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (spec, v))| Secret {
                name: spec.name.clone(),
                placeholder: placeholder::generate(v, spec.placeholder_prefix.as_deref()),
                value: Zeroizing::new((*v).to_string()),
                spec: i,
                injection: spec.injection.clone(),
                cores: redact::CoreCache::default(),
            })
            .collect();
        Self {
            list,
            started: Instant::now(),
            ttl: None,
            revoked: AtomicBool::new(false),
            revoked_at: std::sync::Mutex::new(None),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.list.iter()
    }

    /// `NAME=placeholder` for the agent's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        self.list
            .iter()
            .map(|s| (s.name.clone(), s.placeholder.clone()))
            .collect()
    }

    /// Variables that must not reach the agent: each secret's name (it gets
    /// the placeholder instead) and every `env:` source.
    pub fn hidden_vars(policy: &Policy) -> Vec<String> {
        let mut v: Vec<String> = policy.secrets.iter().map(|s| s.name.clone()).collect();
        v.extend(policy.secrets.iter().filter_map(|s| match &s.from {
            SecretSource::Env(var) => Some(var.clone()),
            SecretSource::File(_) => None,
            SecretSource::Credential(_) => Some(String::from(source::CREDENTIALS_DIRECTORY)),
        }));
        v.dedup();
        v
    }

    /// Live, expired or revoked, right now.
    pub fn access(&self) -> Access {
        if self.revoked.load(Ordering::SeqCst) {
            return Access::Revoked;
        }
        match self.ttl {
            Some(ttl) if self.started.elapsed() >= ttl => Access::Expired,
            _ => Access::Live,
        }
    }

    /// Time left before expiry (None: no TTL).
    pub fn ttl_left(&self) -> Option<Duration> {
        self.ttl.map(|t| t.saturating_sub(self.started.elapsed()))
    }

    /// Stops every further use of the credentials; returns false if already revoked.
    pub fn revoke(&self) -> bool {
        let first = !self.revoked.swap(true, Ordering::SeqCst);
        if first && let Ok(mut at) = self.revoked_at.lock() {
            *at = Some(SystemTime::now());
        }
        first
    }

    pub fn revoked_at(&self) -> Option<SystemTime> {
        self.revoked_at.lock().ok().and_then(|a| *a)
    }

    /// `text` with every placeholder shown as `<NAME>` (for people: the
    /// approval prompt, previews).
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.list {
            if out.contains(&s.placeholder) {
                out = out.replace(&s.placeholder, &format!("<{}>", s.name));
            }
        }
        out
    }

    /// Longest placeholder (for streaming scans).
    pub fn longest_placeholder(&self) -> usize {
        self.list
            .iter()
            .map(|s| s.placeholder.len())
            .max()
            .unwrap_or(0)
    }
}
