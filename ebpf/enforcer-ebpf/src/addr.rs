//! The sock_addr hooks: connect, sendmsg, recvmsg, getpeername and bind, for
//! IPv4 and IPv6. TCP is redirected to the proxy, DNS to the resolver, listed
//! loopback ports pass unchanged, and everything else is refused.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use enforcer_common::{
    AF_INET, AF_INET6, OrigDst, Reason, SockRecord, TupleKey, counters, v4_mapped,
};

use crate::{
    config::{Run, current_run},
    events::{Refusal, report},
    maps::{ORIG_BY_COOKIE, bump, loopback_port_listed},
    sockaddr::*,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Where a destination goes.
enum Route {
    /// Leave the address as it is (a listed loopback port).
    Direct,
    /// The explicit proxy: left as it is, but remembered, so the proxy can
    /// tell the run's connections from any other local process's.
    Explicit,
    /// Rewrite to the enforcer's resolver.
    Dns,
    /// Rewrite to the enforcer's transparent proxy.
    Proxy,
    /// Refuse, with this reason.
    Refuse(Reason),
}

/// The routing decision shared by connect and sendmsg, for both families.
#[inline(always)]
fn route(run: &Run, sock_type: u32, protocol: u32, loopback: bool, port: u16) -> Route {
    let stream = sock_type == SOCK_STREAM && protocol == IPPROTO_TCP;
    let dgram = sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP;
    if !stream && !dgram {
        return Route::Refuse(Reason::SocketTypeRefused);
    }
    if port == DNS_PORT {
        return Route::Dns;
    }
    if dgram {
        return Route::Refuse(Reason::UdpRefused);
    }
    if loopback {
        let explicit = run.ports.explicit4;
        if explicit != 0 && port == explicit {
            return Route::Explicit;
        }
        if loopback_port_listed(run.cgroup, port) {
            return Route::Direct;
        }
        return Route::Refuse(Reason::LoopbackPortNotListed);
    }
    Route::Proxy
}

/// Remembers where the socket wanted to go; false when the table is full.
#[inline(always)]
fn remember(ctx: &SockAddrContext, run: &Run, addr: [u8; 16], port: u16, family: u16) -> bool {
    let record = SockRecord {
        dst: OrigDst {
            addr,
            port,
            family,
            sock_type: sock_type(ctx),
            cgroup: run.cgroup,
        },
        client: TupleKey::default(),
        has_client: 0,
    };
    if ORIG_BY_COOKIE.insert(cookie(ctx), record, 0).is_err() {
        bump(counters::TABLE_FULL);
        return false;
    }
    true
}

#[inline(always)]
fn refuse(ctx: &SockAddrContext, reason: Reason, family: u16, addr: [u8; 16], port: u16) -> i32 {
    let mut r = Refusal::new(reason);
    r.family = family;
    r.addr = addr;
    r.port = port;
    r.sock_type = sock_type(ctx);
    r.protocol = protocol(ctx);
    report(&r);
    REFUSE
}

/// connect4 and sendmsg4: decide, remember the destination, rewrite it.
#[inline(always)]
fn steer4(ctx: &SockAddrContext) -> i32 {
    let ip = user_ip4(ctx);
    let port = user_port(ctx);
    let mapped = v4_mapped(ip);
    let Some(run) = current_run() else {
        return refuse(ctx, Reason::NoRun, AF_INET, mapped, port);
    };
    let target = match route(&run, sock_type(ctx), protocol(ctx), is_loopback4(ip), port) {
        Route::Direct => return ALLOW,
        Route::Explicit => {
            if !remember(ctx, &run, mapped, port, AF_INET) {
                return refuse(ctx, Reason::TableFull, AF_INET, mapped, port);
            }
            return ALLOW;
        }
        Route::Refuse(reason) => return refuse(ctx, reason, AF_INET, mapped, port),
        Route::Dns => run.ports.dns4,
        Route::Proxy => run.ports.proxy4,
    };
    if target == 0 {
        return refuse(ctx, Reason::ConnectRefused, AF_INET, mapped, port);
    }
    if !remember(ctx, &run, mapped, port, AF_INET) {
        return refuse(ctx, Reason::TableFull, AF_INET, mapped, port);
    }
    set_user_ip4(ctx, loopback4());
    set_user_port(ctx, target);
    ALLOW
}

/// connect6 and sendmsg6: as steer4; IPv4-mapped destinations go to the IPv4 listeners.
#[inline(always)]
fn steer6(ctx: &SockAddrContext) -> i32 {
    let ip = user_ip6(ctx);
    let port = user_port(ctx);
    let mapped = is_v4_mapped(&ip);
    let loopback = if mapped {
        is_loopback4(mapped_v4(&ip))
    } else {
        is_loopback6(&ip)
    };
    let Some(run) = current_run() else {
        return refuse(ctx, Reason::NoRun, AF_INET6, ip, port);
    };
    let target = match route(&run, sock_type(ctx), protocol(ctx), loopback, port) {
        Route::Direct => return ALLOW,
        Route::Explicit => {
            if !remember(ctx, &run, ip, port, AF_INET6) {
                return refuse(ctx, Reason::TableFull, AF_INET6, ip, port);
            }
            return ALLOW;
        }
        Route::Refuse(reason) => return refuse(ctx, reason, AF_INET6, ip, port),
        Route::Dns if mapped => run.ports.dns4,
        Route::Proxy if mapped => run.ports.proxy4,
        Route::Dns => run.ports.dns6,
        Route::Proxy => run.ports.proxy6,
    };
    if target == 0 {
        return refuse(ctx, Reason::ConnectRefused, AF_INET6, ip, port);
    }
    if !remember(ctx, &run, ip, port, AF_INET6) {
        return refuse(ctx, Reason::TableFull, AF_INET6, ip, port);
    }
    if mapped {
        set_user_ip6(ctx, loopback4_mapped());
    } else {
        set_user_ip6(ctx, loopback6());
    }
    set_user_port(ctx, target);
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn enforcer_connect4(ctx: SockAddrContext) -> i32 {
    steer4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn enforcer_connect6(ctx: SockAddrContext) -> i32 {
    steer6(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn enforcer_sendmsg4(ctx: SockAddrContext) -> i32 {
    steer4(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enforcer_sendmsg6(ctx: SockAddrContext) -> i32 {
    steer6(&ctx)
}

/// True when `port` is a listener of the caller's run.
#[inline(always)]
fn is_own_port(port: u16) -> bool {
    current_run().is_some_and(|r| r.ports.is_enforcer_port(port))
}

/// The destination recorded for this socket, if the current peer is one of our listeners.
#[inline(always)]
fn recorded(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: plain read of a map value.
    unsafe { ORIG_BY_COOKIE.get(cookie(ctx)) }.map(|r| r.dst)
}

/// recvmsg4 and getpeername4: show the address the caller asked for, not ours.
#[inline(always)]
fn restore4(ctx: &SockAddrContext) -> i32 {
    let ip = user_ip4(ctx);
    let port = user_port(ctx);
    if ip != loopback4() || !is_own_port(port) {
        return ALLOW;
    }
    if let Some(orig) = recorded(ctx)
        && orig.family == AF_INET
    {
        set_user_ip4(ctx, mapped_v4(&orig.addr));
        set_user_port(ctx, orig.port);
    }
    ALLOW
}

/// recvmsg6 and getpeername6, including IPv4-mapped peers.
#[inline(always)]
fn restore6(ctx: &SockAddrContext) -> i32 {
    let ip = user_ip6(ctx);
    let port = user_port(ctx);
    let ours = ip == loopback6() || ip == loopback4_mapped();
    if !ours || !is_own_port(port) {
        return ALLOW;
    }
    if let Some(orig) = recorded(ctx)
        && orig.family == AF_INET6
    {
        set_user_ip6(ctx, orig.addr);
        set_user_port(ctx, orig.port);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn enforcer_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn enforcer_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn enforcer_getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn enforcer_getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

/// bind4: a wildcard bind to a fixed port (a server) becomes a loopback
/// bind; other non-loopback addresses and the enforcer's own ports are
/// refused. A wildcard bind to port 0 (a client, or a server the kernel
/// picks a port for) is left alone: the packet backstop keeps it off the
/// network, and rewriting it would break dual-stack clients.
#[cgroup_sock_addr(bind4)]
pub fn enforcer_bind4(ctx: SockAddrContext) -> i32 {
    let ip = user_ip4(&ctx);
    let port = user_port(&ctx);
    let Some(run) = current_run() else {
        return refuse(&ctx, Reason::NoRun, AF_INET, v4_mapped(ip), port);
    };
    if run.ports.is_enforcer_port(port) {
        return refuse(&ctx, Reason::BindRefused, AF_INET, v4_mapped(ip), port);
    }
    if ip == [0, 0, 0, 0] {
        if port != 0 {
            set_user_ip4(&ctx, loopback4());
        }
        return ALLOW;
    }
    if ip[0] == 127 {
        return ALLOW;
    }
    refuse(&ctx, Reason::BindRefused, AF_INET, v4_mapped(ip), port)
}

/// bind6: as bind4; `::` becomes `::1` and `::ffff:0.0.0.0` becomes `::ffff:127.0.0.1`.
#[cgroup_sock_addr(bind6)]
pub fn enforcer_bind6(ctx: SockAddrContext) -> i32 {
    let ip = user_ip6(&ctx);
    let port = user_port(&ctx);
    let Some(run) = current_run() else {
        return refuse(&ctx, Reason::NoRun, AF_INET6, ip, port);
    };
    if run.ports.is_enforcer_port(port) {
        return refuse(&ctx, Reason::BindRefused, AF_INET6, ip, port);
    }
    if is_v4_mapped(&ip) {
        let v4 = mapped_v4(&ip);
        if v4 == [0, 0, 0, 0] {
            if port != 0 {
                set_user_ip6(&ctx, loopback4_mapped());
            }
            return ALLOW;
        }
        if v4[0] == 127 {
            return ALLOW;
        }
        return refuse(&ctx, Reason::BindRefused, AF_INET6, ip, port);
    }
    if ip == [0; 16] {
        if port != 0 {
            set_user_ip6(&ctx, loopback6());
        }
        return ALLOW;
    }
    if ip == loopback6() {
        return ALLOW;
    }
    refuse(&ctx, Reason::BindRefused, AF_INET6, ip, port)
}
