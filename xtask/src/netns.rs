//! A network namespace joined to the host by a veth pair, /30 on each side:
//! the "internet" of the demo and the benches. Removed on drop, with any
//! process still running in it.

use std::process::{Command, Stdio};

use crate::util::exec;

/// Names and addresses of one namespace and its veth pair.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub ns: &'static str,
    pub host_if: &'static str,
    pub ns_if: &'static str,
    pub host_addr: &'static str,
    pub ns_addr: &'static str,
}

/// The namespace, up; removed (with whatever runs in it) on drop.
#[derive(Debug)]
pub struct Netns(Spec);

impl Netns {
    /// Removes a leftover of an earlier run first, then creates it.
    pub fn create(spec: Spec) -> anyhow::Result<Self> {
        remove(spec);
        let guard = Self(spec);
        let ip = |args: &[&str]| exec(Command::new("ip").args(args).stdout(Stdio::null()));
        let in_ns = |args: &[&str]| {
            exec(
                Command::new("ip")
                    .args(["netns", "exec", spec.ns, "ip"])
                    .args(args)
                    .stdout(Stdio::null()),
            )
        };
        ip(&["netns", "add", spec.ns])?;
        ip(&[
            "link",
            "add",
            spec.host_if,
            "type",
            "veth",
            "peer",
            "name",
            spec.ns_if,
        ])?;
        ip(&["link", "set", spec.ns_if, "netns", spec.ns])?;
        let host_cidr = format!("{}/30", spec.host_addr);
        ip(&["addr", "add", &host_cidr, "dev", spec.host_if])?;
        ip(&["link", "set", spec.host_if, "up"])?;
        let ns_cidr = format!("{}/30", spec.ns_addr);
        in_ns(&["addr", "add", &ns_cidr, "dev", spec.ns_if])?;
        in_ns(&["link", "set", spec.ns_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(self.0);
    }
}

/// Kills whatever still runs in the namespace, then removes it and the veth.
pub fn remove(spec: Spec) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", spec.ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory effects; these are processes started
            // in our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    quiet(&["link", "del", spec.host_if]);
    quiet(&["netns", "del", spec.ns]);
}

/// Whether the namespace exists (for a final leftover check).
pub fn exists(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns))
        })
}
