//! The test host's servers: a TCP echo (v4 and v6), a UDP recorder and a DNS
//! server on port 53 (UDP and TCP) that answers from a zone and logs every
//! query. Each counts what reaches it.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
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

/// The zone the test host's DNS server answers: names to addresses.
pub type Zone = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// Every query the test host's DNS server received: (name, type).
pub type QueryLog = Arc<Mutex<Vec<(String, String)>>>;

/// Answers a DNS query from `zone` (NXDOMAIN for unknown names), logging it.
fn dns_answer(wire: &[u8], zone: &Zone, log: &QueryLog) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Message, MessageType, ResponseCode},
        rr::{RData, Record, RecordType, rdata},
    };
    let q = Message::from_vec(wire).ok()?;
    let question = q.queries().first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if let Ok(mut l) = log.lock() {
        l.push((name.clone(), question.query_type().to_string()));
    }
    let addrs = zone.lock().ok()?.get(&name).cloned();
    let mut resp = Message::new();
    resp.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match addrs {
        None => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
        Some(addrs) => {
            for a in addrs {
                let rdata = match (a, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(question.name().clone(), 300, rdata));
            }
        }
    }
    resp.to_vec().ok()
}

/// DNS on port 53 (UDP and TCP, v4 and v6): answers from `zone`, logs every
/// query in `log` and counts them.
#[allow(clippy::too_many_arguments)]
pub fn start_dns(
    ns: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    zone: Zone,
    log: QueryLog,
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
        let (stop, counters, zone, log) = (
            Arc::clone(&stop),
            Arc::clone(&counters),
            Arc::clone(&zone),
            Arc::clone(&log),
        );
        threads.push(std::thread::spawn(move || {
            let _ = u.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = u.recv_from(&mut buf) {
                    counters.dns.fetch_add(1, Ordering::SeqCst);
                    if let Some(resp) = dns_answer(&buf[..n], &zone, &log) {
                        let _ = u.send_to(&resp, peer);
                    }
                }
            }
        }));
    }
    for t in [t4, t6] {
        let (stop, counters, zone, log) = (
            Arc::clone(&stop),
            Arc::clone(&counters),
            Arc::clone(&zone),
            Arc::clone(&log),
        );
        threads.push(std::thread::spawn(move || {
            t.set_nonblocking(true).expect("nonblocking");
            while !stop.load(Ordering::SeqCst) {
                match t.accept() {
                    Ok((mut s, _)) => {
                        counters.dns.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).is_ok() {
                            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if s.read_exact(&mut q).is_ok()
                                && let Some(resp) = dns_answer(&q, &zone, &log)
                            {
                                let _ = s.write_all(&(resp.len() as u16).to_be_bytes());
                                let _ = s.write_all(&resp);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }
    threads
}
