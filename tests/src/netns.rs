//! A test host: a network namespace joined to this host by a veth pair, with
//! IPv4 and IPv6 addresses of its own, servers that record what reaches them,
//! and a packet capture on its interface. Anything the agent gets out of its
//! sandbox lands here, and is seen.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::servers::{self, Counters};

/// One fake internet host. Dropping it removes the namespace and its veth.
pub struct TestHost {
    pub ns: String,
    /// The namespace the near end of the veth is in (None: this host's).
    pub client_ns: Option<String>,
    pub host_if: String,
    pub ns_if: String,
    pub host_v4: Ipv4Addr,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Port of the echo server, on both `v4` and `v6`.
    pub tcp_port: u16,
    /// Port of the UDP recorder, on both addresses.
    pub udp_port: u16,
    pub counters: Arc<Counters>,
    /// Names the test host's DNS server answers (add to it freely).
    pub zone: servers::Zone,
    /// Every query the test host's DNS server received: (name, type).
    pub dns_log: servers::QueryLog,
    captured: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Runs `f` on a thread that has entered the namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

impl TestHost {
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A test host reachable from the network namespace `client` (a
    /// container's), and from nowhere else: the near end of its veth pair
    /// is in `client` instead of this host's namespace.
    pub fn new_for(client: &str) -> Self {
        Self::build(Some(client.to_string()))
    }

    fn build(client_ns: Option<String>) -> Self {
        remove_stale_namespaces();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let idx = ((pid.wrapping_mul(7)).wrapping_add(n) % 250 + 1) as u8;
        let ns = format!("enft-{pid}-{n}");
        let host_if = format!("enft{idx}h");
        let ns_if = format!("enft{idx}n");
        ip_quiet(&["link", "del", &host_if]);
        ip_quiet(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        if let Some(client) = &client_ns {
            ip(&["link", "set", &host_if, "netns", client]);
        }
        // `ip` on the near end: in the client's namespace if there is one.
        let near = |args: &[&str]| {
            let mut full: Vec<&str> = Vec::new();
            if let Some(client) = &client_ns {
                full.extend(["-n", client.as_str()]);
            }
            full.extend_from_slice(args);
            ip(&full);
        };
        let host_v4 = Ipv4Addr::new(10, 231, idx, 1);
        let v4 = Ipv4Addr::new(10, 231, idx, 2);
        let host_v6: Ipv6Addr = format!("fd00:231:{idx:x}::1").parse().expect("v6");
        let v6: Ipv6Addr = format!("fd00:231:{idx:x}::2").parse().expect("v6");
        near(&["addr", "add", &format!("{host_v4}/30"), "dev", &host_if]);
        near(&[
            "-6",
            "addr",
            "add",
            &format!("{host_v6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        near(&["link", "set", &host_if, "up"]);
        let nsx = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        nsx(&["addr", "add", &format!("{v4}/30"), "dev", &ns_if]);
        nsx(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        nsx(&["link", "set", &ns_if, "up"]);
        nsx(&["link", "set", "lo", "up"]);
        // Routes back to the host for both families (replies from the ns).
        nsx(&["route", "add", "default", "via", &host_v4.to_string()]);
        nsx(&["-6", "route", "add", "default", "via", &host_v6.to_string()]);

        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let captured = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();

        // Capture first, so it sees everything from here on.
        let (cap_ready_tx, cap_ready_rx) = std::sync::mpsc::channel();
        {
            let stop = Arc::clone(&stop);
            let captured = Arc::clone(&captured);
            let ifname = ns_if.clone();
            threads.push(in_netns(&ns, move || {
                capture(&ifname, &stop, &captured, cap_ready_tx)
            }));
        }
        cap_ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture started");

        let (tcp_port, tcp_threads) =
            servers::start_echo(&ns, v4, v6, Arc::clone(&stop), Arc::clone(&counters));
        threads.extend(tcp_threads);
        let (udp_port, udp_threads) =
            servers::start_udp(&ns, v4, v6, Arc::clone(&stop), Arc::clone(&counters));
        threads.extend(udp_threads);
        let zone: servers::Zone = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let dns_log: servers::QueryLog = Arc::new(Mutex::new(Vec::new()));
        threads.extend(servers::start_dns(
            &ns,
            v4,
            v6,
            Arc::clone(&stop),
            Arc::clone(&counters),
            Arc::clone(&zone),
            Arc::clone(&dns_log),
        ));

        Self {
            ns,
            client_ns,
            host_if,
            ns_if,
            host_v4,
            v4,
            v6,
            tcp_port,
            udp_port,
            counters,
            zone,
            dns_log,
            captured,
            stop,
            threads,
        }
    }

    /// Makes the test host's DNS server answer `name` with this host's addresses.
    pub fn serve_name(&self, name: &str) {
        if let Ok(mut z) = self.zone.lock() {
            z.insert(name.to_string(), vec![self.v4.into(), self.v6.into()]);
        }
    }

    /// The queries the test host's DNS server saw for `name`.
    pub fn dns_queries_for(&self, name: &str) -> Vec<String> {
        self.dns_log
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, t)| t.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A resolv.conf pointing at this host, for agents that read one.
    pub fn resolv_conf(&self) -> String {
        format!(
            "nameserver {}
",
            self.v4
        )
    }

    pub fn tcp4(&self) -> SocketAddr {
        SocketAddr::from((self.v4, self.tcp_port))
    }

    pub fn tcp6(&self) -> SocketAddr {
        SocketAddr::from((self.v6, self.tcp_port))
    }

    /// The IPv4 echo address written as IPv4-mapped IPv6.
    pub fn tcp_mapped(&self) -> String {
        format!("[::ffff:{}]:{}", self.v4, self.tcp_port)
    }

    /// Descriptions of every IP packet that reached the test host so far
    /// (neighbour discovery and similar link chatter excluded).
    pub fn packets(&self) -> Vec<String> {
        self.captured.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Forgets what was captured so far (after a legitimate exchange).
    pub fn clear_capture(&self) {
        if let Ok(mut v) = self.captured.lock() {
            v.clear();
        }
    }

    /// Asserts that nothing reached the test host: no packet, no connection,
    /// no datagram, no DNS query.
    pub fn assert_untouched(&self, what: &str) {
        // Give in-flight packets a moment to arrive.
        std::thread::sleep(Duration::from_millis(300));
        let packets = self.packets();
        assert!(
            packets.is_empty(),
            "{what}: the test host saw packets: {packets:#?}"
        );
        let c = self.counters.snapshot();
        assert_eq!(
            c,
            (0, 0, 0),
            "{what}: the test host's servers saw (tcp, udp, dns) = {c:?}"
        );
    }
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        match &self.client_ns {
            Some(c) => ip_quiet(&["-n", c, "link", "del", &self.host_if]),
            None => ip_quiet(&["link", "del", &self.host_if]),
        }
        ip_quiet(&["netns", "del", &self.ns]);
    }
}

/// Removes test namespaces left by test processes that no longer exist
/// (a test binary killed mid-run cannot run its destructors).
fn remove_stale_namespaces() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("enft-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                ip_quiet(&["netns", "del", &name]);
            }
        }
    });
}

/// Records every IP packet arriving on `ifname` that is not link-local chatter.
fn capture(
    ifname: &str,
    stop: &AtomicBool,
    out: &Mutex<Vec<String>>,
    ready: std::sync::mpsc::Sender<()>,
) {
    const ETH_P_ALL: u16 = 0x0003;
    // SAFETY: creating and configuring a packet socket in this thread's netns.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ALL.to_be()),
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from_raw_fd(fd)
    };
    let c = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: binding the packet socket to the interface.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = libc::if_nametoindex(c.as_ptr()) as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            rc,
            0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let _ = ready.send(());
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: recvfrom into our buffer.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n <= 0 {
            continue;
        }
        // Only what arrives at the host (not what it sends back).
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(desc) = describe(&buf[..n as usize])
            && let Ok(mut v) = out.lock()
        {
            v.push(desc);
        }
    }
}

/// A one-line description of an Ethernet frame, or None for link chatter
/// (ARP, IPv6 neighbour discovery, router solicitations, MLD).
fn describe(frame: &[u8]) -> Option<String> {
    if frame.len() < 14 {
        return Some(format!("runt frame of {} bytes", frame.len()));
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let p = &frame[14..];
    match ethertype {
        0x0806 => None,
        0x0800 if p.len() >= 20 => {
            let proto = p[9];
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            Some(format!("IPv4 proto {proto} {src} -> {dst}"))
        }
        0x86dd if p.len() >= 40 => {
            let next = p[6];
            if next == 58 && p.len() > 40 && matches!(p[40], 130..=137 | 143) {
                return None;
            }
            if next == 0 {
                // Hop-by-hop options: MLD reports travel with them.
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            Some(format!("IPv6 next {next} {src} -> {dst}"))
        }
        other => Some(format!("ethertype {other:#06x}, {} bytes", frame.len())),
    }
}
