//! The enforcer's resolver, from inside `enforcer launch`: allowed names
//! resolve (through getent, Python and dig) to synthetic addresses, nothing
//! else resolves, and no query for a name the policy does not allow ever
//! reaches the upstream resolver (a test host that logs every query). When
//! upstream fails, the agent's answer and the proxy's say what failed, and
//! retries do not ask upstream again; a flood of refused names does not
//! starve allowed lookups.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use enforcer_e2e::{Launch, Outcome, TestHost, files, netns::in_netns};

/// A test host acting as upstream resolver, and a policy naming some of its names.
struct World {
    host: TestHost,
    policy: String,
}

impl World {
    fn new() -> Self {
        let host = TestHost::new();
        for name in ["api.vendor.test", "db.vendor.test", "files.cdn.vendor.test"] {
            host.serve_name(name);
        }
        let policy = format!(
            r#"
[[host]]
name = "api.vendor.test"
action = "allow"

[[host]]
name = "*.cdn.vendor.test"
action = "allow"

[[tcp]]
host = "db.vendor.test"
port = {port}
"#,
            port = host.tcp_port
        );
        Self { host, policy }
    }

    /// Runs `script` with /bin/sh; the agent's resolv.conf points at the test host.
    fn sh(&self, script: &str) -> Outcome {
        let out = Launch::new(&self.policy, &["/bin/sh", "-c", script])
            .resolver(format!("{}:53", self.host.v4))
            .resolv_conf(&self.host.resolv_conf())
            .run();
        out.assert_clean();
        out
    }
}

fn is_synthetic(addr: &str) -> bool {
    addr.starts_with("198.18.")
        || addr.starts_with("198.19.")
        || addr.starts_with("fd65:6e66:6f72:6365:")
}

#[test]
fn allowed_names_resolve_through_getent_python_and_dig() {
    let w = World::new();
    let out = w.sh(
        "getent ahostsv4 api.vendor.test | head -1; \
         python3 -c 'import socket; print(socket.getaddrinfo(\"api.vendor.test\", 443, socket.AF_INET)[0][4][0])'; \
         dig +short +time=5 api.vendor.test A; \
         dig +short +time=5 api.vendor.test AAAA",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    let getent = lines[0].split_whitespace().next().unwrap_or("");
    assert_eq!(getent, "198.18.0.1", "{out:?}");
    assert_eq!(lines[1], "198.18.0.1", "python: {out:?}");
    assert_eq!(lines[2], "198.18.0.1", "dig A: {out:?}");
    assert!(
        is_synthetic(lines[3]) && lines[3].contains(':'),
        "dig AAAA: {out:?}"
    );
    let upstream = w.host.dns_queries_for("api.vendor.test");
    assert!(
        upstream.iter().any(|t| t == "A"),
        "the upstream resolver was asked: {upstream:?}"
    );
}

#[test]
fn unlisted_names_get_nxdomain_and_never_reach_upstream() {
    let w = World::new();
    w.host.serve_name("leak.vendor.test");
    let out = w.sh(
        "getent hosts secret-data.leak.vendor.test; echo \"getent=$?\"; \
         dig +time=5 leak.vendor.test A | grep -E 'status:|EDE'",
    );
    assert!(out.stdout.contains("getent=2"), "{out:?}");
    assert!(out.stdout.contains("status: NXDOMAIN"), "{out:?}");
    assert!(
        out.stdout.contains("EDE: 15 (Blocked)"),
        "an Extended DNS Error says why: {out:?}"
    );
    assert!(w.host.dns_queries_for("leak.vendor.test").is_empty());
    assert!(
        w.host
            .dns_queries_for("secret-data.leak.vendor.test")
            .is_empty()
    );
    assert!(
        out.stderr.contains("refused dns leak.vendor.test"),
        "{}",
        out.stderr
    );
}

#[test]
fn txt_https_and_any_records_are_refused_for_allowed_names() {
    let w = World::new();
    let out = w.sh(
        "for t in TXT HTTPS SVCB ANY NULL MX; do dig +time=5 api.vendor.test $t | grep -o 'status: [A-Z]*'; done",
    );
    let statuses: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(statuses, vec!["status: REFUSED"; 6], "{out:?}");
    let upstream = w.host.dns_queries_for("api.vendor.test");
    assert!(
        upstream.iter().all(|t| t == "A" || t == "AAAA"),
        "only A/AAAA go upstream: {upstream:?}"
    );
}

#[test]
fn a_wildcard_does_not_become_a_tunnel() {
    let w = World::new();
    let script = files::write(
        "tunnel.py",
        r#"
import socket
ok = 0
for i in range(1000):
    try:
        socket.getaddrinfo("chunk%04d.cdn.vendor.test" % i, 443, socket.AF_INET)
        ok += 1
    except socket.gaierror:
        pass
long_label = "x" * 60 + ".cdn.vendor.test"
try:
    socket.getaddrinfo(long_label, 443, socket.AF_INET)
    print("long label resolved")
except socket.gaierror:
    print("long label refused")
print("resolved", ok)
"#,
    );
    let out = w.sh(&format!("python3 {}", script.display()));
    assert!(out.stdout.contains("long label refused"), "{out:?}");
    let distinct: std::collections::HashSet<String> = w
        .host
        .dns_log
        .lock()
        .expect("log")
        .iter()
        .filter(|(n, _)| n.ends_with(".cdn.vendor.test"))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        distinct.len() <= 64,
        "{} distinct names under the wildcard reached the upstream resolver",
        distinct.len()
    );
    assert!(
        distinct.len() >= 60,
        "the budget admits names up to its limit: {}",
        distinct.len()
    );
    assert!(out.stderr.contains("wildcard budget"), "{}", out.stderr);
}

#[test]
fn malformed_and_truncated_packets_do_not_disturb_the_resolver() {
    let w = World::new();
    let script = files::write(
        "garbage.py",
        &format!(
            r#"
import socket
server = ("{ip}", 53)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for junk in [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01", b"\xff" * 512, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api"]:
    s.sendto(junk, server)
t = socket.create_connection(server, timeout=5)
t.sendall(b"\x00\x05hello")
t.close()
t = socket.create_connection(server, timeout=5)
t.sendall(b"\xff\xff" + b"\x00" * 10)
t.close()
print("sent")
"#,
            ip = w.host.v4
        ),
    );
    let out = w.sh(&format!(
        "python3 {}; dig +short +time=5 api.vendor.test A",
        script.display()
    ));
    assert_eq!(out.stdout.trim(), "sent\n198.18.0.1", "{out:?}");
}

#[test]
fn raw_tcp_by_name_uses_the_resolved_name() {
    let w = World::new();
    let script = files::write(
        "dbclient.py",
        &format!(
            r#"
import socket
s = socket.create_connection(("db.vendor.test", {port}), timeout=10)
s.sendall(b"hello-db\n")
print(s.getpeername()[0], s.recv(100).decode().strip())
"#,
            port = w.host.tcp_port
        ),
    );
    let out = w.sh(&format!("python3 {}", script.display()));
    let line = out.stdout.trim();
    assert!(line.ends_with("vendor-echo hello-db"), "{out:?}");
    assert!(
        is_synthetic(line.split_whitespace().next().unwrap_or("")),
        "{out:?}"
    );
}

/// An upstream resolver on the test host that answers every query with
/// SERVFAIL, and counts them.
struct FailingResolver {
    addr: SocketAddr,
    asked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FailingResolver {
    fn start(host: &TestHost) -> Self {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        let v4 = host.v4;
        let sock = in_netns(&host.ns, move || UdpSocket::bind((v4, 0)).expect("bind"))
            .join()
            .expect("bind in the test host");
        let addr = sock.local_addr().expect("addr");
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let (asked, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (asked, stop) = (Arc::clone(&asked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    asked.fetch_add(1, Ordering::SeqCst);
                    let Ok(q) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mut r = Message::new();
                    r.set_id(q.id())
                        .set_message_type(MessageType::Response)
                        .set_recursion_desired(true)
                        .set_recursion_available(true)
                        .set_response_code(ResponseCode::ServFail)
                        .add_queries(q.queries().to_vec());
                    if let Ok(wire) = r.to_vec() {
                        let _ = sock.send_to(&wire, peer);
                    }
                }
            })
        };
        Self {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FailingResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl World {
    /// Runs `script` with enforcer asking `resolver` about allowed names.
    fn sh_with_resolver(&self, resolver: SocketAddr, script: &str) -> Outcome {
        let out = Launch::new(&self.policy, &["/bin/sh", "-c", script])
            .resolver(resolver.to_string())
            .resolv_conf(&self.host.resolv_conf())
            .run();
        out.assert_clean();
        out
    }
}

/// Issue 12: the proxy's failed dial of an allowed name whose lookup
/// failed read `client error (Connect)`, without saying DNS failed.
#[test]
fn the_proxy_s_failed_dial_says_the_lookup_failed_and_why() {
    let w = World::new();
    let failing = FailingResolver::start(&w.host);
    // A passed-through CONNECT: the proxy dials api.vendor.test itself.
    let out = w.sh_with_resolver(
        failing.addr,
        "curl -s -o /dev/null --max-time 10 https://api.vendor.test/; echo curl=$?",
    );
    assert!(!out.stdout.contains("curl=0"), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "upstream unreachable: DNS lookup of api.vendor.test failed: SERVFAIL from {}",
            failing.addr
        )),
        "{}",
        out.stderr
    );
}

/// Issue 12: the SERVFAIL answered for an allowed name whose lookup failed
/// carried an Extended DNS Error without text.
#[test]
fn a_servfail_for_an_allowed_name_says_what_failed() {
    let w = World::new();
    let failing = FailingResolver::start(&w.host);
    let out = w.sh_with_resolver(
        failing.addr,
        "dig +time=5 +tries=1 api.vendor.test A | grep -E 'status:|EDE'",
    );
    assert!(out.stdout.contains("status: SERVFAIL"), "{out:?}");
    assert!(
        out.stdout.contains(
            "EDE: 0 (Other): (enforcer: lookup of an allowed name failed: \
             the upstream DNS server answered SERVFAIL; not asked again for 5 s)"
        ),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(&failing.addr.port().to_string()),
        "the agent is not told where enforcer's resolver is: {out:?}"
    );
    // A SERVFAIL is an answer: asked once per type, not again.
    assert_eq!(failing.asked.load(Ordering::SeqCst), 2);
}

/// Issue 12: failures were not remembered, so each retry of a failing
/// allowed name waited for upstream's full timeout again. The agent's
/// retry and the proxy's dial now get the remembered failure at once.
#[test]
fn retries_of_a_failing_name_do_not_ask_upstream_again() {
    let w = World::new();
    // The test host's UDP recorder never answers.
    let silent = SocketAddr::from((w.host.v4, w.host.udp_port));
    let out = w.sh_with_resolver(
        silent,
        "for i in 1 2; do dig +time=10 +tries=1 api.vendor.test A | grep -E 'status:|EDE|Query time'; done; \
         curl -s -o /dev/null --max-time 10 https://api.vendor.test/; echo curl=$?",
    );
    assert_eq!(out.stdout.matches("status: SERVFAIL").count(), 2, "{out:?}");
    assert_eq!(
        out.stdout
            .matches(
                "EDE: 22 (No Reachable Authority): (enforcer: lookup of an allowed name \
                 failed: the upstream DNS server did not answer within 4 s; not asked again for"
            )
            .count(),
        2,
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "DNS lookup of api.vendor.test failed: no answer from {silent} within 4 s (timeout) \
             (remembered: upstream is asked again in"
        )),
        "{}",
        out.stderr
    );
    // The first lookup: two attempts per type; the two retries: none
    // (unless the machine is slow enough for the 5 s to run out first).
    let (_, udp, _) = w.host.counters.snapshot();
    assert!(udp <= 8, "upstream was asked {udp} times: {out:?}");
}

/// Issue 12: a flood of distinct refused names made the kernel drop the
/// run's other queries at the resolver's socket. Allowed lookups during
/// one are answered (how fast is measured by `cargo xtask bench dns`).
#[test]
fn allowed_lookups_are_answered_during_a_flood_of_refused_names() {
    let w = World::new();
    let probe = files::probe();
    let out = w.sh(&format!(
        "{probe} dns-flood {v4}:53 api.vendor.test 30000 6 & \
         sleep 1; for i in 1 2 3 4 5; do dig +short +time=3 +tries=1 api.vendor.test A; done; wait",
        probe = probe.display(),
        v4 = w.host.v4,
    ));
    let answered = out
        .stdout
        .lines()
        .filter(|l| l.trim() == "198.18.0.1")
        .count();
    assert_eq!(answered, 5, "{out:?}");
    assert!(out.stdout.contains("ok flood sent"), "{out:?}");
}
