//! `enforcer daemon`: one process that governs every agent unit in a
//! systemd slice. Its programs are attached once to the slice's cgroup; each
//! unit that starts through `enforcer exec` gets a run of its own (see
//! `crate::run`), decided by the policy its unit name maps to. A cgroup in
//! the slice without a run reaches nothing.

pub mod config;
pub mod peer;
