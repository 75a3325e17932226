//! Reading and rewriting the address in a `bpf_sock_addr` context, and the
//! address classes the programs decide on.

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use enforcer_common::v4_mapped;

pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const DNS_PORT: u16 = 53;

const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[inline(always)]
fn ctx(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

/// Socket type (SOCK_STREAM, SOCK_DGRAM...).
#[inline(always)]
pub fn sock_type(c: &SockAddrContext) -> u32 {
    // SAFETY: the context pointer is valid for the program run.
    unsafe { core::ptr::read_volatile(&(*ctx(c)).type_) }
}

/// Socket protocol (IPPROTO_TCP, IPPROTO_UDP...).
#[inline(always)]
pub fn protocol(c: &SockAddrContext) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&(*ctx(c)).protocol) }
}

/// Port the caller passed, host byte order.
#[inline(always)]
pub fn user_port(c: &SockAddrContext) -> u16 {
    // SAFETY: as above.
    let raw = unsafe { core::ptr::read_volatile(&(*ctx(c)).user_port) };
    u16::from_be(raw as u16)
}

#[inline(always)]
pub fn set_user_port(c: &SockAddrContext, port: u16) {
    // SAFETY: as above; the verifier allows 4-byte stores to user_port.
    unsafe { core::ptr::write_volatile(&mut (*ctx(c)).user_port, port.to_be() as u32) };
}

/// IPv4 address the caller passed, as bytes in network order.
#[inline(always)]
pub fn user_ip4(c: &SockAddrContext) -> [u8; 4] {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&(*ctx(c)).user_ip4) }.to_ne_bytes()
}

#[inline(always)]
pub fn set_user_ip4(c: &SockAddrContext, ip: [u8; 4]) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut (*ctx(c)).user_ip4, u32::from_ne_bytes(ip)) };
}

/// IPv6 address the caller passed, as bytes in network order.
#[inline(always)]
pub fn user_ip6(c: &SockAddrContext) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: as above; each word is read with a 4-byte load.
        let w = unsafe { core::ptr::read_volatile(&(*ctx(c)).user_ip6[i]) }.to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}

#[inline(always)]
pub fn set_user_ip6(c: &SockAddrContext, ip: [u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let w = u32::from_ne_bytes([ip[i * 4], ip[i * 4 + 1], ip[i * 4 + 2], ip[i * 4 + 3]]);
        // SAFETY: as above; the verifier requires 4-byte stores to user_ip6.
        unsafe { core::ptr::write_volatile(&mut (*ctx(c)).user_ip6[i], w) };
        i += 1;
    }
}

/// 127.0.0.0/8 or 0.0.0.0 (which the kernel treats as "this host").
#[inline(always)]
pub fn is_loopback4(ip: [u8; 4]) -> bool {
    ip[0] == 127 || (ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0)
}

/// True for `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(ip: &[u8; 16]) -> bool {
    ip[0] == 0
        && ip[1] == 0
        && ip[2] == 0
        && ip[3] == 0
        && ip[4] == 0
        && ip[5] == 0
        && ip[6] == 0
        && ip[7] == 0
        && ip[8] == 0
        && ip[9] == 0
        && ip[10] == 0xff
        && ip[11] == 0xff
}

/// The IPv4 part of an IPv4-mapped address.
#[inline(always)]
pub fn mapped_v4(ip: &[u8; 16]) -> [u8; 4] {
    [ip[12], ip[13], ip[14], ip[15]]
}

/// `::1` or `::` (the unspecified address reaches this host).
#[inline(always)]
pub fn is_loopback6(ip: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 15 {
        if ip[i] != 0 {
            return false;
        }
        i += 1;
    }
    ip[15] == 0 || ip[15] == 1
}

pub const fn loopback4() -> [u8; 4] {
    LOOPBACK4
}

pub const fn loopback6() -> [u8; 16] {
    LOOPBACK6
}

pub const fn loopback4_mapped() -> [u8; 16] {
    v4_mapped(LOOPBACK4)
}

/// Cookie of the socket behind a sock_addr context.
#[inline(always)]
pub fn cookie(c: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(c.sock_addr.cast()) }
}
