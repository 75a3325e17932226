//! A run's rules as they are now: its policy and the spend state built for
//! it, swapped as one when the daemon reloads its policies and read once per
//! request (or DNS query), so that no decision mixes two versions.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{policy::Policy, spend::SpendControl};

/// One version of a run's rules.
pub struct Rules {
    pub policy: Arc<Policy>,
    pub spend: Arc<SpendControl>,
}

/// The version in force; readers never wait on a reload.
pub struct LiveRules {
    now: ArcSwap<Rules>,
}

impl LiveRules {
    pub fn new(policy: Arc<Policy>, spend: Arc<SpendControl>) -> Self {
        Self {
            now: ArcSwap::from_pointee(Rules { policy, spend }),
        }
    }

    /// The rules in force now.
    pub fn load(&self) -> Arc<Rules> {
        self.now.load_full()
    }

    /// Puts `rules` in force for every later request.
    pub fn store(&self, rules: Rules) {
        self.now.store(Arc::new(rules));
    }
}
