//! The maps this object owns. Sizes come from enforcer-common; a full map
//! refuses the operation that needed it.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    EVENT_RING_BYTES, LOOPBACK_PORT_ENTRIES, LoopbackKey, OrigDst, RUN_ENTRIES, RunPorts,
    SOCKET_TABLE_ENTRIES, SockRecord, TupleKey, counters,
};

/// Entries are allocated on insert, not preallocated at load: loading stays
/// fast and small; an allocation failure refuses the socket.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Socket cookie -> destination the socket asked for (TCP and DNS sockets).
#[map]
pub static ORIG_BY_COOKIE: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(SOCKET_TABLE_ENTRIES, BPF_F_NO_PREALLOC);

/// Client (address, port) of a redirected TCP connection -> its destination;
/// the proxy looks this up for every accepted connection.
#[map]
pub static ORIG_BY_TUPLE: HashMap<TupleKey, OrigDst> =
    HashMap::with_max_entries(SOCKET_TABLE_ENTRIES, BPF_F_NO_PREALLOC);

/// Loopback TCP ports each run's policy lets it reach directly (value unused).
#[map]
pub static LOOPBACK_PORTS: HashMap<LoopbackKey, u8> =
    HashMap::with_max_entries(LOOPBACK_PORT_ENTRIES, 0);

/// Cgroup id -> that run's listeners. Userspace files a run before its
/// first process enters the cgroup.
#[map]
pub static RUNS: HashMap<u64, RunPorts> = HashMap::with_max_entries(RUN_ENTRIES, 0);

/// Every refusal, for userspace to log and audit.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Per-CPU counters userspace sums at the end of a run (see `enforcer_common::counters`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Adds one to a counter (per CPU, so no atomics are needed).
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot, valid for this program run.
        unsafe { *ptr += 1 };
    }
}

/// True when the policy of the run in `cgroup` lists this loopback TCP port.
#[inline(always)]
pub fn loopback_port_listed(cgroup: u64, port: u16) -> bool {
    let key = LoopbackKey {
        cgroup,
        port,
        pad: [0; 3],
    };
    // SAFETY: the value is only tested for presence.
    unsafe { LOOPBACK_PORTS.get(key).is_some() }
}
