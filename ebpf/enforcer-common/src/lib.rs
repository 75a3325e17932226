//! Types shared by the kernel programs and userspace: map keys and values,
//! refusal events and their reason codes. Everything is `#[repr(C)]`, fixed
//! size and free of padding surprises, because both sides read the same bytes.
#![no_std]

/// Address family numbers as the kernel uses them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Entries in the per-run socket tables. A full table refuses new sockets
/// (it never lets them through unrecorded).
pub const SOCKET_TABLE_ENTRIES: u32 = 65_536;
/// Entries in the list of loopback ports the policy opens.
pub const LOOPBACK_PORT_ENTRIES: u32 = 256;
/// Runs one set of programs can serve (one cgroup each).
pub const RUN_ENTRIES: u32 = 4096;
/// Size of the refusal ring buffer in bytes (a power of two, page aligned).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Names of the programs in the object; userspace attaches them by these.
pub mod programs {
    pub const CONNECT4: &str = "enforcer_connect4";
    pub const CONNECT6: &str = "enforcer_connect6";
    pub const SENDMSG4: &str = "enforcer_sendmsg4";
    pub const SENDMSG6: &str = "enforcer_sendmsg6";
    pub const RECVMSG4: &str = "enforcer_recvmsg4";
    pub const RECVMSG6: &str = "enforcer_recvmsg6";
    pub const GETPEERNAME4: &str = "enforcer_getpeername4";
    pub const GETPEERNAME6: &str = "enforcer_getpeername6";
    pub const BIND4: &str = "enforcer_bind4";
    pub const BIND6: &str = "enforcer_bind6";
    pub const SOCK_CREATE: &str = "enforcer_sock_create";
    pub const SOCK_RELEASE: &str = "enforcer_sock_release";
    pub const SOCKOPS: &str = "enforcer_sockops";
    pub const SETSOCKOPT: &str = "enforcer_setsockopt";
    pub const EGRESS: &str = "enforcer_egress";
    pub const INGRESS: &str = "enforcer_ingress";
}

/// Names of the maps in the object.
pub mod maps {
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "ORIG_BY_TUPLE";
    pub const LOOPBACK_PORTS: &str = "LOOPBACK_PORTS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RUNS: &str = "RUNS";
}

/// A run's listeners, filed in RUNS under the id of the cgroup its
/// processes live in. A cgroup the programs cover that has no entry
/// reaches nothing: every connect, datagram and packet is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RunPorts {
    /// TCP port of the transparent proxy on 127.0.0.1.
    pub proxy4: u16,
    /// TCP port of the transparent proxy on ::1 (0: no IPv6 listener, IPv6 TCP is refused).
    pub proxy6: u16,
    /// UDP and TCP port of the resolver on 127.0.0.1.
    pub dns4: u16,
    /// UDP and TCP port of the resolver on ::1 (0: none).
    pub dns6: u16,
    /// TCP port of the explicit (HTTP_PROXY) listener on 127.0.0.1 (0: none).
    pub explicit4: u16,
    /// Zero (keeps the size a multiple of 4 with no implicit padding).
    pub pad: u16,
}

impl RunPorts {
    /// True when `port` is one of the run's own listeners.
    #[inline(always)]
    pub fn is_enforcer_port(&self, port: u16) -> bool {
        port != 0
            && (port == self.proxy4
                || port == self.proxy6
                || port == self.dns4
                || port == self.dns6
                || port == self.explicit4)
    }
}

/// Key of LOOPBACK_PORTS: a loopback TCP port one run's policy lists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LoopbackKey {
    /// The run's cgroup id.
    pub cgroup: u64,
    pub port: u16,
    /// Zero (explicit, so both sides hash the same bytes).
    pub pad: [u16; 3],
}

/// Indexes into the COUNTERS array map.
pub mod counters {
    /// Refusal events dropped because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 0;
    /// Sockets refused because a socket table was full.
    pub const TABLE_FULL: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// The destination a socket asked for before the kernel redirected it.
///
/// Addresses are stored as IPv6 in network byte order; IPv4 destinations are
/// stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so one type serves both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// IPv6 (or IPv4-mapped) address, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// Family the program saw (AF_INET or AF_INET6).
    pub family: u16,
    /// 1 for a TCP (stream) socket, 2 for UDP (datagram).
    pub sock_type: u32,
    /// Id of the cgroup of the process that connected (whose run's policy
    /// decides it).
    pub cgroup: u64,
}

/// What the kernel remembers about a redirected socket, keyed by its cookie:
/// where it wanted to go, and (once connected) its client end, so that
/// sock_release can also remove the proxy's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRecord {
    pub dst: OrigDst,
    pub client: TupleKey,
    /// 1 when `client` is filed in ORIG_BY_TUPLE.
    pub has_client: u32,
}

/// Key of the table the proxy reads: the client end of a redirected
/// connection as the proxy sees it from `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TupleKey {
    /// Client address (IPv6 or IPv4-mapped), network byte order.
    pub addr: [u8; 16],
    /// Client port, host byte order.
    pub port: u32,
}

/// Why the kernel refused something. Stable numbers: they reach the audit log.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// TCP/UDP connect to a loopback port the policy does not list.
    LoopbackPortNotListed = 1,
    /// UDP (other than DNS) to any destination.
    UdpRefused = 2,
    /// A socket type or protocol that is never allowed (raw, ping, MPTCP, SCTP...).
    SocketTypeRefused = 3,
    /// An address family that is never allowed (packet, XDP, vsock...).
    SocketFamilyRefused = 4,
    /// bind() to a non-loopback address or to one of the enforcer's ports.
    BindRefused = 5,
    /// setsockopt() of a source-routing option.
    SockoptRefused = 6,
    /// connect()/sendto() to a unix socket path the policy does not list.
    UnixPathRefused = 7,
    /// unshare()/clone() of a user namespace.
    UserNamespaceRefused = 8,
    /// A packet to a destination that is not an enforcer listener (backstop).
    EgressDropped = 9,
    /// A packet from a non-loopback source (backstop for listeners).
    IngressDropped = 10,
    /// A socket table was full; the socket was refused rather than let through.
    TableFull = 11,
    /// The connect used an address family or socket type the hooks do not redirect.
    ConnectRefused = 12,
    /// ioctl(TIOCSTI/TIOCLINUX): typing into a terminal (the user's shell).
    TerminalInjectionRefused = 13,
    /// The caller's cgroup is covered by the programs but has no run.
    NoRun = 14,
}

impl Reason {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::LoopbackPortNotListed,
            2 => Self::UdpRefused,
            3 => Self::SocketTypeRefused,
            4 => Self::SocketFamilyRefused,
            5 => Self::BindRefused,
            6 => Self::SockoptRefused,
            7 => Self::UnixPathRefused,
            8 => Self::UserNamespaceRefused,
            9 => Self::EgressDropped,
            10 => Self::IngressDropped,
            11 => Self::TableFull,
            12 => Self::ConnectRefused,
            13 => Self::TerminalInjectionRefused,
            14 => Self::NoRun,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoopbackPortNotListed => "loopback port not listed in policy",
            Self::UdpRefused => "UDP other than DNS is refused",
            Self::SocketTypeRefused => "socket type or protocol refused",
            Self::SocketFamilyRefused => "socket address family refused",
            Self::BindRefused => "bind to non-loopback address or enforcer port refused",
            Self::SockoptRefused => "source-routing socket option refused",
            Self::UnixPathRefused => "unix socket path not listed in policy",
            Self::UserNamespaceRefused => "user namespace creation refused",
            Self::EgressDropped => "egress packet dropped by backstop",
            Self::IngressDropped => "ingress packet from non-loopback source dropped",
            Self::TableFull => "socket table full, refused",
            Self::ConnectRefused => "connect refused",
            Self::TerminalInjectionRefused => "typing into a terminal (TIOCSTI/TIOCLINUX) refused",
            Self::NoRun => "the process's cgroup has no enforcer run: everything is refused",
        }
    }
}

/// One refusal, sent from the kernel to userspace through the EVENTS ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// A [`Reason`] number.
    pub reason: u32,
    /// Thread group id of the caller (0 when the hook runs without a task, e.g. packets).
    pub pid: u32,
    /// Real uid of the caller, or the socket owner's uid for packets.
    pub uid: u32,
    /// Address family involved (AF_INET, AF_INET6, AF_UNIX, or the refused family).
    pub family: u16,
    /// Destination or bound port (host byte order), 0 when not applicable.
    pub port: u16,
    /// Socket type (SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_RAW=3...) or setsockopt level.
    pub sock_type: u32,
    /// Protocol number, or setsockopt option name.
    pub protocol: u32,
    /// Destination (or bound) address, IPv6 or IPv4-mapped, network byte order.
    pub addr: [u8; 16],
    /// Command name of the caller, NUL padded.
    pub comm: [u8; 16],
    /// Cgroup id of the caller (for packets: of the sending socket), so a
    /// program set serving many runs can say whose refusal it was.
    pub cgroup: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and are valid for any bit pattern.
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::TupleKey {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::RunPorts {}
    unsafe impl aya::Pod for super::LoopbackKey {}
}

/// Builds the IPv4-mapped IPv6 form of an IPv4 address given in network order bytes.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
