//! Loading the eBPF object, attaching every program to a cgroup with a
//! bpf_link (it covers every cgroup below), pinning links and maps so that
//! enforcement outlives this process, and filing runs: which cgroup is
//! served by which listeners.

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, Program, ProgramError, SockOps,
    },
};
use enforcer_common::{LoopbackKey, RunPorts, counters, maps, programs};

use super::{
    bpf_sys,
    bpffs::{BpffsError, PinDir},
    origdst::{OrigDstMap, OrigDstTable},
};

/// The eBPF object built from ebpf/enforcer-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load the eBPF object (is BPF available to root on this kernel?): {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("the kernel refused program {name}: {detail}")]
    Program { name: &'static str, detail: String },
    #[error("cannot attach {name} to the run's cgroup: {source}")]
    Attach {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot pin {what}: {source}")]
    Pin {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot fill map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
}

/// What the programs need to know about this run.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    /// The run's cgroup id: the programs serve its processes by it.
    pub cgroup_id: u64,
    pub proxy_port4: u16,
    pub proxy_port6: u16,
    pub dns_port4: u16,
    pub dns_port6: u16,
    pub explicit_port4: u16,
    /// Loopback TCP ports the run may reach directly.
    pub loopback_ports: Vec<u16>,
}

/// How a program is attached.
#[derive(Clone, Copy)]
enum Hook {
    SockAddr(u32),
    Sock(u32),
    SockOps,
    Sockopt,
    Skb(u32),
}

// Attach types from the kernel's UAPI (enum bpf_attach_type).
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_INET_SOCK_CREATE: u32 = 2;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_CGROUP_INET4_BIND: u32 = 8;
const BPF_CGROUP_INET6_BIND: u32 = 9;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
const BPF_CGROUP_UDP6_RECVMSG: u32 = 20;
const BPF_CGROUP_SETSOCKOPT: u32 = 22;
const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;
const BPF_CGROUP_INET_SOCK_RELEASE: u32 = 34;

/// Every program and where it goes. Attaching is all or nothing.
const PROGRAMS: &[(&str, Hook)] = &[
    (
        programs::SOCK_CREATE,
        Hook::Sock(BPF_CGROUP_INET_SOCK_CREATE),
    ),
    (
        programs::SOCK_RELEASE,
        Hook::Sock(BPF_CGROUP_INET_SOCK_RELEASE),
    ),
    (programs::CONNECT4, Hook::SockAddr(BPF_CGROUP_INET4_CONNECT)),
    (programs::CONNECT6, Hook::SockAddr(BPF_CGROUP_INET6_CONNECT)),
    (programs::SENDMSG4, Hook::SockAddr(BPF_CGROUP_UDP4_SENDMSG)),
    (programs::SENDMSG6, Hook::SockAddr(BPF_CGROUP_UDP6_SENDMSG)),
    (programs::RECVMSG4, Hook::SockAddr(BPF_CGROUP_UDP4_RECVMSG)),
    (programs::RECVMSG6, Hook::SockAddr(BPF_CGROUP_UDP6_RECVMSG)),
    (
        programs::GETPEERNAME4,
        Hook::SockAddr(BPF_CGROUP_INET4_GETPEERNAME),
    ),
    (
        programs::GETPEERNAME6,
        Hook::SockAddr(BPF_CGROUP_INET6_GETPEERNAME),
    ),
    (programs::BIND4, Hook::SockAddr(BPF_CGROUP_INET4_BIND)),
    (programs::BIND6, Hook::SockAddr(BPF_CGROUP_INET6_BIND)),
    (programs::SOCKOPS, Hook::SockOps),
    (programs::SETSOCKOPT, Hook::Sockopt),
    (programs::EGRESS, Hook::Skb(BPF_CGROUP_INET_EGRESS)),
    (programs::INGRESS, Hook::Skb(BPF_CGROUP_INET_INGRESS)),
];

const PINNED_MAPS: &[&str] = &[
    maps::RUNS,
    maps::ORIG_BY_COOKIE,
    maps::ORIG_BY_TUPLE,
    maps::LOOPBACK_PORTS,
    maps::EVENTS,
    maps::COUNTERS,
];

/// Counters the programs keep (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub table_full: u64,
}

/// A run's attached programs. Dropping it without [`Enforcement::detach`]
/// or [`Enforcement::keep_pinned`] still detaches (the pins are removed).
pub struct Enforcement {
    ebpf: Ebpf,
    links: Vec<(&'static str, OwnedFd)>,
    pins: Option<PinDir>,
    counters: Option<PerCpuArray<MapData, u64>>,
    /// Cgroup id -> a run's listeners.
    runs: Mutex<HashMap<MapData, u64, RunPorts>>,
    /// (cgroup id, port) -> listed loopback port.
    loopback: Mutex<HashMap<MapData, LoopbackKey, u8>>,
    /// Where each redirected connection was headed, for every run.
    origdst: Arc<OrigDstMap>,
}

impl std::fmt::Debug for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcement")
            .field("links", &self.links.len())
            .field("pins", &self.pins)
            .finish()
    }
}

fn program_error(name: &'static str, e: ProgramError) -> LoadError {
    let detail = match &e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\nverifier log:\n{verifier_log}"),
        other => other.to_string(),
    };
    LoadError::Program { name, detail }
}

impl Enforcement {
    /// Loads the object, attaches every program to the cgroup `cgroup`
    /// (which covers it and every cgroup below it) and pins it all. No run
    /// is filed yet: until one is ([`Enforcement::register`]), processes
    /// there reach nothing.
    pub fn attach(cgroup: BorrowedFd<'_>, pins: PinDir) -> Result<Self, LoadError> {
        // No CO-RE relocations are used: skip parsing the kernel's BTF (tens of ms).
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(LoadError::Object)?;
        for name in PINNED_MAPS {
            let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
            let path = pins.join(&format!("map_{name}"));
            map.pin(&path).map_err(|e| LoadError::Pin {
                what: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let runs = Mutex::new(take_hash(&mut ebpf, maps::RUNS)?);
        let loopback = Mutex::new(take_hash(&mut ebpf, maps::LOOPBACK_PORTS)?);
        let origdst = Arc::new(take_hash(&mut ebpf, maps::ORIG_BY_TUPLE)?);
        let counters = ebpf
            .take_map(maps::COUNTERS)
            .ok_or(LoadError::MissingMap(maps::COUNTERS))?;
        let counters = PerCpuArray::try_from(counters).map_err(|e| LoadError::Map {
            name: maps::COUNTERS,
            detail: e.to_string(),
        })?;
        let mut enforcement = Self {
            ebpf,
            links: Vec::with_capacity(PROGRAMS.len()),
            pins: Some(pins),
            counters: Some(counters),
            runs,
            loopback,
            origdst,
        };
        for &(name, hook) in PROGRAMS {
            enforcement.attach_one(cgroup, name, hook)?;
        }
        Ok(enforcement)
    }

    /// Files a run: from now on the processes of cgroup `cfg.cgroup_id` are
    /// served by its listeners and may reach its listed loopback ports. Call
    /// it before the first of them exists.
    pub fn register(&self, cfg: &KernelConfig) -> Result<(), LoadError> {
        let map_err = |name| {
            move |e: aya::maps::MapError| LoadError::Map {
                name,
                detail: e.to_string(),
            }
        };
        {
            let mut loopback = self.loopback.lock().unwrap_or_else(|e| e.into_inner());
            for &port in &cfg.loopback_ports {
                loopback
                    .insert(loopback_key(cfg.cgroup_id, port), 1, 0)
                    .map_err(map_err(maps::LOOPBACK_PORTS))?;
            }
        }
        let listeners = RunPorts {
            proxy4: cfg.proxy_port4,
            proxy6: cfg.proxy_port6,
            dns4: cfg.dns_port4,
            dns6: cfg.dns_port6,
            explicit4: cfg.explicit_port4,
            pad: 0,
        };
        let result = self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cfg.cgroup_id, listeners, 0)
            .map_err(map_err(maps::RUNS));
        if result.is_err() {
            self.unregister(cfg);
        }
        result
    }

    /// Forgets a run: its cgroup reaches nothing from now on.
    pub fn unregister(&self, cfg: &KernelConfig) {
        let _ = self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cfg.cgroup_id);
        let mut loopback = self.loopback.lock().unwrap_or_else(|e| e.into_inner());
        for &port in &cfg.loopback_ports {
            let _ = loopback.remove(&loopback_key(cfg.cgroup_id, port));
        }
    }

    fn attach_one(
        &mut self,
        cgroup: BorrowedFd<'_>,
        name: &'static str,
        hook: Hook,
    ) -> Result<(), LoadError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?;
        let attach_type = load_program(program, name, hook)?;
        let prog_fd = program
            .fd()
            .map_err(|e| program_error(name, e))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| LoadError::Attach { name, source })?;
        let link = bpf_sys::link_create(prog_fd.as_fd(), cgroup, attach_type)
            .map_err(|source| LoadError::Attach { name, source })?;
        let pins = self.pins.as_ref().ok_or(LoadError::MissingProgram(name))?;
        let path = pins.join(&format!("link_{name}"));
        bpf_sys::obj_pin(&link, &path).map_err(|source| LoadError::Pin {
            what: path.display().to_string(),
            source,
        })?;
        self.links.push((name, link));
        Ok(())
    }

    /// The table the proxy reads original destinations from, as the run
    /// in cgroup `cgroup_id` sees it (only its own connections).
    pub fn origdst(&self, cgroup_id: u64) -> OrigDstTable {
        OrigDstTable::new(Arc::clone(&self.origdst), cgroup_id)
    }

    /// The ring buffer the programs report refusals into.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(LoadError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|e| LoadError::Map {
            name: maps::EVENTS,
            detail: e.to_string(),
        })
    }

    /// Reads the programs' counters.
    pub fn counters(&self) -> KernelCounters {
        let sum = |index: u32| -> u64 {
            self.counters
                .as_ref()
                .and_then(|m| m.get(&index, 0).ok())
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            events_lost: sum(counters::EVENTS_LOST),
            table_full: sum(counters::TABLE_FULL),
        }
    }

    /// Detaches every program and removes the pins.
    pub fn detach(mut self) -> Result<(), LoadError> {
        self.detach_links();
        if let Some(pins) = self.pins.take() {
            pins.remove()?;
        }
        Ok(())
    }

    fn detach_links(&mut self) {
        for (_, link) in self.links.drain(..) {
            // Detach explicitly, so a pin someone copied elsewhere cannot keep it alive.
            let _ = bpf_sys::link_detach(&link);
        }
    }

    /// Leaves the programs attached and pinned after this process exits
    /// (`enforcer cleanup` removes them).
    pub fn keep_pinned(mut self) {
        self.links.clear();
        if let Some(pins) = self.pins.take() {
            pins.keep();
        }
    }
}

impl Drop for Enforcement {
    fn drop(&mut self) {
        self.detach_links();
        if let Some(pins) = self.pins.take() {
            let _ = pins.remove();
        }
    }
}

fn load_program(program: &mut Program, name: &'static str, hook: Hook) -> Result<u32, LoadError> {
    let err = |e| program_error(name, e);
    Ok(match hook {
        Hook::SockAddr(t) => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            t
        }
        Hook::Sock(t) => {
            let p: &mut CgroupSock = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            t
        }
        Hook::SockOps => {
            let p: &mut SockOps = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            BPF_CGROUP_SOCK_OPS
        }
        Hook::Sockopt => {
            let p: &mut CgroupSockopt = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            BPF_CGROUP_SETSOCKOPT
        }
        Hook::Skb(t) => {
            let p: &mut CgroupSkb = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            t
        }
    })
}

/// Takes a hash map out of the object, typed.
fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|e| LoadError::Map {
        name,
        detail: e.to_string(),
    })
}

fn loopback_key(cgroup: u64, port: u16) -> LoopbackKey {
    LoopbackKey {
        cgroup,
        port,
        pad: [0; 3],
    }
}
