//! The seccomp filter every agent process runs under. It covers what the
//! cgroup programs cannot see: socket families other than inet and inet6
//! (AF_PACKET, AF_VSOCK, AF_XDP, netlink other than route...), unix sockets
//! (refused unless the policy lists paths; then only stream and seqpacket
//! sockets, whose connect() is supervised), unix datagram sockets (never:
//! not from socket(), not from socketpair(), and not as SOCK_RAW, which the
//! kernel turns into a datagram socket; a datagram socket names its
//! destination in each sendmsg(), which seccomp cannot read), user
//! namespaces, io_uring (whose
//! socket and connect operations would bypass this filter), clone3 (whose
//! flags it cannot inspect), foreign-architecture system calls, and the
//! ioctls that type into a terminal (TIOCSTI, TIOCLINUX): with them an agent
//! sharing the user's terminal could queue commands for the user's shell to
//! run, unconfined, after the run ends.
//!
//! Refusals that matter for the audit trail return SECCOMP_RET_USER_NOTIF:
//! the enforcer's supervisor answers them with EPERM and records who tried
//! what. If the enforcer is gone, the kernel answers ENOSYS: still refused.

/// What the filter lets through.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterOptions {
    /// Unix stream/seqpacket sockets may be created (the policy lists paths);
    /// connect() is then supervised so only listed sockets are reached.
    pub unix_sockets: bool,
    pub user_namespaces: bool,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const NETLINK_ROUTE: u32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_SEQPACKET: u32 = 5;
/// The type without SOCK_NONBLOCK / SOCK_CLOEXEC (the kernel's mask).
const SOCK_TYPE_MASK: u32 = 0xf;
const CLONE_NEWUSER: u32 = 0x1000_0000;
/// ioctl requests that inject input into a terminal.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;

/// A jump target or a plain instruction, before label resolution.
enum Item {
    Insn(SockFilter),
    /// Conditional jump: `code k`, true -> label, false -> next instruction.
    JumpIf(u16, u32, &'static str),
    Label(&'static str),
}

fn stmt(code: u16, k: u32) -> Item {
    Item::Insn(SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    })
}

fn ret(k: u32) -> Item {
    stmt(RET_K, k)
}

/// Resolves labels into relative jump offsets.
fn assemble(items: Vec<Item>) -> Vec<SockFilter> {
    let mut labels = std::collections::HashMap::new();
    let mut pc = 0usize;
    for item in &items {
        match item {
            Item::Label(l) => {
                labels.insert(*l, pc);
            }
            _ => pc += 1,
        }
    }
    let mut out = Vec::with_capacity(pc);
    for item in items {
        match item {
            Item::Insn(i) => out.push(i),
            Item::JumpIf(code, k, label) => {
                let here = out.len();
                let target = labels.get(label).copied().unwrap_or(here + 1);
                // Classic BPF only jumps forward; the tests check every
                // label is ahead of its jumps.
                let offset = target.saturating_sub(here + 1);
                let jt = u8::try_from(offset).unwrap_or(u8::MAX);
                out.push(SockFilter { code, jt, jf: 0, k });
            }
            Item::Label(_) => {}
        }
    }
    out
}

/// Builds the filter program for these options.
pub fn build(opts: FilterOptions) -> Vec<SockFilter> {
    assemble(program(opts))
}

/// The program before label resolution.
fn program(opts: FilterOptions) -> Vec<Item> {
    use Item::{JumpIf, Label};
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        JumpIf(JEQ_K, AUDIT_ARCH, "native"),
        ret(RET_ERRNO | libc::ENOSYS as u32),
        Label("native"),
        stmt(LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.push(JumpIf(JGE_K, X32_SYSCALL_BIT, "enosys"));
    p.extend([
        JumpIf(JEQ_K, libc::SYS_socket as u32, "socket"),
        JumpIf(JEQ_K, libc::SYS_socketpair as u32, "socketpair"),
        JumpIf(JEQ_K, libc::SYS_io_uring_setup as u32, "enosys"),
        JumpIf(JEQ_K, libc::SYS_io_uring_enter as u32, "enosys"),
        JumpIf(JEQ_K, libc::SYS_io_uring_register as u32, "enosys"),
        JumpIf(JEQ_K, libc::SYS_clone3 as u32, "enosys"),
        JumpIf(JEQ_K, libc::SYS_ioctl as u32, "ioctl"),
    ]);
    if !opts.user_namespaces {
        p.push(JumpIf(JEQ_K, libc::SYS_unshare as u32, "namespaces"));
        p.push(JumpIf(JEQ_K, libc::SYS_clone as u32, "namespaces"));
    }
    if opts.unix_sockets {
        p.push(JumpIf(JEQ_K, libc::SYS_connect as u32, "notify"));
    }
    p.extend([
        ret(RET_ALLOW),
        Label("socket"),
        stmt(LD_W_ABS, off_arg(0)),
        JumpIf(JEQ_K, AF_INET, "allow"),
        JumpIf(JEQ_K, AF_INET6, "allow"),
        JumpIf(JEQ_K, AF_NETLINK, "netlink"),
    ]);
    if opts.unix_sockets {
        p.push(JumpIf(JEQ_K, AF_UNIX, "unix"));
    }
    p.extend([
        ret(RET_USER_NOTIF),
        // A pair is connected to itself and cannot be pointed elsewhere,
        // unless it is a datagram pair: sendto() and connect() re-point those.
        Label("socketpair"),
        stmt(LD_W_ABS, off_arg(0)),
        JumpIf(JEQ_K, AF_UNIX, "unix"),
        ret(RET_USER_NOTIF),
        Label("netlink"),
        stmt(LD_W_ABS, off_arg(2)),
        JumpIf(JEQ_K, NETLINK_ROUTE, "allow"),
        ret(RET_USER_NOTIF),
        // Connection-oriented unix sockets only: datagram sockets (and
        // SOCK_RAW, which unix_create() makes a datagram socket) could send
        // to any path with sendto(), which seccomp cannot read.
        Label("unix"),
        stmt(LD_W_ABS, off_arg(1)),
        stmt(AND_K, SOCK_TYPE_MASK),
        JumpIf(JEQ_K, SOCK_STREAM, "allow"),
        JumpIf(JEQ_K, SOCK_SEQPACKET, "allow"),
        ret(RET_USER_NOTIF),
        Label("ioctl"),
        // The request number is an unsigned int: only the low 32 bits count.
        stmt(LD_W_ABS, off_arg(1)),
        JumpIf(JEQ_K, TIOCSTI, "notify"),
        JumpIf(JEQ_K, TIOCLINUX, "notify"),
        ret(RET_ALLOW),
        Label("namespaces"),
        stmt(LD_W_ABS, off_arg(0)),
        JumpIf(JSET_K, CLONE_NEWUSER, "notify"),
        ret(RET_ALLOW),
        Label("allow"),
        ret(RET_ALLOW),
        Label("notify"),
        ret(RET_USER_NOTIF),
        Label("enosys"),
        ret(RET_ERRNO | libc::ENOSYS as u32),
    ]);
    p
}

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// Once the supervisor has received a notification, only a fatal signal
/// interrupts the waiting task. Without it, any signal (Go's preemption
/// SIGURG, a timer) withdraws the notification and restarts connect()
/// while the supervised connect may already have happened.
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;
/// Keep speculative-store-bypass mitigation as the rest of the system has it:
/// by default the kernel forces it on for seccomp'd processes, which slows
/// the agent down to protect it from itself, not from anything we enforce.
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 1 << 2;

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// Installs `filter` on the calling thread and returns the notification
/// listener fd. Async-signal-safe: called in the child between fork and exec.
///
/// # Safety
/// Must be called with no_new_privs already set (or CAP_SYS_ADMIN).
pub unsafe fn install(filter: &[SockFilter]) -> Result<libc::c_int, i32> {
    let prog = SockFprog {
        len: filter.len() as u16,
        filter: filter.as_ptr(),
    };
    // SAFETY: prog points at a valid filter for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER
                | SECCOMP_FILTER_FLAG_SPEC_ALLOW
                | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
            &prog as *const SockFprog,
        )
    };
    if fd < 0 {
        // SAFETY: reading errno.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(fd as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `build` emits, so the filter's
    /// logic is tested without installing it.
    fn run(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                AND_K => acc &= i.k,
                JEQ_K if acc == i.k => pc += i.jt as usize,
                JGE_K if acc >= i.k => pc += i.jt as usize,
                JSET_K if acc & i.k != 0 => pc += i.jt as usize,
                JEQ_K | JGE_K | JSET_K => pc += i.jf as usize,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn socket(p: &[SockFilter], family: u32, ty: u32, proto: u32) -> u32 {
        run(
            p,
            AUDIT_ARCH,
            libc::SYS_socket as u32,
            [family.into(), ty.into(), proto.into(), 0, 0, 0],
        )
    }

    #[test]
    fn every_jump_goes_forward_to_an_existing_label() {
        for unix_sockets in [false, true] {
            for user_namespaces in [false, true] {
                let items = program(FilterOptions {
                    unix_sockets,
                    user_namespaces,
                });
                for (i, item) in items.iter().enumerate() {
                    if let Item::JumpIf(_, _, label) = item {
                        let at = items
                            .iter()
                            .position(|x| matches!(x, Item::Label(l) if l == label));
                        assert!(
                            at.is_some_and(|at| at > i),
                            "jump to {label} at {i} does not go forward"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn inet_sockets_pass_and_other_families_are_refused() {
        let p = build(FilterOptions::default());
        assert_eq!(socket(&p, AF_INET, 1, 0), RET_ALLOW);
        assert_eq!(
            socket(&p, AF_INET6, 2 | libc::SOCK_CLOEXEC as u32, 0),
            RET_ALLOW
        );
        for family in [17, 40, 44, 38, 29, 30] {
            assert_eq!(socket(&p, family, 3, 0), RET_USER_NOTIF, "family {family}");
        }
        assert_eq!(socket(&p, AF_NETLINK, 3, NETLINK_ROUTE), RET_ALLOW);
        assert_eq!(socket(&p, AF_NETLINK, 3, 4), RET_USER_NOTIF);
    }

    #[test]
    fn unix_sockets_need_the_policy() {
        let closed = build(FilterOptions::default());
        assert_eq!(socket(&closed, AF_UNIX, 1, 0), RET_USER_NOTIF);
        let open = build(FilterOptions {
            unix_sockets: true,
            ..Default::default()
        });
        assert_eq!(socket(&open, AF_UNIX, 1, 0), RET_ALLOW);
        assert_eq!(socket(&open, AF_UNIX, 5, 0), RET_ALLOW);
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32;
        assert_eq!(socket(&open, AF_UNIX, 1 | flags, 0), RET_ALLOW);
        // Datagram, and SOCK_RAW (a datagram socket to the kernel), and
        // anything unknown, with or without flags.
        for ty in [2, 3, 4, 6, 10] {
            assert_eq!(socket(&open, AF_UNIX, ty, 0), RET_USER_NOTIF, "type {ty}");
            assert_eq!(
                socket(&open, AF_UNIX, ty | flags, 0),
                RET_USER_NOTIF,
                "type {ty}"
            );
        }
        // connect is supervised only when unix sockets are allowed.
        let connect =
            |p: &[SockFilter]| run(p, AUDIT_ARCH, libc::SYS_connect as u32, [3, 0, 0, 0, 0, 0]);
        assert_eq!(connect(&closed), RET_ALLOW);
        assert_eq!(connect(&open), RET_USER_NOTIF);
        // socketpair stays available for unix streams and seqpackets only.
        let pair = |p: &[SockFilter], f: u32, ty: u32| {
            run(
                p,
                AUDIT_ARCH,
                libc::SYS_socketpair as u32,
                [f.into(), ty.into(), 0, 0, 0, 0],
            )
        };
        for p in [&closed, &open] {
            assert_eq!(pair(p, AF_UNIX, 1), RET_ALLOW);
            assert_eq!(pair(p, AF_UNIX, 5 | flags), RET_ALLOW);
            assert_eq!(pair(p, AF_UNIX, 2), RET_USER_NOTIF);
            assert_eq!(pair(p, AF_UNIX, 2 | flags), RET_USER_NOTIF);
            assert_eq!(pair(p, AF_UNIX, 3), RET_USER_NOTIF);
            assert_eq!(pair(p, AF_INET, 1), RET_USER_NOTIF);
        }
    }

    #[test]
    fn user_namespaces_io_uring_clone3_and_foreign_arches() {
        let p = build(FilterOptions::default());
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        let call = |nr: i64, a0: u64| run(&p, AUDIT_ARCH, nr as u32, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(
            call(libc::SYS_unshare, CLONE_NEWUSER.into()),
            RET_USER_NOTIF
        );
        assert_eq!(call(libc::SYS_unshare, libc::CLONE_NEWNS as u64), RET_ALLOW);
        assert_eq!(
            call(libc::SYS_clone, (CLONE_NEWUSER | 17).into()),
            RET_USER_NOTIF
        );
        assert_eq!(call(libc::SYS_clone, 17), RET_ALLOW);
        assert_eq!(call(libc::SYS_io_uring_setup, 0), enosys);
        assert_eq!(call(libc::SYS_clone3, 0), enosys);
        assert_eq!(call(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(run(&p, 0x4000_0003, 1, [0; 6]), enosys, "i386 syscalls");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(call(X32_SYSCALL_BIT as i64 | libc::SYS_socket, 17), enosys);
        let allowed = build(FilterOptions {
            user_namespaces: true,
            ..Default::default()
        });
        assert_eq!(
            run(
                &allowed,
                AUDIT_ARCH,
                libc::SYS_unshare as u32,
                [CLONE_NEWUSER.into(), 0, 0, 0, 0, 0]
            ),
            RET_ALLOW
        );
    }
}
