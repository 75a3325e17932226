//! Refusals reported by the kernel programs through the EVENTS ring buffer
//! (and by the seccomp supervisor), decoded for the decision sink.

use std::net::{IpAddr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{AF_INET, AF_INET6, Event, Reason};
use tokio::io::unix::AsyncFd;

/// One kernel refusal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelEvent {
    pub reason: &'static str,
    pub reason_code: u32,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub family: &'static str,
    pub sock_type: u32,
    pub protocol: u32,
    /// Destination (or bound / packet) address, when there is one.
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// Unix socket path, for refused unix connects (reported by the seccomp supervisor).
    pub path: Option<String>,
    /// The cgroup the refusal came from (0 when the seccomp supervisor reported it).
    pub cgroup: u64,
}

impl KernelEvent {
    pub fn decode(e: &Event) -> Self {
        let reason = Reason::from_u32(e.reason);
        let family = match e.family {
            AF_INET => "inet",
            AF_INET6 => "inet6",
            1 => "unix",
            17 => "packet",
            16 => "netlink",
            40 => "vsock",
            44 => "xdp",
            0 => "",
            _ => "other",
        };
        let addr = if e.family == AF_INET || e.family == AF_INET6 {
            let v6 = Ipv6Addr::from(e.addr);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) if e.family == AF_INET => IpAddr::V4(v4),
                _ => IpAddr::V6(v6),
            })
        } else {
            None
        };
        let comm_end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        Self {
            reason: reason.map_or("unknown", Reason::as_str),
            reason_code: e.reason,
            pid: e.pid,
            uid: e.uid,
            comm: String::from_utf8_lossy(&e.comm[..comm_end]).into_owned(),
            family,
            sock_type: e.sock_type,
            protocol: e.protocol,
            addr,
            port: e.port,
            path: None,
            cgroup: e.cgroup,
        }
    }

    /// A short description of what was refused, for logs and summaries.
    pub fn destination(&self) -> String {
        if let Some(p) = &self.path {
            return format!("unix:{p}");
        }
        match self.addr {
            Some(IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            Some(a) => format!("{a}:{}", self.port),
            None if !self.family.is_empty() => format!("{} socket", self.family),
            None => String::from("-"),
        }
    }
}

/// Reads the ring buffer as events arrive and hands each one to `sink`.
pub async fn pump(
    ring: RingBuf<MapData>,
    mut sink: impl FnMut(KernelEvent),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(ring) }?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the kernel wrote a whole Event; read_unaligned copes with any alignment.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                sink(KernelEvent::decode(&event));
            }
        }
        guard.clear_ready();
    }
}

/// Drains whatever is left in the ring buffer (at the end of a run).
pub fn drain(ring: &mut RingBuf<MapData>, mut sink: impl FnMut(KernelEvent)) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<Event>() {
            // SAFETY: as in `pump`.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            sink(KernelEvent::decode(&event));
        }
    }
}
