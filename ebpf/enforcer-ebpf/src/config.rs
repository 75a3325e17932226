//! Which run a hook serves: the caller's cgroup id, looked up in RUNS. The
//! programs are attached once to a parent cgroup and serve every run below
//! it; a cgroup without an entry reaches nothing.

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use enforcer_common::RunPorts;

use crate::maps::RUNS;

/// A run as the hooks see it: its cgroup id and its listeners.
#[derive(Clone, Copy)]
pub struct Run {
    pub cgroup: u64,
    pub ports: RunPorts,
}

/// The run of the cgroup `cgroup`, if it has one.
#[inline(always)]
pub fn run_of(cgroup: u64) -> Option<Run> {
    // SAFETY: plain read of a map value, copied out.
    let ports = unsafe { RUNS.get(cgroup) }.copied()?;
    Some(Run { cgroup, ports })
}

/// The run of the calling task (hooks that run in its context).
#[inline(always)]
pub fn current_run() -> Option<Run> {
    // SAFETY: the helper has no arguments and no side effects.
    run_of(unsafe { bpf_get_current_cgroup_id() })
}
