//! The test host's servers: a TCP echo (v4 and v6), a UDP recorder and a DNS
//! recorder on port 53 (UDP and TCP). Each counts what reaches it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::in_netns;

#[derive(Debug, Default)]
pub struct Counters {
    pub tcp: AtomicUsize,
    pub udp: AtomicUsize,
    pub dns: AtomicUsize,
}

impl Counters {
    /// (tcp connections, udp datagrams, dns queries)
    pub fn snapshot(&self) -> (usize, usize, usize) {
        (
            self.tcp.load(Ordering::SeqCst),
            self.udp.load(Ordering::SeqCst),
            self.dns.load(Ordering::SeqCst),
        )
    }
}

/// TCP echo on v4 and v6 (same port): answers each line with `vendor-echo <line>`.
pub fn start_echo(
    ns: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> (u16, Vec<JoinHandle<()>>) {
    let (l4, l6) = in_netns(ns, move || {
        let l4 = TcpListener::bind((v4, 0)).expect("bind echo v4");
        let port = l4.local_addr().expect("addr").port();
        let l6 = TcpListener::bind(SocketAddr::from((v6, port))).expect("bind echo v6");
        (l4, l6)
    })
    .join()
    .expect("bind in netns");
    let port = l4.local_addr().expect("addr").port();
    let threads = [l4, l6]
        .into_iter()
        .map(|l| {
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || echo_loop(l, &stop, &counters))
        })
        .collect();
    (port, threads)
}

fn echo_loop(l: TcpListener, stop: &AtomicBool, counters: &Counters) {
    l.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((mut s, _)) => {
                counters.tcp.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = s.read(&mut buf)
                        && n > 0
                    {
                        let line = String::from_utf8_lossy(&buf[..n]);
                        let _ = s.write_all(format!("vendor-echo {}\n", line.trim()).as_bytes());
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A UDP socket on v4 and v6 that counts datagrams.
pub fn start_udp(
    ns: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> (u16, Vec<JoinHandle<()>>) {
    let (u4, u6) = in_netns(ns, move || {
        let u4 = UdpSocket::bind((v4, 0)).expect("bind udp v4");
        let port = u4.local_addr().expect("addr").port();
        let u6 = UdpSocket::bind(SocketAddr::from((v6, port))).expect("bind udp v6");
        (u4, u6)
    })
    .join()
    .expect("bind in netns");
    let port = u4.local_addr().expect("addr").port();
    let threads = [u4, u6]
        .into_iter()
        .map(|u| {
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || udp_loop(&u, &stop, &counters.udp))
        })
        .collect();
    (port, threads)
}

fn udp_loop(u: &UdpSocket, stop: &AtomicBool, counter: &AtomicUsize) {
    let _ = u.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if u.recv_from(&mut buf).is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// DNS on port 53 (UDP and TCP, v4 and v6) that only counts queries.
pub fn start_dns(
    ns: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Vec<JoinHandle<()>> {
    let (u4, u6, t4, t6) = in_netns(ns, move || {
        (
            UdpSocket::bind((v4, 53)).expect("bind dns udp v4"),
            UdpSocket::bind(SocketAddr::from((v6, 53))).expect("bind dns udp v6"),
            TcpListener::bind((v4, 53)).expect("bind dns tcp v4"),
            TcpListener::bind(SocketAddr::from((v6, 53))).expect("bind dns tcp v6"),
        )
    })
    .join()
    .expect("bind in netns");
    let mut threads = Vec::new();
    for u in [u4, u6] {
        let stop = Arc::clone(&stop);
        let counters = Arc::clone(&counters);
        threads.push(std::thread::spawn(move || {
            udp_loop(&u, &stop, &counters.dns)
        }));
    }
    for t in [t4, t6] {
        let stop = Arc::clone(&stop);
        let counters = Arc::clone(&counters);
        threads.push(std::thread::spawn(move || {
            t.set_nonblocking(true).expect("nonblocking");
            while !stop.load(Ordering::SeqCst) {
                match t.accept() {
                    Ok(_) => {
                        counters.dns.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }
    threads
}
