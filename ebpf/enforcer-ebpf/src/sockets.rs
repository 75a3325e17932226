//! Socket lifecycle hooks: which inet sockets may exist (sock_create), the
//! bookkeeping that lets the proxy find a redirected connection's destination
//! (sockops, sock_release), and refused socket options (setsockopt).

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    macros::{cgroup_sock, cgroup_sockopt, sock_ops},
    programs::{SockContext, SockOpsContext, SockoptContext},
};
use enforcer_common::{AF_INET, AF_INET6, Reason, TupleKey, v4_mapped};

use crate::{
    events::{Refusal, report},
    maps::{ORIG_BY_COOKIE, ORIG_BY_TUPLE},
    sockaddr::{IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM},
};

const SOL_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const SOL_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_RTHDR: i32 = 57;

/// Only TCP and UDP sockets may be created: no raw sockets, no ICMP ping
/// sockets, no MPTCP, SCTP, UDP-Lite or anything else.
#[cgroup_sock(sock_create)]
pub fn enforcer_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program run.
    let (family, sock_type, protocol) = unsafe {
        let s = &*ctx.sock;
        (s.family, s.type_, s.protocol)
    };
    let tcp = sock_type == SOCK_STREAM && protocol == IPPROTO_TCP;
    let udp = sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP;
    if tcp || udp {
        return 1;
    }
    let mut r = Refusal::new(Reason::SocketTypeRefused);
    r.family = family as u16;
    r.sock_type = sock_type;
    r.protocol = protocol;
    report(&r);
    0
}

/// Forgets a socket's recorded destination, and the proxy's entry for it,
/// when the socket is released.
#[cgroup_sock(sock_release)]
pub fn enforcer_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: bpf_get_socket_cookie accepts a sock context.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: plain read of a map value.
    if let Some(record) = unsafe { ORIG_BY_COOKIE.get(cookie) }
        && record.has_client != 0
    {
        let _ = ORIG_BY_TUPLE.remove(record.client);
    }
    let _ = ORIG_BY_COOKIE.remove(cookie);
    1
}

/// The key the proxy will use for the client end (address, port) of a connection.
#[inline(always)]
fn tuple_key(family: u32, ip4: u32, ip6: [u32; 4], port: u32) -> Option<TupleKey> {
    let addr = if family == AF_INET as u32 {
        v4_mapped(ip4.to_ne_bytes())
    } else if family == AF_INET6 as u32 {
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = ip6[i].to_ne_bytes();
            a[i * 4] = w[0];
            a[i * 4 + 1] = w[1];
            a[i * 4 + 2] = w[2];
            a[i * 4 + 3] = w[3];
            i += 1;
        }
        a
    } else {
        return None;
    };
    Some(TupleKey { addr, port })
}

/// When a redirected connection is established, files its destination under
/// the client's (address, port) so the proxy can find it after accept().
#[sock_ops]
pub fn enforcer_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: bpf_get_socket_cookie accepts a sock_ops context.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(record) = ORIG_BY_COOKIE.get_ptr_mut(cookie) else {
        return 1;
    };
    // Every context field is read with its own 4-byte volatile load: the
    // verifier rejects loads through a context pointer the compiler offset.
    let ops = ctx.ops;
    // SAFETY: the context pointer is valid for the program run.
    let (family, ip4, ip6, port) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_ip4),
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
            core::ptr::read_volatile(&(*ops).local_port),
        )
    };
    let Some(key) = tuple_key(family, ip4, ip6, port) else {
        return 1;
    };
    // SAFETY: the pointer is a live map value for this program run.
    let dst = unsafe { (*record).dst };
    // A full table leaves the connection without an entry: the proxy then refuses it.
    if ORIG_BY_TUPLE.insert(key, dst, 0).is_ok() {
        // SAFETY: as above.
        unsafe {
            (*record).client = key;
            (*record).has_client = 1;
        }
    }
    1
}

/// Refuses IP options and IPv6 routing headers (source routing).
#[cgroup_sockopt(setsockopt)]
pub fn enforcer_setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the context pointer is valid for the program run.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let refused = (level == SOL_IP && optname == IP_OPTIONS)
        || (level == SOL_IPV6 && (optname == IPV6_RTHDR || optname == IPV6_2292RTHDR));
    if !refused {
        return 1;
    }
    let mut r = Refusal::new(Reason::SockoptRefused);
    r.sock_type = level as u32;
    r.protocol = optname as u32;
    report(&r);
    0
}
