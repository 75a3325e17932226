//! What the kernel (or the seccomp supervisor) refused, turned into the
//! run's decisions: benign probes told apart from real refusals.

use crate::{
    decision::{Cause, Decision, Layer},
    kernel::events::{self, KernelEvent},
};

/// Reads the kernel's refusal reports until the task is aborted.
pub async fn pump(ring: aya::maps::RingBuf<aya::maps::MapData>, record: impl FnMut(KernelEvent)) {
    if let Err(e) = events::pump(ring, record).await {
        tracing::warn!("reading kernel refusal reports failed: {e}");
    }
}

/// `socket()` type bits of glibc's nscd client: SOCK_STREAM | SOCK_NONBLOCK
/// | SOCK_CLOEXEC.
const NSCD_SOCKET_TYPE: u32 = 1 | 0o4000 | 0o2000000;

/// The decision for a refusal the kernel (or the seccomp supervisor)
/// reported. Two are benign probes, refused all the same but neither
/// counted nor printed (the audit log keeps them, as `benign-probe`):
/// getaddrinfo's UDP `connect()` to an address the resolver handed out (it
/// sorts addresses that way; no datagram follows), and a unix stream socket
/// created with exactly glibc's nscd flags when the policy lists no unix
/// socket (every name lookup of a glibc program tries nscd first).
pub fn decision(e: &KernelEvent, names: &crate::dns::names::NameMap) -> Decision {
    let unix_refused = e.reason_code == enforcer_common::Reason::UnixPathRefused as u32;
    let reason = if unix_refused && e.path.is_none() {
        // socket() or socketpair(): a datagram type, or any unix socket
        // when none is listed.
        match e.sock_type & 0xf {
            1 | 5 => "unix sockets are refused: the policy lists none ([local] unix_sockets)",
            _ => "unix datagram sockets are refused (where each datagram goes cannot be checked)",
        }
    } else {
        e.reason
    };
    let sort_probe = e.reason_code == enforcer_common::Reason::UdpRefused as u32
        && e.addr.is_some_and(|a| names.name_for(a).is_some());
    let nscd_probe = unix_refused
        && e.path.is_none()
        && e.family == "unix"
        && e.sock_type == NSCD_SOCKET_TYPE
        && e.protocol == 0;
    let (cause, reason) = if sort_probe {
        (
            Cause::BenignProbe,
            "getaddrinfo's UDP connect() to sort the addresses the resolver gave (refused; no datagram is sent)",
        )
    } else if nscd_probe {
        (
            Cause::BenignProbe,
            "a unix stream socket with glibc's nscd flags (its name-service cache probe; refused)",
        )
    } else {
        (Cause::Kernel, reason)
    };
    let mut d = Decision::new(Layer::Kernel, cause, reason).process(e.pid, e.comm.clone());
    if let Some(a) = e.addr {
        d = d.host(a.to_string());
        if e.port != 0 {
            d = d.port(e.port);
        }
    } else if let Some(p) = &e.path {
        d = d.host(format!("unix:{p}"));
    } else if e.reason_code == enforcer_common::Reason::TerminalInjectionRefused as u32 {
        d = d.host("terminal");
    } else if !e.family.is_empty() {
        d = d.host(format!("{} socket", e.family));
    }
    d
}
