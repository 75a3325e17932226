//! `/etc/enforcer/enforcer.toml`: which cgroup the daemon governs, where it
//! audits, and which policy each unit gets (unit name patterns, first match
//! wins). Errors name the file and line, as policy errors do.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::policy::{Policy, PolicyError, diagnostics::Diagnostics};

/// Where the daemon's configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/enforcer/enforcer.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    slice: Spanned<String>,
    audit_db: Option<PathBuf>,
    approvals: Option<RawApprovals>,
    #[serde(default)]
    unit: Vec<Spanned<RawUnit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    webhook: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    policy: Spanned<PathBuf>,
}

/// One mapping: units whose name matches `pattern` run under `policy`.
#[derive(Debug)]
pub struct UnitPolicy {
    pub pattern: String,
    matcher: globset::GlobMatcher,
    pub policy: std::sync::Arc<Policy>,
    /// 1-based line of the `[[unit]]` entry.
    pub line: usize,
}

/// The daemon's configuration, with every policy it names loaded and
/// checked.
#[derive(Debug)]
pub struct DaemonConfig {
    pub source: PathBuf,
    /// The governed cgroup, relative to the cgroup2 mount (`agents.slice`).
    pub slice: PathBuf,
    /// The audit database (default: the same as `launch`'s).
    pub audit_db: PathBuf,
    /// Where a notice goes when a request starts waiting for approval.
    pub webhook: Option<String>,
    pub units: Vec<UnitPolicy>,
}

impl DaemonConfig {
    /// Reads and checks `path` and every policy it names. Policy paths are
    /// relative to the configuration's directory.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::whole_file(path, format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| PolicyError::from_toml(&e, text, path))?;
        let mut d = Diagnostics::new(text, path);
        let slice = check_slice(&raw.slice, &mut d);
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut units = Vec::new();
        for u in &raw.unit {
            let u_span = u.span();
            let u = u.get_ref();
            let matcher = match globset::Glob::new(u.pattern.get_ref()) {
                Ok(g) => Some(g.compile_matcher()),
                Err(e) => {
                    d.error(u.pattern.span(), format!("not a unit name pattern: {e}"));
                    None
                }
            };
            let policy_path = base.join(u.policy.get_ref());
            let policy = match Policy::load(&policy_path) {
                Ok(p) if !p.local.unix_sockets.is_empty() => {
                    d.error(
                        u.policy.span(),
                        "its policy lists unix sockets ([local] unix_sockets), which units \
                         started by `enforcer exec` cannot use yet",
                    );
                    None
                }
                Ok(p) => Some(p),
                Err(e) => {
                    // One line here (a message is one line); the policy's
                    // own report has every problem with its carets.
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    let more = e.problems.len().saturating_sub(1);
                    d.error(
                        u.policy.span(),
                        format!(
                            "its policy does not load: {first}{} (`enforcer policy check {}` \
                             shows everything)",
                            if more > 0 {
                                format!(" and {more} more problem(s)")
                            } else {
                                String::new()
                            },
                            policy_path.display()
                        ),
                    );
                    None
                }
            };
            if let (Some(matcher), Some(policy)) = (matcher, policy) {
                units.push(UnitPolicy {
                    pattern: u.pattern.get_ref().clone(),
                    matcher,
                    policy: std::sync::Arc::new(policy),
                    line: d.line(u_span.start),
                });
            }
        }
        let webhook = raw.approvals.and_then(|a| a.webhook).and_then(|w| {
            match crate::approval::webhook::check_url(w.get_ref()) {
                Ok(()) => Some(w.get_ref().clone()),
                Err(e) => {
                    d.error(w.span(), e.to_string());
                    None
                }
            }
        });
        if raw.unit.is_empty() {
            d.error_unlocated(
                "no [[unit]] entry: every unit in the slice would be refused everything",
            );
        }
        d.finish(Self {
            source: path.to_path_buf(),
            slice,
            audit_db: raw
                .audit_db
                .unwrap_or_else(|| PathBuf::from(crate::audit::DEFAULT_PATH)),
            webhook,
            units,
        })
    }

    /// The policy for the unit `unit` (a cgroup directory name such as
    /// `billing-agent.service`): the first entry whose pattern matches.
    pub fn policy_for(&self, unit: &str) -> Option<&UnitPolicy> {
        self.units.iter().find(|u| u.matcher.is_match(unit))
    }
}

/// The slice must be a plain relative cgroup path below the cgroup2 root.
fn check_slice(slice: &Spanned<String>, d: &mut Diagnostics<'_>) -> PathBuf {
    let text = slice.get_ref();
    let span: Range<usize> = slice.span();
    let path = PathBuf::from(text.trim_start_matches('/'));
    let plain = !text.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        d.error(
            span,
            "slice must be a cgroup below the cgroup2 root, such as \"agents.slice\" (no `..`, not the root)",
        );
    }
    // One spelling per cgroup (`a.slice/` and `a.slice/.` are `a.slice`):
    // the daemon's lock and pins are named after it.
    normal_slice(&path)
}

/// `slice` without a leading `/`, `.` components or a trailing `/`.
pub fn normal_slice(slice: &Path) -> PathBuf {
    slice
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(policy: &str) -> tempfile_dir::Dir {
        let d = tempfile_dir::Dir::new();
        std::fs::write(d.path().join("billing.toml"), policy).expect("write policy");
        d
    }

    mod tempfile_dir {
        /// A scratch directory removed on drop.
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "enforcer-daemon-config-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).expect("mkdir");
                Self(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const POLICY: &str = "[run]\nname = \"billing\"\n";

    #[test]
    fn units_map_to_policies_first_match_wins() {
        let d = dir_with(POLICY);
        std::fs::write(d.path().join("other.toml"), "[run]\nname = \"other\"\n").expect("write");
        let cfg = DaemonConfig::parse(
            "slice = \"agents.slice\"\n\
             [[unit]]\nmatch = \"billing-*.service\"\npolicy = \"billing.toml\"\n\
             [[unit]]\nmatch = \"*.service\"\npolicy = \"other.toml\"\n",
            &d.path().join("enforcer.toml"),
        )
        .expect("valid");
        assert_eq!(cfg.slice, PathBuf::from("agents.slice"));
        let billing = cfg.policy_for("billing-7.service").expect("match");
        assert_eq!(billing.policy.run.name, "billing");
        assert_eq!(billing.line, 2);
        let other = cfg.policy_for("mail.service").expect("match");
        assert_eq!(other.policy.run.name, "other");
        assert!(cfg.policy_for("billing-7.scope").is_none());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let d = dir_with("[run]\nnmae = 1\n");
        let path = d.path().join("enforcer.toml");
        let err = DaemonConfig::parse(
            "slice = \"../etc\"\n[[unit]]\nmatch = \"a[\"\npolicy = \"billing.toml\"\n",
            &path,
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("enforcer.toml:1:"), "{text}");
        assert!(text.contains("slice must be a cgroup below"), "{text}");
        assert!(text.contains("enforcer.toml:3:"), "{text}");
        assert!(text.contains("not a unit name pattern"), "{text}");
        assert!(text.contains("its policy does not load"), "{text}");
        assert!(
            text.contains("billing.toml:2:"),
            "the policy's own location: {text}"
        );
        assert!(!text.contains('\u{fffd}'), "no mangled newlines: {text}");
        let unix = dir_with("[local]\nunix_sockets = [\"/run/x.sock\"]\n");
        let err = DaemonConfig::parse(
            "slice = \"a.slice\"\n[[unit]]\nmatch = \"*\"\npolicy = \"billing.toml\"\n",
            &unix.path().join("enforcer.toml"),
        )
        .expect_err("unix sockets");
        assert!(err.to_string().contains("lists unix sockets"), "{err}");
        let same = dir_with(POLICY);
        let cfg = DaemonConfig::parse(
            "slice = \"/agents.slice/.\"\n[[unit]]\nmatch = \"*\"\npolicy = \"billing.toml\"\n",
            &same.path().join("enforcer.toml"),
        )
        .expect("valid");
        assert_eq!(cfg.slice, PathBuf::from("agents.slice"), "one spelling");
        let err = DaemonConfig::parse("slice = \"agents.slice\"\n", &path).expect_err("no units");
        assert!(err.to_string().contains("no [[unit]] entry"), "{err}");
        let err = DaemonConfig::parse("slice = \"a.slice\"\nslcie = 1\n", &path)
            .expect_err("unknown key");
        assert!(err.to_string().contains("enforcer.toml:2:"), "{err}");
    }
}
