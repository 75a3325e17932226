//! A wildcard allow (`*.pypi.org`) must not become a DNS tunnel: each
//! wildcard gets a per-run budget of distinct names, and names under a
//! wildcard have bounded labels. The same check guards every name the
//! proxy resolves, so a connection with a made-up SNI cannot carry data out
//! through the enforcer's own lookups either.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

/// Limits for names that match only through a wildcard.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Distinct names per wildcard pattern per run.
    pub names_per_wildcard: usize,
    /// Longest label allowed below the wildcard's domain.
    pub max_label: usize,
    /// Most labels allowed below the wildcard's domain.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            names_per_wildcard: 64,
            max_label: 48,
            max_depth: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{name}: more than {limit} distinct names under {pattern} in this run (wildcard budget; possible DNS tunnel)"
    )]
    Exhausted {
        name: String,
        pattern: String,
        limit: usize,
    },
    #[error(
        "{name}: a label under {pattern} is longer than {limit} characters (possible DNS tunnel)"
    )]
    LongLabel {
        name: String,
        pattern: String,
        limit: usize,
    },
    #[error("{name}: more than {limit} labels under {pattern} (possible DNS tunnel)")]
    TooDeep {
        name: String,
        pattern: String,
        limit: usize,
    },
}

/// The budget of one run.
#[derive(Debug, Default)]
pub struct Budget {
    limits: Limits,
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `name` (normalized) matched by the wildcard `*.domain`
    /// (`pattern` is how the policy wrote it). Names already admitted pass.
    pub fn admit(&self, name: &str, pattern: &str, domain: &str) -> Result<(), BudgetError> {
        let below = name
            .strip_suffix(domain)
            .and_then(|p| p.strip_suffix('.'))
            .unwrap_or(name);
        let labels: Vec<&str> = below.split('.').collect();
        if labels.len() > self.limits.max_depth {
            return Err(BudgetError::TooDeep {
                name: name.into(),
                pattern: pattern.into(),
                limit: self.limits.max_depth,
            });
        }
        if labels.iter().any(|l| l.len() > self.limits.max_label) {
            return Err(BudgetError::LongLabel {
                name: name.into(),
                pattern: pattern.into(),
                limit: self.limits.max_label,
            });
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let names = seen.entry(pattern.to_string()).or_default();
        if names.contains(name) {
            return Ok(());
        }
        if names.len() >= self.limits.names_per_wildcard {
            return Err(BudgetError::Exhausted {
                name: name.into(),
                pattern: pattern.into(),
                limit: self.limits.names_per_wildcard,
            });
        }
        names.insert(name.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_distinct_names_per_wildcard() {
        let b = Budget::new(Limits {
            names_per_wildcard: 3,
            ..Limits::default()
        });
        for n in ["a.pypi.org", "b.pypi.org", "c.pypi.org", "a.pypi.org"] {
            assert!(b.admit(n, "*.pypi.org", "pypi.org").is_ok(), "{n}");
        }
        assert!(matches!(
            b.admit("d.pypi.org", "*.pypi.org", "pypi.org"),
            Err(BudgetError::Exhausted { limit: 3, .. })
        ));
        // Names already admitted stay admitted; other wildcards have their own budget.
        assert!(b.admit("b.pypi.org", "*.pypi.org", "pypi.org").is_ok());
        assert!(
            b.admit("x.example.com", "*.example.com", "example.com")
                .is_ok()
        );
    }

    #[test]
    fn long_labels_and_deep_names_are_refused() {
        let b = Budget::new(Limits::default());
        let long = format!("{}.pypi.org", "a".repeat(49));
        assert!(matches!(
            b.admit(&long, "*.pypi.org", "pypi.org"),
            Err(BudgetError::LongLabel { .. })
        ));
        let ok = format!("{}.pypi.org", "a".repeat(48));
        assert!(b.admit(&ok, "*.pypi.org", "pypi.org").is_ok());
        assert!(matches!(
            b.admit("a.b.c.d.e.pypi.org", "*.pypi.org", "pypi.org"),
            Err(BudgetError::TooDeep { .. })
        ));
        // Refused names do not use up the budget.
        assert_eq!(
            b.seen.lock().unwrap().get("*.pypi.org").map(HashSet::len),
            Some(1)
        );
    }
}
