//! The kernel boundary, attacked from inside `enforcer launch`: for a policy
//! that allows nothing, no packet of the agent's may reach the test host, by
//! any route. Then: what the policy does allow works end to end.

use std::{io::BufRead as _, net::TcpStream, time::Duration};

use enforcer_e2e::{Launch, TestHost, files, leftovers};

const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";

/// Runs the probe with `args` as `nobody` under a deny-all policy and returns its stdout line.
fn probe_denied(args: &[&str]) -> String {
    let out = Launch::probe(DENY_ALL, args).run();
    out.assert_clean();
    assert!(
        !out.stdout.contains("vendor-echo"),
        "{args:?} got an answer from the test host: {out:?}"
    );
    out.stdout.trim().to_string()
}

#[test]
fn tcp_over_ipv4_ipv6_and_mapped_ipv6_never_reaches_the_test_host() {
    let host = TestHost::new();
    for target in [
        host.tcp4().to_string(),
        host.tcp6().to_string(),
        host.tcp_mapped(),
    ] {
        let line = probe_denied(&["tcp", &target]);
        assert!(line.starts_with("err"), "{target}: {line}");
    }
    host.assert_untouched("tcp v4/v6/mapped");
}

#[test]
fn tcp_refusals_are_reported_with_the_destination() {
    let host = TestHost::new();
    let out = Launch::probe(DENY_ALL, &["tcp", &host.tcp4().to_string()]).run();
    assert!(
        out.stderr
            .contains(&format!("refused connection {}", host.tcp4())),
        "{}",
        out.stderr
    );
    host.assert_untouched("tcp report");
}

#[test]
fn udp_in_every_form_is_refused() {
    let host = TestHost::new();
    let udp4 = format!("{}:{}", host.v4, host.udp_port);
    let udp6 = format!("[{}]:{}", host.v6, host.udp_port);
    let quic = format!("{}:443", host.v4);
    let mapped = format!("[::ffff:{}]:{}", host.v4, host.udp_port);
    for (action, target) in [
        ("udp-sendto", &udp4),
        ("udp-connect", &udp4),
        ("udp-sendmmsg", &udp4),
        ("udp-sendto", &udp6),
        ("udp-connect", &udp6),
        ("udp-sendmmsg", &udp6),
        ("udp-sendto", &mapped),
        ("udp-sendto", &quic),
    ] {
        let line = probe_denied(&[action, target]);
        assert!(line.starts_with("err EPERM"), "{action} {target}: {line}");
    }
    host.assert_untouched("udp");
}

#[test]
fn dns_to_the_test_host_is_answered_by_the_enforcer() {
    let host = TestHost::new();
    let dns4 = format!("{}:53", host.v4);
    let dns6 = format!("[{}]:53", host.v6);
    for server in [&dns4, &dns6] {
        let line = probe_denied(&["dns-udp", server]);
        // The reply claims to come from the address the agent asked (recvmsg rewrite).
        assert!(
            line.starts_with(&format!("ok from {server} rcode 3")),
            "udp {server}: {line}"
        );
        let line = probe_denied(&["dns-tcp", server]);
        assert!(line.starts_with("ok rcode 3"), "tcp {server}: {line}");
    }
    host.assert_untouched("dns");
}

#[test]
fn tcp_fast_open_data_does_not_leave() {
    let host = TestHost::new();
    for target in [host.tcp4().to_string(), host.tcp6().to_string()] {
        probe_denied(&["tfo", &target]);
    }
    host.assert_untouched("tcp fast open");
}

/// Opens net.ipv4.ping_group_range for the test, restoring it on drop.
struct PingRange(String);

impl PingRange {
    fn open() -> Self {
        let path = "/proc/sys/net/ipv4/ping_group_range";
        let old = std::fs::read_to_string(path).expect("read ping_group_range");
        std::fs::write(path, "0 2147483647").expect("open ping_group_range");
        Self(old)
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", self.0.trim());
    }
}

#[test]
fn ping_sockets_are_refused_even_when_the_host_allows_them() {
    let host = TestHost::new();
    let _range = PingRange::open();
    let line = probe_denied(&["ping", &host.v4.to_string()]);
    assert!(line.starts_with("err EPERM"), "{line}");
    host.assert_untouched("ping");
}

#[test]
fn raw_and_packet_sockets_are_refused_even_for_a_root_agent() {
    let host = TestHost::new();
    for (args, what) in [
        (vec!["raw".to_string(), host.v4.to_string()], "raw"),
        (vec!["packet".to_string(), host.host_if.clone()], "packet"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Launch::probe(DENY_ALL, &args)
            .user(Some("root"))
            .flag("--allow-root")
            .run();
        out.assert_clean();
        assert!(
            out.stdout.starts_with("err EPERM"),
            "{what} as root: {out:?}"
        );
        assert!(
            out.stderr.contains("WARNING"),
            "a root agent must be warned about: {}",
            out.stderr
        );
        // As an ordinary user too.
        let line = probe_denied(&args);
        assert!(line.starts_with("err EPERM"), "{what}: {line}");
    }
    host.assert_untouched("raw/packet");
}

#[test]
fn other_socket_families_and_user_namespaces_are_refused() {
    for (action, expect) in [
        ("vsock", "err EPERM"),
        ("netlink-other", "err EPERM"),
        ("unix-socket", "err EPERM"),
        ("userns", "err EPERM"),
        ("netlink-route", "ok created"),
    ] {
        let out = Launch::probe(DENY_ALL, &[action]).run();
        out.assert_clean();
        assert!(out.stdout.starts_with(expect), "{action}: {out:?}");
    }
}

#[test]
fn typing_into_a_terminal_is_refused_and_reported() {
    // With TIOCSTI an agent could queue commands for the user's shell to run
    // after the run, outside every confinement.
    for action in ["tiocsti", "tioclinux"] {
        let out = Launch::probe(DENY_ALL, &[action]).run();
        out.assert_clean();
        assert!(out.stdout.starts_with("err EPERM"), "{action}: {out:?}");
        assert!(
            out.stderr.contains("typing into a terminal"),
            "{action}: refusal not reported: {out:?}"
        );
    }
}

#[test]
fn source_routing_options_are_refused() {
    let line = probe_denied(&["ipoptions"]);
    assert!(line.starts_with("err EPERM"), "{line}");
}

#[test]
fn a_double_forked_grandchild_is_confined_and_killed_with_the_run() {
    let host = TestHost::new();
    let result = files::agent_writable("grandchild.txt");
    let result_s = result.to_str().expect("utf-8");
    let out = Launch::probe(
        DENY_ALL,
        &["grandchild", &host.tcp4().to_string(), result_s],
    )
    .run();
    out.assert_clean();
    let line = std::fs::read_to_string(&result).expect("grandchild result");
    assert!(line.starts_with("err"), "grandchild: {line:?}");
    assert!(
        leftovers::eventually(5, || leftovers::processes_matching(result_s).is_empty()),
        "the grandchild outlived the run"
    );
    host.assert_untouched("grandchild");
}

/// Starts a probe that listens; returns the address line it prints, the
/// running launch, and a reader for the rest of its output.
fn listening(
    args: &[&str],
) -> (
    String,
    enforcer_e2e::launch::Running,
    std::thread::JoinHandle<String>,
) {
    let mut running = Launch::probe(DENY_ALL, args).spawn();
    let mut reader = std::io::BufReader::new(running.take_stdout());
    let mut line = String::new();
    reader.read_line(&mut line).expect("read listening line");
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut s);
        s
    });
    (line.trim().to_string(), running, rest)
}

#[test]
fn listeners_in_the_agent_are_unreachable_from_the_network() {
    let host = TestHost::new();
    // An explicit bind to a non-loopback address of this host is refused.
    let line = probe_denied(&["bind", &format!("{}:0", host.host_v4)]);
    assert!(line.starts_with("err EPERM"), "{line}");
    // A wildcard bind to a fixed port (a server) becomes a loopback bind;
    // one to port 0 stays wildcard and is kept off the network by the
    // packet backstop. Neither is reachable from the test host.
    let free = std::net::TcpListener::bind("0.0.0.0:0").expect("pick a port");
    let fixed = free.local_addr().expect("addr").port();
    drop(free);
    for (bind, expect) in [
        (format!("0.0.0.0:{fixed}"), "listening 127.0.0.1:"),
        (String::from("0.0.0.0:0"), "listening 0.0.0.0:"),
    ] {
        let (listening_line, running, rest) = listening(&["listen", &bind, "3"]);
        assert!(
            listening_line.starts_with(expect),
            "{bind}: {listening_line}"
        );
        let port: u16 = listening_line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert!(
            !connect_from_test_host(&host, port),
            "reached a listener bound to {bind}"
        );
        let out = running.wait(Duration::from_secs(30));
        let rest = rest.join().unwrap_or_default();
        assert!(rest.contains("ok accepted 0"), "{rest} {out:?}");
        out.assert_clean();
    }
    // listen() without bind() binds the wildcard address with no bind hook:
    // the packet backstop must still keep the test host out.
    let (listening_line, running, rest) = listening(&["listen-autobind", "3"]);
    assert!(
        listening_line.starts_with("listening 0.0.0.0:"),
        "{listening_line}"
    );
    let port: u16 = listening_line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        !connect_from_test_host(&host, port),
        "reached an autobound listener"
    );
    let out = running.wait(Duration::from_secs(30));
    let rest = rest.join().unwrap_or_default();
    assert!(rest.contains("ok accepted 0"), "{rest} {out:?}");
    out.assert_clean();
}

/// Tries, from inside the test host, to connect to this host's veth address.
fn connect_from_test_host(host: &TestHost, port: u16) -> bool {
    let target = std::net::SocketAddr::from((host.host_v4, port));
    enforcer_e2e::netns::in_netns(&host.ns, move || {
        TcpStream::connect_timeout(&target, Duration::from_millis(1500)).is_ok()
    })
    .join()
    .expect("connect thread")
}

#[test]
fn an_allowed_tcp_destination_works_end_to_end_and_getpeername_shows_it() {
    let host = TestHost::new();
    let policy = format!(
        "[[tcp]]\nhost = \"{}\"\nport = {}\n\n[[tcp]]\nhost = \"{}\"\nport = {}\n",
        host.v4, host.tcp_port, host.v6, host.tcp_port
    );
    for target in [host.tcp4(), host.tcp6()] {
        let out = Launch::probe(&policy, &["tcp-echo", &target.to_string(), "hello"]).run();
        out.assert_clean();
        assert_eq!(
            out.stdout.trim(),
            format!("ok peer {target} reply vendor-echo hello"),
            "{out:?}"
        );
    }
    // Another port on the same host stays closed.
    let line = Launch::probe(&policy, &["tcp", &format!("{}:{}", host.v4, host.udp_port)]).run();
    assert!(line.stdout.starts_with("err"), "{line:?}");
    assert_eq!(
        host.counters.snapshot().0,
        2,
        "exactly the two allowed connections arrived"
    );
}

#[test]
fn an_allowed_name_is_dialed_by_the_name_the_policy_gives() {
    let host = TestHost::new();
    let policy = format!(
        "[[tcp]]\nhost = \"vendor.test\"\nport = {}\n",
        host.tcp_port
    );
    let out = Launch::probe(&policy, &["tcp-echo", &host.tcp4().to_string(), "by-name"])
        .flag("--resolve")
        .flag(format!("vendor.test={}", host.v4))
        .run();
    out.assert_clean();
    assert!(out.stdout.contains("reply vendor-echo by-name"), "{out:?}");
    // Without the name mapping to that address, the same dial is refused.
    let out = Launch::probe(&policy, &["tcp-echo", &host.tcp4().to_string(), "x"])
        .flag("--resolve")
        .flag("vendor.test=10.231.255.254")
        .run();
    assert!(out.stdout.starts_with("err"), "{out:?}");
}

#[test]
fn loopback_ports_are_refused_unless_listed() {
    let local = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = local.local_addr().expect("addr").port();
    local.set_nonblocking(true).expect("nonblocking");
    let target = format!("127.0.0.1:{port}");
    let line = probe_denied(&["tcp-peer", &target]);
    assert!(line.starts_with("err EPERM"), "unlisted loopback: {line}");
    let listed = format!("[local]\nloopback_ports = [{port}]\n");
    let out = Launch::probe(&listed, &["tcp-peer", &target]).run();
    out.assert_clean();
    assert_eq!(out.stdout.trim(), format!("ok peer {target}"), "{out:?}");
    assert!(
        local.accept().is_ok(),
        "the listed loopback service saw the connection"
    );
}

/// Moves `pid` into the cgroup directory `to` (as root).
fn move_to_cgroup(pid: u32, to: &std::path::Path) {
    std::fs::write(to.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
}

#[test]
fn a_process_in_a_cgroup_without_a_run_reaches_nothing_not_even_dns() {
    // The programs serve processes by their cgroup's run: a cgroup the
    // programs cover but no run was filed for (a daemon's slice member that
    // did not come through `enforcer exec`; here a cgroup root makes below
    // a run's) reaches nothing, although the run's own policy would allow it.
    let host = TestHost::new();
    let policy = format!(
        "[[tcp]]\nhost = \"{}\"\nport = {}\n",
        host.v4, host.tcp_port
    );
    let go = files::agent_writable("go");
    let done = files::agent_writable("done");
    std::fs::remove_file(&go).expect("rm go");
    std::fs::remove_file(&done).expect("rm done");
    let probe = files::probe();
    let script = format!(
        "echo $$; while [ ! -e {go} ]; do sleep 0.02; done; \
         {probe} tcp-echo {tcp} stray; {probe} dns-udp {v4}:53 vendor.test; \
         {probe} tcp-echo {tcp} stray; echo end; \
         while [ ! -e {done} ]; do sleep 0.02; done",
        go = go.display(),
        done = done.display(),
        probe = probe.display(),
        tcp = host.tcp4(),
        v4 = host.v4,
    );
    let mut running = Launch::new(&policy, &["/bin/sh", "-c", &script]).spawn();
    let run_id = running.run_id();
    let run_cgroup = leftovers::run_cgroup(&run_id);
    let mut lines = std::io::BufReader::new(running.take_stdout()).lines();
    let shell: u32 = lines
        .next()
        .expect("the shell's pid")
        .expect("read")
        .trim()
        .parse()
        .expect("a pid");
    let stray = run_cgroup.join("stray");
    std::fs::create_dir(&stray).expect("mkdir stray cgroup");
    move_to_cgroup(shell, &stray);
    std::fs::write(&go, "").expect("go");
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read");
        if line == "end" {
            break;
        }
        seen.push(line);
    }
    std::fs::write(&done, "").expect("done");
    let out = running.wait(Duration::from_secs(20));
    assert_eq!(seen.len(), 3, "{seen:?} {out:?}");
    for line in &seen {
        assert!(line.starts_with("err EPERM"), "{seen:?}");
    }
    assert!(
        out.stderr.contains("has no enforcer run"),
        "the refusals are reported: {}",
        out.stderr
    );
    host.assert_untouched("a cgroup without a run");
    // The run's end removes the cgroup made below its own too.
    leftovers::assert_run_gone(&run_id);
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(&done);
}
