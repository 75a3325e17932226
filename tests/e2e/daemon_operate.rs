//! Operating a daemon's runs (on a slice made here by hand, as in
//! daemon.rs): a reload with an invalid and then a valid policy while a
//! unit's connection is open; status, approve and revoke by unit name; the
//! approval webhook. Everything the units reach is our fake vendor.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use enforcer_e2e::{
    daemon::{Daemon, stderr, stdout},
    files, leftovers,
    world::VendorWorld,
};

const REAL: &str = "sk_live_DAEMONKEY0123456789abcdefABCDEF";

/// A root-only file holding the real key.
fn key_file() -> PathBuf {
    let p = files::write("daemon-key", REAL);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

fn policy(key: &Path, rules: &str) -> String {
    format!(
        r#"
[run]
name = "operated"

[[secret]]
name = "VENDOR_KEY"
from = "file:{key}"
hosts = ["api.vendor.test"]
header = "Authorization"
format = "Bearer {{}}"

[[host]]
name = "api.vendor.test"
{rules}
"#,
        key = key.display()
    )
}

fn rule(method: &str, path: &str, action: &str) -> String {
    format!(
        "  [[host.rule]]\n  method = \"{method}\"\n  path = \"{path}\"\n  action = \"{action}\"\n"
    )
}

/// A file the test creates when the unit may go on.
fn go_file() -> PathBuf {
    files::scratch_dir().join(format!("go-{}", rand_suffix()))
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// `enforcer status --json` rows of `unit`.
fn status_of(d: &Daemon, unit: &str) -> Vec<serde_json::Value> {
    let out = d.enforcer(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["unit"] == unit)
        .collect()
}

const KEEP_ALIVE: &str = r#"
import http.client, os, sys, time
key = os.environ["VENDOR_KEY"]
def get(conn, path):
    conn.request("GET", path, headers={"Authorization": "Bearer " + key})
    r = conn.getresponse()
    r.read()
    return r.status
c = http.client.HTTPSConnection("api.vendor.test", 443, timeout=20)
print("one", get(c, "/v1/one"), flush=True)
for _ in range(600):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.05)
print("two", get(c, "/v1/two"), flush=True)
d = http.client.HTTPSConnection("api.vendor.test", 443, timeout=20)
print("three", get(d, "/v1/three"), flush=True)
"#;

#[test]
fn a_reload_decides_the_next_request_of_an_open_connection_and_a_bad_one_changes_nothing() {
    let w = VendorWorld::new();
    let key = key_file();
    let v1 = policy(&key, &rule("GET", "/v1/**", "allow"));
    let d = Daemon::start_full("", &w.daemon_args(), &[("a-*.service", &v1)]);
    let go = go_file();
    let go_s = go.to_str().expect("utf-8").to_string();
    let unit = d.unit("a-1.service");
    std::thread::scope(|s| {
        let agent = s.spawn(|| {
            d.run_in(
                &unit,
                Some("nobody"),
                true,
                &["python3", "-c", KEEP_ALIVE, &go_s],
            )
        });
        assert!(
            leftovers::eventually(30, || w.vendor.count("GET", "/v1/one") == 1),
            "the first request never arrived"
        );
        let rows = status_of(&d, "a-1.service");
        assert_eq!(rows.len(), 1, "status shows the unit's run: {rows:?}");
        let run_id = rows[0]["run_id"].as_str().expect("run id").to_string();

        // An invalid policy: nothing changes, and the reason names the line.
        std::fs::write(
            &d.policies[0],
            policy(&key, &rule("GET", "/v1/one", "allw")),
        )
        .expect("write policy");
        let bad = d.reload();
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&bad).contains("stays") && stderr(&bad).contains(":"),
            "{}",
            stderr(&bad)
        );

        // A valid one: /v1/two is no longer allowed, from the next request on.
        std::fs::write(
            &d.policies[0],
            policy(
                &key,
                &(rule("GET", "/v1/one", "allow") + &rule("GET", "/v1/three", "allow")),
            ),
        )
        .expect("write policy");
        let good = d.reload();
        assert!(good.status.success(), "{good:?}");
        assert!(
            stdout(&good).contains("a-1.service") && stdout(&good).contains(&run_id),
            "{}",
            stdout(&good)
        );
        std::fs::write(&go, "").expect("go");
        let out = agent.join().expect("agent");
        // The open connection stayed open; its next request was decided by
        // the new policy; the run kept its credentials.
        assert_eq!(
            stdout(&out).lines().collect::<Vec<_>>(),
            ["one 200", "two 403", "three 200"],
            "{out:?}"
        );
    });
    assert_eq!(w.vendor.count("GET", "/v1/two"), 0);
    let three: Vec<_> = w
        .vendor
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/three")
        .collect();
    assert_eq!(
        three[0].authorization.as_deref(),
        Some(format!("Bearer {REAL}").as_str()),
        "the reloaded run still injects its credential"
    );
}

/// A webhook receiver on loopback: every body it is sent.
fn receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let mut s = r.into_inner();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_waiting_request_is_posted_to_the_webhook_and_answered_and_revoked_by_unit_name() {
    let w = VendorWorld::new();
    let key = key_file();
    let (url, bodies) = receiver();
    let p = policy(
        &key,
        &(rule("POST", "/v1/refunds", "ask") + &rule("GET", "/v1/**", "allow")),
    );
    let d = Daemon::start_full(
        &format!("[approvals]\nwebhook = \"{url}\""),
        &w.daemon_args(),
        &[("b-*.service", &p)],
    );
    let go = go_file();
    let script = format!(
        "curl -sS -m 60 -o /dev/null -w '%{{http_code}}\\n' -X POST -H \"Authorization: Bearer $VENDOR_KEY\" https://api.vendor.test/v1/refunds; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         curl -sS -m 20 -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $VENDOR_KEY\" https://api.vendor.test/v1/after",
        go = go.display()
    );
    let unit = d.unit("b-1.service");
    std::thread::scope(|s| {
        let agent = s.spawn(|| d.run_in(&unit, Some("nobody"), true, &["/bin/sh", "-c", &script]));
        let notice = bodies
            .recv_timeout(Duration::from_secs(30))
            .expect("the webhook was not called");
        let v: serde_json::Value = serde_json::from_str(&notice).expect("JSON notice");
        let text = v["text"].as_str().expect("slack text");
        assert!(
            text.contains("b-1.service")
                && text.contains("POST https://api.vendor.test/v1/refunds"),
            "{text}"
        );
        assert!(!notice.contains(REAL), "the real key went to the webhook");
        let id = v["enforcer"]["id"].as_u64().expect("id").to_string();

        let rows = status_of(&d, "b-1.service");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["pending_approvals"], 1, "{rows:?}");
        // By unit name, without `.service`.
        let ok = d.enforcer(&["approve", &id, "--run", "b-1", "--json"]);
        assert!(ok.status.success(), "{ok:?}");
        let answered: serde_json::Value =
            serde_json::from_str(stdout(&ok).trim()).expect("JSON answer");
        assert_eq!(answered["answer"], "approve", "{answered}");
        assert!(
            leftovers::eventually(20, || w.vendor.count("POST", "/v1/refunds") == 1),
            "the approved request never arrived"
        );
        let revoked = d.enforcer(&["revoke", "b-1.service", "--json"]);
        assert!(revoked.status.success(), "{revoked:?}");
        let r: serde_json::Value = serde_json::from_str(stdout(&revoked).trim()).expect("JSON");
        assert_eq!(
            (r["revoked"].as_bool(), r["unit"].as_str()),
            (Some(true), Some("b-1.service"))
        );
        std::fs::write(&go, "").expect("go");
        let out = agent.join().expect("agent");
        let codes: Vec<_> = stdout(&out).lines().map(str::to_string).collect();
        assert_eq!(codes.first().map(String::as_str), Some("200"), "{out:?}");
        assert_ne!(codes.get(1).map(String::as_str), Some("200"), "{out:?}");
    });
    assert_eq!(
        w.vendor.count("GET", "/v1/after"),
        0,
        "a revoked run's request reached the vendor"
    );
    // A name no live run answers to is an error, not a silent success.
    let none = d.enforcer(&["revoke", "no-such-unit"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(
        stderr(&none).contains("no live run is called no-such-unit"),
        "{}",
        stderr(&none)
    );
}
