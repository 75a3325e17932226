//! The kernel boundary: the run's cgroup, bpffs pins, loading and attaching
//! the eBPF programs, and the tables userspace reads back from them.

pub mod bpf_sys;
pub mod bpffs;
pub mod cgroup;
pub mod events;
pub mod loader;
pub mod origdst;

pub use cgroup::RunCgroup;
pub use loader::{Enforcement, KernelConfig};
