//! The HTTP(S) proxy, end to end: real TLS with curl and Python inside
//! `enforcer launch`, against a fake vendor with its own CA on a test host.

use enforcer_e2e::{
    Launch, Outcome, files,
    vendor::NAMES,
    world::{VendorWorld, statuses},
};

const POLICY: &str = r#"
[run]
name = "http-test"

[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["GET", "HEAD"]
  path = "/v1/**"
  action = "allow"
  [[host.rule]]
  method = ["POST", "PUT"]
  path = "/v1/upload"
  action = "allow"
  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "ask"

[[host]]
name = "*.cdn.vendor.test"
  [[host.rule]]
  method = "GET"
  path = "/**"
  action = "allow"

[[host]]
name = "open.vendor.test"
action = "allow"
"#;

/// The vendor world, launching under POLICY.
struct World(VendorWorld);

impl std::ops::Deref for World {
    type Target = VendorWorld;
    fn deref(&self) -> &VendorWorld {
        &self.0
    }
}

impl World {
    fn new() -> Self {
        Self(VendorWorld::new())
    }

    fn launch(&self, command: &[&str]) -> Launch {
        self.0.launch(POLICY, command)
    }

    fn curl(&self, transparent: bool, args: &[&str]) -> Outcome {
        self.0.curl(POLICY, transparent, args)
    }
}

#[test]
fn allowed_get_passes_and_denied_post_gets_403_json_on_both_paths() {
    let w = World::new();
    for transparent in [false, true] {
        let out = w.curl(transparent, &["https://api.vendor.test/v1/customers/42"]);
        assert_eq!(
            statuses(&out),
            vec!["200"],
            "transparent={transparent}: {out:?}"
        );
        assert!(out.stdout.contains("\"vendor\":\"fake\""), "{}", out.stdout);

        let out = w.curl(
            transparent,
            &[
                "-X",
                "POST",
                "-d",
                "x=1",
                "https://api.vendor.test/v1/charges",
            ],
        );
        assert_eq!(
            statuses(&out),
            vec!["403"],
            "transparent={transparent}: {out:?}"
        );
        let body = out.stdout.lines().next().unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(body).expect("403 body is JSON");
        assert_eq!(json["host"], "api.vendor.test");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/v1/charges");
        assert_eq!(json["run"].as_str(), out.run_id.as_deref());
        assert!(
            json["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{json}"
        );
    }
    assert_eq!(w.vendor.count("GET", "/v1/customers/42"), 2);
    assert_eq!(
        w.vendor.count("POST", "/v1/charges"),
        0,
        "a refused request reached the vendor"
    );
}

#[test]
fn ask_rules_are_refused_at_once_without_an_approver() {
    let w = World::new();
    let out = w
        .launch(&[
            "/usr/bin/curl",
            "-sS",
            "-m",
            "20",
            "-w",
            "\n@@ %{http_code} %{http_version} %{num_connects}\n",
            "-X",
            "POST",
            "https://api.vendor.test/v1/refunds",
        ])
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    assert_eq!(statuses(&out), vec!["403"], "{out:?}");
    assert!(out.stdout.contains("approval required"), "{}", out.stdout);
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 0);
}

#[test]
fn unlisted_hosts_are_refused_and_wildcards_do_not_widen() {
    let w = World::new();
    for transparent in [false, true] {
        // A name the policy does not list.
        let out = w.curl(transparent, &["https://other.vendor.test/v1/x"]);
        assert!(!statuses(&out).contains(&"200".to_string()), "{out:?}");
        // The wildcard covers subdomains, not the bare domain.
        let out = w.curl(transparent, &["https://files.cdn.vendor.test/a.txt"]);
        assert_eq!(statuses(&out), vec!["200"], "wildcard subdomain: {out:?}");
        let out = w.curl(transparent, &["https://cdn.vendor.test/a.txt"]);
        assert!(
            !statuses(&out).contains(&"200".to_string()),
            "bare domain under a wildcard: {out:?}"
        );
    }
    assert!(
        w.vendor
            .seen()
            .iter()
            .all(|s| s.host != "other.vendor.test" && s.host != "cdn.vendor.test")
    );
}

#[test]
fn pass_through_hosts_show_the_vendors_own_certificate() {
    let w = World::new();
    let ca = w.vendor.ca_file.to_str().expect("utf-8").to_string();
    for transparent in [false, true] {
        // Trusting only the vendor's CA works for a passed-through host...
        let out = w.curl(
            transparent,
            &["--cacert", &ca, "https://open.vendor.test/anything"],
        );
        assert_eq!(statuses(&out), vec!["200"], "pass-through: {out:?}");
        // ...and fails for an intercepted one (its certificate comes from the run's CA).
        let out = w.curl(
            transparent,
            &["--cacert", &ca, "https://api.vendor.test/v1/x"],
        );
        assert_eq!(
            statuses(&out),
            vec!["000"],
            "intercepted with vendor CA only: {out:?}"
        );
    }
}

#[test]
fn a_host_header_that_differs_from_sni_is_refused() {
    let w = World::new();
    for transparent in [false, true] {
        let out = w.curl(
            transparent,
            &[
                "-H",
                "Host: other.vendor.test",
                "https://api.vendor.test/v1/customers",
            ],
        );
        assert_eq!(statuses(&out), vec!["403"], "{out:?}");
        assert!(out.stdout.contains("domain fronting"), "{}", out.stdout);
    }
    assert!(w.vendor.seen().is_empty(), "{:?}", w.vendor.seen());
}

#[test]
fn http2_and_http1_both_work_end_to_end() {
    let w = World::new();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = w.curl(true, &[flag, "https://api.vendor.test/v1/version"]);
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("@@ "))
            .unwrap_or("");
        assert_eq!(line, format!("@@ 200 {version} 1"), "{flag}: {out:?}");
    }
}

#[test]
fn keep_alive_survives_denied_requests() {
    let w = World::new();
    // One HTTP/1.1 connection (transparent path): allowed, denied, allowed,
    // denied, allowed, all on the same socket.
    let script = format!(
        r#"
import http.client, socket, ssl
sock = socket.create_connection(("{ip}", 443))
ctx = ssl.create_default_context()
conn = http.client.HTTPSConnection("api.vendor.test", 443, context=ctx)
conn.sock = ctx.wrap_socket(sock, server_hostname="api.vendor.test")
first = conn.sock
codes = []
for method, path in [("GET", "/v1/a"), ("POST", "/v1/denied"), ("GET", "/v1/b"), ("DELETE", "/v1/a"), ("GET", "/v1/c")]:
    conn.request(method, path, body=b"x" if method == "POST" else None)
    r = conn.getresponse()
    r.read()
    codes.append(str(r.status))
    assert conn.sock is first, "the connection was replaced after " + method + " " + path
print(" ".join(codes))
"#,
        ip = w.host.v4
    );
    let path = files::write("keepalive.py", &script);
    let out = w
        .launch(&["/usr/bin/python3", path.to_str().expect("utf-8")])
        .run();
    out.assert_clean();
    assert_eq!(out.stdout.trim(), "200 403 200 403 200", "{out:?}");
    let conns: std::collections::HashSet<u64> =
        w.vendor.seen().iter().map(|s| s.connection).collect();
    assert_eq!(
        conns.len(),
        1,
        "the upstream connection was pooled: {:?}",
        w.vendor.seen()
    );
}

#[test]
fn python_through_the_proxy_and_transparently() {
    let w = World::new();
    let script = format!(
        r#"
import json, os, socket, sys, urllib.request, ssl
transparent = sys.argv[1] == "transparent"
if transparent:
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        os.environ.pop(k, None)
    real = socket.getaddrinfo
    socket.getaddrinfo = lambda host, *a, **k: real("{ip}" if host.endswith("vendor.test") else host, *a, **k)
def get(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
print(get("https://api.vendor.test/v1/py"), get("https://api.vendor.test/v1/py", "DELETE"))
"#,
        ip = w.host.v4
    );
    let path = files::write("client.py", &script);
    let path = path.to_str().expect("utf-8");
    for mode in ["proxy", "transparent"] {
        let out = w.launch(&["/usr/bin/python3", path, mode]).run();
        out.assert_clean();
        assert_eq!(out.stdout.trim(), "200 403", "{mode}: {out:?}");
    }
    assert_eq!(w.vendor.count("GET", "/v1/py"), 2);
    assert_eq!(w.vendor.count("DELETE", "/v1/py"), 0);
}

#[test]
fn plaintext_http_gets_the_same_rules() {
    let w = World::new();
    for transparent in [false, true] {
        let out = w.curl(transparent, &["http://api.vendor.test/v1/plain"]);
        assert_eq!(statuses(&out), vec!["200"], "{out:?}");
        let out = w.curl(
            transparent,
            &["-X", "DELETE", "http://api.vendor.test/v1/plain"],
        );
        assert_eq!(statuses(&out), vec!["403"], "{out:?}");
    }
    assert_eq!(w.vendor.count("GET", "/v1/plain"), 2);
    assert_eq!(w.vendor.count("DELETE", "/v1/plain"), 0);
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn fifty_megabytes_stream_through_interception_in_bounded_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let w = World::new();
    let upload = files::agent_writable("upload.bin");
    std::fs::write(&upload, vec![b'u'; SIZE as usize]).expect("write upload file");
    let script = format!(
        "sleep 1; \
         /usr/bin/curl -sS -m 120 -o /dev/null -w 'up %{{http_code}} %{{size_upload}}\\n' \
           --data-binary @{up} https://api.vendor.test/v1/upload; \
         /usr/bin/curl -sS -m 120 -o /dev/null -w 'down %{{http_code}} %{{size_download}}\\n' \
           'https://api.vendor.test/v1/download?bytes={SIZE}'",
        up = upload.display()
    );
    let running = w.launch(&["/bin/sh", "-c", &script]).spawn();
    let pid = running.pid();
    let started = std::time::Instant::now();
    let mut baseline = 0u64;
    let mut peak = 0u64;
    while let Some(rss) = rss_kib(pid) {
        if started.elapsed() < std::time::Duration::from_millis(800) {
            baseline = baseline.max(rss);
        }
        peak = peak.max(rss);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = running.wait(std::time::Duration::from_secs(10));
    out.assert_clean();
    assert!(out.stdout.contains(&format!("up 200 {SIZE}")), "{out:?}");
    assert!(out.stdout.contains(&format!("down 200 {SIZE}")), "{out:?}");
    let uploaded: u64 = w
        .vendor
        .seen()
        .iter()
        .filter(|s| s.path == "/v1/upload")
        .map(|s| s.body_bytes)
        .sum();
    assert_eq!(uploaded, SIZE, "the vendor received the whole upload");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("enforcer RSS: baseline {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(
        growth_mib < 12.0,
        "RSS grew by {growth_mib:.1} MiB while streaming 2 x 50 MiB"
    );
}

#[test]
fn malformed_input_is_answered_or_closed_without_disturbing_anyone() {
    let w = World::new();
    let script = format!(
        r#"
import socket, ssl
IP = "{ip}"
def tls(name="api.vendor.test"):
    ctx = ssl.create_default_context()
    return ctx.wrap_socket(socket.create_connection((IP, 443), timeout=10), server_hostname=name)
def exchange(sock, data):
    out = b""
    try:
        # The proxy may answer and close before all of it is sent.
        sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                break
    except Exception as e:
        return "error " + type(e).__name__
    return out.split(b"\r\n")[0].decode(errors="replace") or "closed"
results = []
# Not HTTP inside TLS.
results.append(exchange(tls(), b"NOT HTTP AT ALL\r\n\r\n"))
# A header far over the limit.
results.append(exchange(tls(), b"GET /v1/x HTTP/1.1\r\nHost: api.vendor.test\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n"))
# Garbage that starts like TLS.
raw = socket.create_connection((IP, 443), timeout=10)
results.append(exchange(raw, b"\x16\x03\x01\x00\x10" + b"\xff" * 16))
# Plaintext garbage on port 80.
raw = socket.create_connection((IP, 80), timeout=15)
results.append(exchange(raw, b"\x00\x01\x02 garbage \r\n\r\n"))
# And the proxy still serves a proper request.
results.append(exchange(tls(), b"GET /v1/ok HTTP/1.1\r\nHost: api.vendor.test\r\nConnection: close\r\n\r\n"))
print("|".join(results))
"#,
        ip = w.host.v4
    );
    let path = files::write("malformed.py", &script);
    let out = w
        .launch(&["/usr/bin/python3", path.to_str().expect("utf-8")])
        .run();
    out.assert_clean();
    let results: Vec<&str> = out.stdout.trim().split('|').collect();
    assert_eq!(results.len(), 5, "{out:?}");
    assert!(
        results[0].starts_with("HTTP/1.1 400") || results[0] == "closed",
        "not HTTP: {results:?}"
    );
    assert!(
        results[1].starts_with("HTTP/1.1 431")
            || results[1].starts_with("HTTP/1.1 400")
            || results[1] == "closed"
            || results[1].starts_with("error"),
        "huge header: {results:?}"
    );
    assert!(
        results[2] == "closed" || results[2].starts_with("error"),
        "garbage TLS: {results:?}"
    );
    assert!(
        results[3] == "closed" || results[3].starts_with("error"),
        "plaintext garbage: {results:?}"
    );
    assert_eq!(results[4], "HTTP/1.1 200 OK", "{out:?}");
    assert_eq!(
        w.vendor.seen().len(),
        1,
        "only the proper request reached the vendor: {:?}",
        w.vendor.seen()
    );
}

#[test]
fn the_explicit_proxy_serves_only_the_runs_own_processes() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let w = World::new();
    let mut running = w
        .launch(&[
            "/bin/sh",
            "-c",
            "echo \"$HTTPS_PROXY $SSL_CERT_FILE $NODE_EXTRA_CA_CERTS\"; sleep 3",
        ])
        .spawn();
    let mut reader = std::io::BufReader::new(running.take_stdout());
    let mut line = String::new();
    reader.read_line(&mut line).expect("read env line");
    let mut fields = line.split_whitespace();
    let proxy = fields.next().expect("HTTPS_PROXY");
    let bundle = fields.next().expect("SSL_CERT_FILE");
    let ca = fields.next().expect("NODE_EXTRA_CA_CERTS");
    assert!(proxy.starts_with("http://127.0.0.1:"), "{line}");
    let bundle_text = std::fs::read_to_string(bundle).expect("bundle readable");
    let ca_text = std::fs::read_to_string(ca).expect("CA readable");
    assert!(
        bundle_text.ends_with(&ca_text),
        "the bundle ends with the run's CA"
    );
    assert!(!bundle_text.contains("PRIVATE KEY") && !ca_text.contains("PRIVATE KEY"));
    // A process outside the run gets nothing from the run's proxy.
    let addr = proxy.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the explicit proxy");
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let _ =
        s.write_all(b"CONNECT api.vendor.test:443 HTTP/1.1\r\nHost: api.vendor.test:443\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "an outside process got an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let out = running.wait(std::time::Duration::from_secs(20));
    out.assert_clean();
    assert!(
        out.stderr.contains("not a process of this run"),
        "{}",
        out.stderr
    );
    assert!(
        !std::path::Path::new(bundle).exists(),
        "the trust bundle is removed with the run"
    );
}

#[test]
fn names_resolved_through_the_enforcers_dns_get_the_same_decisions() {
    let w = World::new();
    for name in NAMES {
        w.host.serve_name(name);
    }
    // No --resolve for curl: it asks DNS (redirected to the enforcer), gets a
    // synthetic address, and the proxy maps it back to the name.
    let script = "curl -sS -m 20 --noproxy '*' -w ' %{http_code} %{remote_ip}\\n' -o /dev/null https://api.vendor.test/v1/dns; \
                  curl -sS -m 20 --noproxy '*' -w ' %{http_code}\\n' -o /dev/null -X DELETE https://api.vendor.test/v1/dns; \
                  curl -sS -m 20 --noproxy '*' -w ' %{http_code}\\n' -o /dev/null --resolve other.vendor.test:443:198.18.0.1 https://other.vendor.test/v1/dns; \
                  echo";
    let out = w
        .launch(&["/bin/sh", "-c", script])
        .resolver(format!("{}:53", w.host.v4))
        .resolv_conf(&w.host.resolv_conf())
        .run();
    out.assert_clean();
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert!(
        lines[0].starts_with("200 198.18.") || lines[0].starts_with("200 fd65:"),
        "{out:?}"
    );
    assert_eq!(lines[1], "403", "{out:?}");
    // SNI other.vendor.test on the address handed out for api.vendor.test.
    assert_eq!(lines[2], "000", "{out:?}");
    assert!(
        out.stderr.contains("is not the name api.vendor.test"),
        "{}",
        out.stderr
    );
    assert_eq!(w.vendor.count("GET", "/v1/dns"), 1);
    assert_eq!(w.vendor.count("DELETE", "/v1/dns"), 0);
}

#[test]
fn a_plain_curl_run_reports_only_what_it_did() {
    let w = World::new();
    for name in NAMES {
        w.host.serve_name(name);
    }
    // A name lookup by glibc tries nscd (a unix socket) and sorts the
    // addresses with UDP connect()s: both are refused in the kernel, and
    // neither is a refusal worth a person's attention.
    let script = "curl -sS -m 20 --noproxy '*' -o /dev/null -w '%{http_code}\\n' https://api.vendor.test/v1/once";
    let out = w
        .launch(&["/bin/sh", "-c", script])
        .resolver(format!("{}:53", w.host.v4))
        .resolv_conf(&w.host.resolv_conf())
        .run();
    out.assert_clean();
    assert_eq!(out.stdout.trim(), "200", "{out:?}");
    assert!(
        out.stderr.contains("requests: 1 allowed, 0 refused"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("refused kernel"), "{}", out.stderr);
    assert!(!out.stderr.contains("also refused"), "{}", out.stderr);
    assert!(!out.stderr.contains("top refused"), "{}", out.stderr);
}
