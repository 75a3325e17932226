//! Memory and CPU of a process, sampled from /proc while a measurement runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// One reading of /proc/PID/{status,stat}.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// Resident set (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// User + system CPU time of all threads, seconds.
    pub cpu_s: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no side effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `pid`'s memory and CPU time; None once it is gone.
pub fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    let cpu_s = (ticks(11)? + ticks(12)?) / clock_ticks();
    Some(Reading {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_s,
    })
}

/// CPU seconds of `pid` and its direct children (nginx: master and workers).
pub fn tree_cpu_s(pid: u32) -> f64 {
    let own = read(pid).map_or(0.0, |r| r.cpu_s);
    own + children(pid)
        .into_iter()
        .filter_map(read)
        .map(|r| r.cpu_s)
        .sum::<f64>()
}

/// The direct children of `pid` (from every thread's `children` list).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// CPU seconds used by waited-for children of this process so far
/// (getrusage RUSAGE_CHILDREN): a child's exact total once it is reaped.
pub fn reaped_children_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The cgroup v2 directory of the agent `enforcer launch` (pid) started:
/// its child that lives under an `enforcer/<run>` cgroup.
fn run_cgroup(enforcer: u32) -> Option<std::path::PathBuf> {
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })?;
    children(enforcer).into_iter().find_map(|c| {
        let cg = std::fs::read_to_string(format!("/proc/{c}/cgroup")).ok()?;
        let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
        rel.contains("/enforcer/")
            .then(|| mount.join(rel.trim_start_matches('/')))
    })
}

/// Whether a cgroup still has processes (`cgroup.events`; false once it is gone).
fn populated(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|e| e.lines().any(|l| l.trim() == "populated 1"))
}

/// CPU seconds used by every process of a cgroup (cgroup v2 `cpu.stat`).
fn cgroup_cpu_s(dir: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|us| us / 1e6)
}

/// The machine's CPU time so far (/proc/stat, all CPUs), seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Time not idle (user, nice, system, irq, softirq).
    pub busy_s: f64,
    /// Time the hypervisor ran something else on our vCPUs.
    pub steal_s: f64,
}

pub fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let f = |i: usize| v.get(i).copied().unwrap_or(0.0) / clock_ticks();
    // user nice system idle iowait irq softirq steal (guest is within user).
    MachineCpu {
        busy_s: f(0) + f(1) + f(2) + f(5) + f(6),
        steal_s: f(7),
    }
}

/// What a sampler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples {
    /// The reading at the baseline instant (or the first one).
    pub baseline: Reading,
    /// The last reading before the process ended or sampling stopped.
    pub last: Reading,
    /// Highest VmRSS seen after the baseline, KiB.
    pub max_rss_kib: u64,
    /// CPU seconds the agent's cgroup used after the baseline (when the
    /// sampled process is `enforcer launch`).
    pub agent_cpu_s: Option<f64>,
}

impl Samples {
    /// CPU seconds the process used between the baseline and the last reading.
    pub fn cpu_s(&self) -> f64 {
        (self.last.cpu_s - self.baseline.cpu_s).max(0.0)
    }
}

/// Samples a process every 10 ms on a thread until stopped or gone.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Samples>>,
}

/// When the baseline reading (CPU, idle memory) is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// At once.
    Now,
    /// When the sampled `enforcer launch` has started its agent (its own
    /// start-up is then over): the agent's cgroup CPU is followed too.
    AgentStarted,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, baseline: Baseline) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut s = Samples::default();
            let mut have_baseline = false;
            let mut agent: Option<(std::path::PathBuf, f64)> = None;
            while !flag.load(Ordering::Relaxed) {
                let Some(r) = read(pid) else { break };
                if !have_baseline {
                    match baseline {
                        Baseline::Now => have_baseline = true,
                        Baseline::AgentStarted => {
                            agent = run_cgroup(pid).and_then(|d| cgroup_cpu_s(&d).map(|c| (d, c)));
                            have_baseline = agent.is_some();
                        }
                    }
                    if have_baseline {
                        s.baseline = r;
                    }
                }
                if let Some((dir, base)) = &agent {
                    if let Some(c) = cgroup_cpu_s(dir) {
                        s.agent_cpu_s = Some(c - base);
                    }
                    // The agent is gone: what enforcer does next is teardown.
                    if !populated(dir) {
                        break;
                    }
                }
                if have_baseline {
                    s.max_rss_kib = s.max_rss_kib.max(r.rss_kib);
                }
                s.last = r;
                std::thread::sleep(Duration::from_millis(10));
            }
            if !have_baseline {
                s.baseline = s.last;
            }
            s
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling (if the process is still there) and returns the samples.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
