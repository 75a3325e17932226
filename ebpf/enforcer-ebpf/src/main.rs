//! The kernel side of enforcer. Every program here is attached to one run's
//! cgroup and decides, for every process in it, what a socket may do: TCP is
//! redirected to the enforcer's proxy, DNS to its resolver, and everything
//! else is refused. Anything a program cannot decide (a full table, a packet
//! it cannot parse) is refused: these programs fail closed.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod addr;
#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packets;
#[cfg(target_arch = "bpf")]
mod sockaddr;
#[cfg(target_arch = "bpf")]
mod sockets;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Built for the host, this crate is empty; userspace/build.rs builds it for bpfel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
