//! The packet backstop. Whatever the socket hooks miss, these drop: an
//! egress packet is let through only when it goes to loopback on one of the
//! enforcer's ports or a port the policy lists, and an ingress packet only
//! when it comes from loopback.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::{AF_INET, AF_INET6, Reason, v4_mapped};

use crate::{
    config::{Run, run_of},
    events::{Refusal, report_packet},
    maps::loopback_port_listed,
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// What the backstop needs to know about a packet.
struct Packet {
    family: u16,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// (source, destination) ports when the packet is TCP or UDP and not a later fragment.
    ports: Option<(u16, u16)>,
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    ctx.load::<T>(off).ok()
}

/// Parses the network header (cgroup_skb data starts at it), with as few
/// helper calls as possible: this runs for every packet of the run.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    if proto == ETH_P_IP {
        let h: [u8; 20] = load(ctx, 0)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        let l4 = h[9];
        let first_fragment = frag & 0x1fff == 0;
        let ports = if first_fragment && (l4 == PROTO_TCP || l4 == PROTO_UDP) {
            let p: [u8; 4] = load(ctx, ihl & 0x3c)?;
            Some((
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ))
        } else {
            None
        };
        return Some(Packet {
            family: AF_INET,
            proto: l4,
            src: v4_mapped([h[12], h[13], h[14], h[15]]),
            dst: v4_mapped([h[16], h[17], h[18], h[19]]),
            ports,
        });
    }
    if proto == ETH_P_IPV6 {
        let h: [u8; 44] = load(ctx, 0)?;
        let l4 = h[6];
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        // Extension headers are not walked: such packets get no ports and are dropped.
        let ports = if l4 == PROTO_TCP || l4 == PROTO_UDP {
            Some((
                u16::from_be_bytes([h[40], h[41]]),
                u16::from_be_bytes([h[42], h[43]]),
            ))
        } else {
            None
        };
        return Some(Packet {
            family: AF_INET6,
            proto: l4,
            src,
            dst,
            ports,
        });
    }
    None
}

/// 127.0.0.0/8 (as IPv4-mapped) or ::1.
#[inline(always)]
fn is_loopback(family: u16, a: &[u8; 16]) -> bool {
    if family == AF_INET {
        return a[12] == 127;
    }
    let mut i = 0;
    while i < 15 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[15] == 1
}

#[inline(always)]
fn port_open(run: &Run, port: u16) -> bool {
    run.ports.is_enforcer_port(port) || loopback_port_listed(run.cgroup, port)
}

/// The cgroup of the socket that sent the packet.
#[inline(always)]
fn skb_cgroup(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper reads the cgroup of the packet's socket.
    unsafe { aya_ebpf::helpers::bpf_skb_cgroup_id(ctx.skb.skb) }
}

/// The run of the socket that sent the packet (its cgroup's entry).
#[inline(always)]
fn packet_run(ctx: &SkBuffContext) -> Option<Run> {
    run_of(skb_cgroup(ctx))
}

#[inline(always)]
fn drop_packet(ctx: &SkBuffContext, reason: Reason, p: Option<&Packet>, addr_is_src: bool) -> i32 {
    let mut r = Refusal::new(reason);
    if let Some(p) = p {
        r.family = p.family;
        r.protocol = p.proto as u32;
        r.addr = if addr_is_src { p.src } else { p.dst };
        if let Some((sp, dp)) = p.ports {
            r.port = if addr_is_src { sp } else { dp };
        }
    }
    report_packet(&r, ctx.get_socket_uid(), skb_cgroup(ctx));
    DROP
}

#[cgroup_skb(egress)]
pub fn enforcer_egress(ctx: SkBuffContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return drop_packet(&ctx, Reason::EgressDropped, None, false);
    };
    if is_loopback(p.family, &p.dst)
        && let Some((sp, dp)) = p.ports
        && let Some(run) = packet_run(&ctx)
        && (port_open(&run, dp) || port_open(&run, sp))
    {
        return PASS;
    }
    drop_packet(&ctx, Reason::EgressDropped, Some(&p), false)
}

#[cgroup_skb(ingress)]
pub fn enforcer_ingress(ctx: SkBuffContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return drop_packet(&ctx, Reason::IngressDropped, None, true);
    };
    if is_loopback(p.family, &p.src) {
        return PASS;
    }
    drop_packet(&ctx, Reason::IngressDropped, Some(&p), true)
}
