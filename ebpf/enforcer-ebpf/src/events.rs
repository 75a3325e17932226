//! Reporting refusals to userspace through the EVENTS ring buffer.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid,
};
use enforcer_common::{Event, Reason, counters};

use crate::maps::{EVENTS, bump};

/// What a refusal was about; the task fields are filled in by [`report`].
pub struct Refusal {
    pub reason: Reason,
    pub family: u16,
    pub port: u16,
    pub sock_type: u32,
    pub protocol: u32,
    pub addr: [u8; 16],
}

impl Refusal {
    pub const fn new(reason: Reason) -> Self {
        Self {
            reason,
            family: 0,
            port: 0,
            sock_type: 0,
            protocol: 0,
            addr: [0; 16],
        }
    }
}

/// Sends a refusal made in task context (the caller's pid, uid and comm are known).
#[inline(always)]
pub fn report(refusal: &Refusal) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let uid = bpf_get_current_uid_gid() as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: the helper has no arguments and no side effects.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    send(refusal, pid, uid, comm, cgroup);
}

/// Sends a refusal made without a task (packet hooks): only the socket's
/// uid and cgroup are known.
#[inline(always)]
pub fn report_packet(refusal: &Refusal, uid: u32, cgroup: u64) {
    send(refusal, 0, uid, [0; 16], cgroup);
}

#[inline(always)]
fn send(refusal: &Refusal, pid: u32, uid: u32, comm: [u8; 16], cgroup: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counters::EVENTS_LOST);
        return;
    };
    let event = Event {
        reason: refusal.reason as u32,
        pid,
        uid,
        family: refusal.family,
        port: refusal.port,
        sock_type: refusal.sock_type,
        protocol: refusal.protocol,
        addr: refusal.addr,
        comm,
        cgroup,
    };
    entry.write(event);
    entry.submit(0);
}
