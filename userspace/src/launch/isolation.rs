//! Isolating a run from every other process of its user: other runs (also
//! when they share the agent's account) and the user's own processes
//! outside any run. An agent can read nothing of them (environment, memory,
//! file descriptors, sockets, cwd and root), cannot trace them, and cannot
//! signal them; they are isolated from it in the same way when they are
//! runs themselves.
//!
//! The mechanism is a Landlock domain per run, created in the child before
//! exec (after dropping privileges and setting no_new_privs), inherited by
//! every descendant and impossible to leave:
//!
//! - Any Landlock domain restricts ptrace access (`PTRACE_MODE_READ` and
//!   `ATTACH`) to processes in the same domain or one nested in it. That one
//!   check is what guards `/proc/PID/{environ,mem,maps,auxv,fd/*,fdinfo/*,
//!   cwd,root,exe}`, `ptrace`, `process_vm_readv/writev`, `pidfd_getfd`,
//!   `kcmp` and `perf_event_open` on another process. Each run restricts
//!   itself on its own, so two runs are sibling domains and neither reaches
//!   the other; processes outside every domain (the user's shell, editor,
//!   ssh-agent) are out of reach too.
//! - `LANDLOCK_SCOPE_SIGNAL` (ABI 6) refuses signals (`kill`, `tgkill`,
//!   `pidfd_send_signal`, `F_SETOWN` targets) to processes outside the
//!   domain. Signals the kernel generates are not checked: terminal job
//!   control (Ctrl-C, Ctrl-Z), `SIGCHLD` and `SIGPIPE` still arrive, and the
//!   agent signals and traces its own children as before.
//! - enforcer itself (root, in no domain) keeps every access to the agent:
//!   the seccomp supervisor's `pidfd_getfd` and `/proc/PID/mem`, the signal
//!   forwarder, the watchdog.
//!
//! Verified on Linux 6.18 (Landlock ABI 7, Yama not built in): without a
//! domain, a process of the same user reads all of the above and kills the
//! victim; with a scope-only ruleset (`scoped = SIGNAL`, no file system or
//! network rules: the user's files stay the agent's) every one of them
//! fails with EACCES or EPERM, and creating it plus restricting costs a few
//! microseconds. On ABI 1 to 5 a ruleset that handles only `MAKE_BLOCK`
//! (which an unprivileged agent cannot do anyway) still gives the ptrace
//! isolation, but signals stay open: that counts as missing.
//!
//! Why not a PID namespace with its own /proc: it hides the outside by
//! number, but the agent becomes PID 1 (an init shim for reaping and
//! signal forwarding), it needs a private mount namespace in which every
//! other proc mount of the host still exists, and it does not check access
//! itself. Landlock checks the object, however it is named.
//!
//! Two channels are not process accesses, and Landlock does not cover them:
//!
//! - System V IPC (shared memory, semaphores, message queues: X11's MIT-SHM
//!   segments hold window contents) is per IPC namespace, so each run gets
//!   its own (`CLONE_NEWIPC` at clone, tens of microseconds).
//! - The kernel keyrings: every process of a uid can search and read that
//!   uid's user and persistent keyrings (Kerberos `KEYRING:` caches, fscrypt
//!   and ecryptfs keys). A second, tiny seccomp filter answers `add_key`,
//!   `request_key` and `keyctl` with ENOSYS, as for a kernel without keys.
//! - Core dumps: a crashing agent would write its memory into a file of the
//!   user's (or to systemd-coredump, which shows it to that user), and a
//!   process of the same user may raise another's core limit (`prlimit`, no
//!   LSM hook of Landlock's) and make it crash (by lowering its RLIMIT_AS).
//!   The agent's hard RLIMIT_CORE is 0, which only root could raise again.
//!
//! Fail closed: what this kernel cannot provide is found in the parent,
//! before the run exists, and refuses the launch with a message that names
//! it, unless the user passes `--allow-unisolated` (then enforcer warns and
//! applies what the kernel has).
//!
//! What stays shared is the user's: files (home, /tmp, /dev/shm, POSIX
//! message queues under a mounted /dev/mqueue), loopback listeners and unix
//! sockets as far as the policy lists them, scheduling and resource limits
//! of processes it can name (`setpriority`, `sched_setaffinity`, `prlimit`,
//! `/proc/PID/oom_score_adj`: interference, not reading), and what is
//! visible to every user (`/proc/PID/{cmdline,status,stat}`, fd numbers).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

/// `landlock_create_ruleset` flag: return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
/// Handled file system access with no rule: refuses mknod of block
/// devices, which an unprivileged process cannot do anyway.
const LANDLOCK_ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
const LANDLOCK_SCOPE_SIGNAL: u64 = 1 << 1;
/// ABI 7: log the agent's denials (to the kernel audit log, if enabled)
/// after exec too, not just in the code that restricted itself.
const LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: u32 = 1 << 1;
/// The first ABI with `scoped` (abstract unix sockets and signals).
const ABI_SCOPES: i32 = 6;
const ABI_LOG_FLAGS: i32 = 7;

const CLONE_NEWIPC: u64 = 0x0800_0000;

/// `struct landlock_ruleset_attr` as of ABI 6. Older kernels accept the
/// larger struct as long as the fields they do not know are zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "this kernel cannot isolate the run from the other processes of user {user}: {}. \
         Without it, {} Pass --allow-unisolated to start anyway.",
        list(missing),
        consequences(missing)
    )]
    Unavailable { user: String, missing: Vec<Missing> },
    #[error("cannot create the run's Landlock ruleset: {0}")]
    Ruleset(#[source] io::Error),
}

/// Something this kernel lacks for run isolation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("Landlock is not built into this kernel (CONFIG_SECURITY_LANDLOCK)")]
    LandlockNotBuilt,
    #[error(
        "Landlock is built in but not enabled (add `landlock` to the kernel's `lsm=` boot \
         parameter, next to the modules /sys/kernel/security/lsm lists, and reboot)"
    )]
    LandlockDisabled,
    #[error("the kernel refused a Landlock query: {0}")]
    LandlockUnusable(String),
    #[error("Landlock ABI {0} cannot scope signals (that needs ABI 6, Linux 6.12 or later)")]
    SignalScoping(i32),
    #[error("IPC namespaces are not built into this kernel (CONFIG_IPC_NS)")]
    IpcNamespace,
}

impl Missing {
    /// What an agent can do to the user's other processes because of it.
    fn consequence(&self) -> &'static str {
        match self {
            Self::LandlockNotBuilt | Self::LandlockDisabled | Self::LandlockUnusable(_) => {
                "any other process of that user, another run included, can read this agent's \
                 environment (its placeholders), memory and open connections, trace it and \
                 signal it, and this agent can do the same to them."
            }
            Self::SignalScoping(_) => {
                "this agent can signal (stop, kill) every other process of that user, and they \
                 can signal it."
            }
            Self::IpcNamespace => {
                "System V shared memory, semaphores and message queues are shared with every \
                 other process of that user."
            }
        }
    }
}

fn list(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn consequences(missing: &[Missing]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for m in missing {
        let c = m.consequence();
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen.join(" ")
}

/// The loud warning printed when `--allow-unisolated` lets a launch start
/// without part of its isolation.
pub fn warning(user: &str, missing: &[Missing]) -> String {
    format!(
        "enforcer: WARNING: --allow-unisolated: this run is NOT isolated from the other \
         processes of user {user}: {}. Without it, {}",
        list(missing),
        consequences(missing)
    )
}

/// How the run is isolated, prepared and checked in the parent.
#[derive(Debug)]
pub struct Isolation {
    landlock: Option<Landlock>,
    ipc_namespace: bool,
    keyring_filter: Vec<Insn>,
    /// What the kernel could not provide (empty unless --allow-unisolated).
    pub missing: Vec<Missing>,
}

#[derive(Debug)]
struct Landlock {
    ruleset: OwnedFd,
    restrict_flags: u32,
}

/// What the Landlock ABI allows: the ruleset, the restrict flags, and what
/// is missing. Pure, so every ABI is tested here.
fn landlock_plan(abi: Result<i32, i32>) -> Result<(RulesetAttr, u32, Option<Missing>), Missing> {
    let abi = match abi {
        Ok(v) => v,
        Err(libc::ENOSYS) => return Err(Missing::LandlockNotBuilt),
        Err(libc::EOPNOTSUPP) => return Err(Missing::LandlockDisabled),
        Err(e) => {
            return Err(Missing::LandlockUnusable(
                io::Error::from_raw_os_error(e).to_string(),
            ));
        }
    };
    if abi < 1 {
        return Err(Missing::LandlockUnusable(format!("ABI version {abi}")));
    }
    if abi < ABI_SCOPES {
        let attr = RulesetAttr {
            handled_access_fs: LANDLOCK_ACCESS_FS_MAKE_BLOCK,
            handled_access_net: 0,
            scoped: 0,
        };
        return Ok((attr, 0, Some(Missing::SignalScoping(abi))));
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: LANDLOCK_SCOPE_SIGNAL,
    };
    let flags = if abi >= ABI_LOG_FLAGS {
        LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON
    } else {
        0
    };
    Ok((attr, flags, None))
}

fn landlock_abi() -> Result<i32, i32> {
    // SAFETY: the version query takes no attribute pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(i32::try_from(r).unwrap_or(i32::MAX))
    }
}

fn create_ruleset(attr: &RulesetAttr) -> io::Result<OwnedFd> {
    // SAFETY: attr points at a live struct of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor (close-on-exec) that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Isolation {
    /// Checks what this kernel provides and prepares the run's Landlock
    /// ruleset. Missing pieces are an error naming them, unless
    /// `allow_unisolated` (then they are listed in `missing`).
    pub fn prepare(user: &str, allow_unisolated: bool) -> Result<Self, IsolationError> {
        let mut missing = Vec::new();
        let landlock = match landlock_plan(landlock_abi()) {
            Ok((attr, restrict_flags, partial)) => {
                missing.extend(partial);
                match create_ruleset(&attr) {
                    Ok(ruleset) => Some(Landlock {
                        ruleset,
                        restrict_flags,
                    }),
                    Err(e) if allow_unisolated => {
                        missing.push(Missing::LandlockUnusable(e.to_string()));
                        None
                    }
                    Err(e) => return Err(IsolationError::Ruleset(e)),
                }
            }
            Err(m) => {
                missing.push(m);
                None
            }
        };
        let ipc_namespace = Path::new("/proc/self/ns/ipc").exists();
        if !ipc_namespace {
            missing.push(Missing::IpcNamespace);
        }
        if !missing.is_empty() && !allow_unisolated {
            return Err(IsolationError::Unavailable {
                user: user.to_string(),
                missing,
            });
        }
        Ok(Self {
            landlock,
            ipc_namespace,
            keyring_filter: keyring_filter(),
            missing,
        })
    }

    /// Flags for the child's clone3.
    pub fn clone_flags(&self) -> u64 {
        if self.ipc_namespace { CLONE_NEWIPC } else { 0 }
    }

    /// The child's part, as raw values (see [`apply`]).
    pub fn for_child(&self) -> ChildIsolation<'_> {
        ChildIsolation {
            ruleset: self.landlock.as_ref().map_or(-1, |l| l.ruleset.as_raw_fd()),
            restrict_flags: self.landlock.as_ref().map_or(0, |l| l.restrict_flags),
            keyring_filter: &self.keyring_filter,
        }
    }
}

/// What the child applies, prepared before the clone.
#[derive(Debug, Clone, Copy)]
pub struct ChildIsolation<'a> {
    /// The Landlock ruleset, or -1.
    ruleset: RawFd,
    restrict_flags: u32,
    keyring_filter: &'a [Insn],
}

/// Where [`apply`] failed: the errno, and whether it was Landlock.
#[derive(Debug, Clone, Copy)]
pub struct ApplyError {
    pub errno: i32,
    pub landlock: bool,
}

/// Enters the run's Landlock domain, turns core dumps off for good and
/// installs the keyring filter. Raw system calls only: called in the child
/// between clone and exec.
///
/// # Safety
/// Must be called in the single-threaded child, after no_new_privs is set.
pub unsafe fn apply(c: &ChildIsolation<'_>) -> Result<(), ApplyError> {
    // SAFETY: raw system calls on memory prepared before the clone.
    unsafe {
        let errno = || *libc::__errno_location();
        if c.ruleset >= 0 {
            if libc::syscall(
                libc::SYS_landlock_restrict_self,
                c.ruleset,
                c.restrict_flags,
            ) != 0
            {
                return Err(ApplyError {
                    errno: errno(),
                    landlock: true,
                });
            }
            libc::syscall(libc::SYS_close, c.ruleset);
        }
        // Lowering a limit cannot fail for a valid resource.
        let no_core = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_CORE,
            &no_core as *const libc::rlimit64,
            std::ptr::null_mut::<libc::rlimit64>(),
        );
        let prog = SockFprog {
            len: c.keyring_filter.len() as u16,
            filter: c.keyring_filter.as_ptr(),
        };
        if libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            &prog as *const SockFprog,
        ) != 0
        {
            return Err(ApplyError {
                errno: errno(),
                landlock: false,
            });
        }
    }
    Ok(())
}

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const Insn,
}

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
/// As for the main filter: do not force the speculative-store-bypass
/// mitigation on the agent (it protects the agent from itself only).
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 1 << 2;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// `add_key`, `request_key` and `keyctl` answer ENOSYS; the rest passes to
/// the main filter. Foreign architectures are refused here as there.
fn keyring_filter() -> Vec<Insn> {
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    vec![
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 1, 0, AUDIT_ARCH),
        insn(RET_K, 0, 0, enosys),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 3, 0, libc::SYS_add_key as u32),
        insn(JEQ_K, 2, 0, libc::SYS_request_key as u32),
        insn(JEQ_K, 1, 0, libc::SYS_keyctl as u32),
        insn(RET_K, 0, 0, RET_ALLOW),
        insn(RET_K, 0, 0, enosys),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prog: &[Insn], arch: u32, nr: u32) -> u32 {
        let mut pc = 0usize;
        let mut acc = 0u32;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = if i.k == 4 { arch } else { nr },
                JEQ_K if acc == i.k => pc += i.jt as usize,
                JEQ_K => pc += i.jf as usize,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_keyring_calls_answer_enosys_and_nothing_else_does() {
        let p = keyring_filter();
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        for nr in [libc::SYS_add_key, libc::SYS_request_key, libc::SYS_keyctl] {
            assert_eq!(run(&p, AUDIT_ARCH, nr as u32), enosys, "syscall {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_landlock_restrict_self,
            libc::SYS_seccomp,
        ] {
            assert_eq!(run(&p, AUDIT_ARCH, nr as u32), RET_ALLOW, "syscall {nr}");
        }
        assert_eq!(run(&p, 0x4000_0003, 1), enosys, "i386");
    }

    #[test]
    fn abi_6_and_later_scope_signals_with_no_file_system_rules() {
        for abi in [6, 7, 8] {
            let (attr, flags, missing) = landlock_plan(Ok(abi)).expect("usable");
            assert_eq!(
                attr,
                RulesetAttr {
                    handled_access_fs: 0,
                    handled_access_net: 0,
                    scoped: LANDLOCK_SCOPE_SIGNAL
                }
            );
            assert_eq!(missing, None);
            assert_eq!(flags != 0, abi >= 7, "abi {abi}");
        }
    }

    #[test]
    fn older_abis_isolate_ptrace_but_miss_signals() {
        for abi in 1..6 {
            let (attr, flags, missing) = landlock_plan(Ok(abi)).expect("usable");
            assert_eq!(attr.handled_access_fs, LANDLOCK_ACCESS_FS_MAKE_BLOCK);
            assert_eq!(attr.scoped, 0);
            assert_eq!(flags, 0);
            assert_eq!(missing, Some(Missing::SignalScoping(abi)));
        }
    }

    #[test]
    fn a_kernel_without_landlock_is_named_precisely() {
        assert_eq!(
            landlock_plan(Err(libc::ENOSYS)),
            Err(Missing::LandlockNotBuilt)
        );
        assert_eq!(
            landlock_plan(Err(libc::EOPNOTSUPP)),
            Err(Missing::LandlockDisabled)
        );
        assert!(matches!(
            landlock_plan(Err(libc::EPERM)),
            Err(Missing::LandlockUnusable(_))
        ));
    }

    #[test]
    fn the_refusal_says_what_is_missing_what_it_means_and_the_way_out() {
        let e = IsolationError::Unavailable {
            user: "agent".into(),
            missing: vec![Missing::LandlockDisabled, Missing::IpcNamespace],
        }
        .to_string();
        assert!(e.contains("other processes of user agent"), "{e}");
        assert!(e.contains("lsm="), "{e}");
        assert!(e.contains("CONFIG_IPC_NS"), "{e}");
        assert!(e.contains("read this agent's environment"), "{e}");
        assert!(e.contains("System V shared memory"), "{e}");
        assert!(e.contains("--allow-unisolated"), "{e}");
        let w = warning("agent", &[Missing::SignalScoping(4)]);
        assert!(w.contains("WARNING") && w.contains("NOT isolated"), "{w}");
        assert!(w.contains("ABI 4") && w.contains("signal"), "{w}");
    }
}
