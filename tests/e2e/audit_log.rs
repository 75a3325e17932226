//! The audit log, from real runs: a row for every decision at every layer,
//! committed before a request goes out (even under SIGKILL), the queries
//! people already write, concurrent runs, no secrets in the file, and
//! refusing to run unaudited when the database is unusable.

use std::{path::PathBuf, time::Duration};

use enforcer_e2e::{Launch, files, leftovers, world::VendorWorld};
use rusqlite::Connection;

const POLICY: &str = r#"
[run]
name = "billing-agent"

[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["GET", "POST"]
  path = "/v1/**"
  action = "allow"
"#;

/// A fresh database path in its own directory.
fn db_path() -> PathBuf {
    let dir = files::scratch_dir().join(format!("audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(format!("{}.db", rand_suffix()))
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("a{}", N.fetch_add(1, Ordering::SeqCst))
}

fn with_db(l: Launch, db: &std::path::Path) -> Launch {
    l.flag("--audit-db").flag(db)
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let c = Connection::open(db).expect("open db");
    c.query_row(sql, [], |r| r.get(0)).expect(sql)
}

#[test]
fn every_layer_leaves_rows_and_the_usual_queries_work_as_written() {
    let w = VendorWorld::new();
    w.host.serve_name("api.vendor.test");
    let db = db_path();
    let script = format!(
        "dig +short +time=3 @{ip} api.vendor.test; dig +short +time=3 @{ip} exfil.example; \
         who=some; curl -sS -m 10 -o /dev/null \"https://api.vendor.test/v1/customers?email=${{who}}one%40example.com\"; \
         curl -sS -m 10 -o /dev/null -X DELETE https://api.vendor.test/v1/customers/1; \
         curl -sS -m 10 -o /dev/null https://other.vendor.test/; \
         python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"{ip}\", 443))' 2>/dev/null; true",
        ip = w.host.v4
    );
    let report = files::agent_writable("report.json");
    let out = with_db(w.launch(POLICY, &["/bin/sh", "-c", &script]), &db)
        .flag("--report")
        .flag(&report)
        .run();
    out.assert_clean();
    let run_id = out.run_id.clone().expect("run id");
    for layer in ["kernel", "dns", "connection", "request"] {
        let n = count(
            &db,
            &format!("SELECT COUNT(*) FROM events WHERE run_id = '{run_id}' AND layer = '{layer}'"),
        );
        assert!(n > 0, "no {layer} rows: {out:?}");
    }
    assert!(
        out.stderr.contains(&db.display().to_string()),
        "the summary says where the log is: {}",
        out.stderr
    );
    // The query string was redacted, and the request row has its outcome.
    let (path, status, redacted): (String, i64, i64) = Connection::open(&db)
        .expect("db")
        .query_row(
            "SELECT path, status, query_redacted FROM events WHERE run_id = ?1 AND layer = 'request' AND method = 'GET'",
            [&run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("GET row");
    assert_eq!((path.as_str(), status, redacted), ("/v1/customers", 200, 1));
    // (The run's command line is recorded too: the script spells the
    // address in two halves so that only a leak would join them.)
    let bytes = std::fs::read(&db).expect("db bytes");
    let leaked: Vec<String> = Connection::open(&db)
        .expect("db")
        .prepare("SELECT layer || ' ' || coalesce(path, '') || ' ' || reason || ' ' || coalesce(rule, '') FROM events WHERE path LIKE '%someone%' OR reason LIKE '%someone%' OR rule LIKE '%someone%'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("search rows");
    assert!(leaked.is_empty(), "the query string is in rows: {leaked:?}");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("someone%40example.com"),
        "the query string is in the file"
    );
    // The first query, as people write it.
    let c = Connection::open(&db).expect("db");
    let mut q1 = c
        .prepare(&format!(
            "SELECT vendor, endpoint, cost_usd, vendor_txn_id, called_at, policy_verdict FROM audit_log WHERE agent_run_id = '{run_id}' ORDER BY called_at;"
        ))
        .expect("query 1");
    let rows: Vec<(Option<String>, String, String)> = q1
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(5)?)))
        .expect("run query 1")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        rows.iter()
            .any(|(v, e, verdict)| v.as_deref() == Some("vendor")
                && e == "GET /v1/customers"
                && verdict == "allow"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(_, e, verdict)| e == "DELETE /v1/customers/1" && verdict == "deny"),
        "{rows:?}"
    );
    // The second query, as written, after moving this run's rows to yesterday.
    c.execute(
        "UPDATE events SET at = datetime(at, '-1 day') WHERE run_id = ?1",
        [&run_id],
    )
    .expect("age rows");
    let (agent, calls): (String, i64) = c
        .query_row(
            "SELECT agent_name, SUM(cost_usd), COUNT(*) FROM audit_log WHERE vendor = 'vendor' AND date(called_at) = date('now', '-1 day') GROUP BY agent_name ORDER BY 2 DESC;",
            [],
            |r| Ok((r.get(0)?, r.get(2)?)),
        )
        .expect("query 2");
    assert_eq!(agent, "billing-agent");
    assert!(calls >= 2, "{calls}");
    // --report wrote the same summary, machine-readable.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(report["run_id"], run_id.as_str());
    // Counted by layer: the refused request, connection, name and kernel
    // operations each in their own field.
    let counts = &report["counts"];
    for field in [
        "requests_refused",
        "connections_refused",
        "names_refused",
        "kernel_refused",
    ] {
        assert!(
            counts[field].as_u64().is_some_and(|n| n >= 1),
            "{field}: {report}"
        );
    }
    assert_eq!(counts["requests_allowed"], 1, "{report}");
}

#[test]
fn every_request_the_vendor_received_has_its_row_even_after_sigkill() {
    let w = VendorWorld::new();
    let db = db_path();
    let script = files::write(
        "load.py",
        r#"
import http.client, ssl, threading, os
def worker():
    ctx = ssl.create_default_context()
    while True:
        try:
            c = http.client.HTTPSConnection("api.vendor.test", 443, context=ctx, timeout=10)
            for _ in range(1000000):
                c.request("GET", "/v1/load")
                c.getresponse().read()
        except Exception:
            pass
for _ in range(16):
    threading.Thread(target=worker, daemon=True).start()
threading.Event().wait()
"#,
    );
    let running = with_db(
        w.launch(
            POLICY,
            &["/usr/bin/python3", script.to_str().expect("utf-8")],
        ),
        &db,
    )
    .spawn();
    assert!(
        leftovers::eventually(30, || w.vendor.count("GET", "/v1/load") >= 200),
        "the load never got going"
    );
    running.signal(libc::SIGKILL);
    let out = running.wait(Duration::from_secs(20));
    let run_id = out.run_id.clone().expect("run id");
    leftovers::assert_run_gone(&run_id);
    std::thread::sleep(Duration::from_millis(500));
    let received = w.vendor.count("GET", "/v1/load") as i64;
    let rows = count(
        &db,
        &format!(
            "SELECT COUNT(*) FROM events WHERE run_id = '{run_id}' AND path = '/v1/load' AND verdict = 'allow'"
        ),
    );
    eprintln!("vendor received {received}, audit rows {rows}");
    assert!(received > 0);
    assert!(
        rows >= received,
        "{received} requests reached the vendor but only {rows} rows were committed"
    );
}

#[test]
fn two_runs_share_one_database() {
    let w = VendorWorld::new();
    let db = db_path();
    let cmd = [
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do curl -sS -m 10 -o /dev/null https://api.vendor.test/v1/two; done",
    ];
    let a = with_db(w.launch(POLICY, &cmd), &db).spawn();
    let b = with_db(w.launch(POLICY, &cmd), &db).spawn();
    let (a, b) = (
        a.wait(Duration::from_secs(60)),
        b.wait(Duration::from_secs(60)),
    );
    for out in [&a, &b] {
        out.assert_clean();
        assert_eq!(out.code(), 0, "{out:?}");
        let id = out.run_id.clone().expect("run id");
        let n = count(
            &db,
            &format!("SELECT COUNT(*) FROM events WHERE run_id = '{id}' AND path = '/v1/two'"),
        );
        assert_eq!(n, 10, "run {id}");
        let ended = count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM runs WHERE id = '{id}' AND exit_code = 0 AND ended_at IS NOT NULL"
            ),
        );
        assert_eq!(ended, 1);
    }
}

#[test]
fn an_unusable_database_stops_the_run_unless_no_audit() {
    let dir = files::scratch_dir().join(format!("bad-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Corrupt: not a database at all.
    let corrupt = dir.join("corrupt.db");
    std::fs::write(&corrupt, vec![0x42u8; 8192]).expect("write");
    // Read-only: a directory nobody may write (root ignores modes, so make it immutable-ish with a file).
    let ro_dir = dir.join("ro");
    std::fs::create_dir_all(&ro_dir).expect("ro dir");
    let ro = ro_dir.join("audit.db");
    let _ = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro_dir)
        .status();
    // Locked: another process holds an exclusive lock.
    let locked = dir.join("locked.db");
    let out = Launch::new(POLICY, &["/bin/true"])
        .flag("--audit-db")
        .flag(&locked)
        .run();
    assert_eq!(out.code(), 0, "creating a database works: {out:?}");
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, time\nc = sqlite3.connect('{}', isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(30)\n",
            locked.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lock holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("locked line");
    for (db, what) in [
        (&corrupt, "corrupt"),
        (&ro, "read-only"),
        (&locked, "locked"),
    ] {
        let out = Launch::new(POLICY, &["/bin/true"])
            .flag("--audit-db")
            .flag(db)
            .run();
        assert_eq!(out.code(), 1, "{what}: {out:?}");
        assert!(out.stderr.contains("--no-audit"), "{what}: {}", out.stderr);
        assert!(
            out.run_id.is_none(),
            "{what}: nothing may start: {}",
            out.stderr
        );
        let out = Launch::new(POLICY, &["/bin/true"])
            .flag("--audit-db")
            .flag(db)
            .flag("--no-audit")
            .run();
        assert_eq!(out.code(), 0, "{what} with --no-audit: {out:?}");
        out.assert_clean();
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::process::Command::new("umount").arg(&ro_dir).status();
    assert!(
        std::fs::read(&corrupt)
            .expect("corrupt")
            .iter()
            .all(|b| *b == 0x42),
        "the corrupt file was left untouched"
    );
}

#[test]
fn with_log_json_every_stderr_line_of_a_run_is_json() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = VendorWorld::new();
    w.host.serve_name("api.vendor.test");
    // A database others can read: enforcer warns (a tracing line).
    let db = db_path();
    let first = with_db(w.launch(POLICY, &["/bin/true"]), &db).run();
    assert_eq!(first.code(), 0, "{first:?}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let script = "curl -sS -m 10 -o /dev/null https://api.vendor.test/v1/customers; \
                  curl -sS -m 10 -o /dev/null -X DELETE https://api.vendor.test/v1/customers/1; true";
    let out = with_db(w.launch(POLICY, &["/bin/sh", "-c", script]), &db)
        .flag("--log-json")
        .flag("-v")
        .run();
    out.assert_clean();
    assert_eq!(out.code(), 0, "{out:?}");
    let mut events = Vec::new();
    for line in out.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", out.stderr));
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "no RFC 3339 ts: {line}"
        );
        assert!(
            ["error", "warn", "info", "debug", "trace"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "no level: {line}"
        );
        events.push(v);
    }
    let has = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().any(f);
    assert!(
        has(&|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("chmod 600"))),
        "the tracing warning: {}",
        out.stderr
    );
    assert!(
        has(&|v| v["event"] == "decision" && v["method"] == "DELETE"),
        "the refusal: {}",
        out.stderr
    );
    assert!(
        has(&|v| v["event"] == "summary"
            && v["exit_code"] == 0
            && v["counts"]["requests_refused"] == 1),
        "the summary, as one structured line: {}",
        out.stderr
    );
}

#[test]
fn after_a_run_the_database_file_alone_holds_every_row() {
    let w = VendorWorld::new();
    w.host.serve_name("api.vendor.test");
    let db = db_path();
    let script = files::write(
        "many.py",
        r#"
import http.client, ssl
c = http.client.HTTPSConnection("api.vendor.test", 443, context=ssl.create_default_context(), timeout=10)
for i in range(300):
    c.request("GET", "/v1/customers/%d" % i)
    r = c.getresponse(); r.read()
    c.request("DELETE", "/v1/customers/%d" % i)
    r = c.getresponse(); r.read()
"#,
    );
    // Another connection has the database open (another enforcer, a
    // sqlite3 shell, a daemon's reader): enforcer's is not the last to
    // close, so closing it does not checkpoint the WAL by itself.
    let first = with_db(w.launch(POLICY, &["/bin/true"]), &db).run();
    assert_eq!(first.code(), 0, "{first:?}");
    let other = Connection::open(&db).expect("open db");
    let _: i64 = other
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .expect("read");
    let out = with_db(
        w.launch(
            POLICY,
            &["/usr/bin/python3", script.to_str().expect("utf-8")],
        ),
        &db,
    )
    .run();
    out.assert_clean();
    assert_eq!(out.code(), 0, "{out:?}");
    let run_id = out.run_id.clone().expect("run id");
    let sql = format!("SELECT COUNT(*) FROM events WHERE run_id = '{run_id}'");
    let all = count(&db, &sql);
    assert!(all >= 600, "{all} rows: {out:?}");
    // A backup that copies the database file only, as people do.
    let backup = db.with_file_name(format!("backup-{}.db", rand_suffix()));
    std::fs::copy(&db, &backup).expect("copy the .db file");
    let c = Connection::open(&backup).expect("open the copy");
    let copied: i64 = c
        .query_row(&sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("the copy of {} alone has no events: {e}", db.display()));
    let ended: Option<String> = c
        .query_row("SELECT ended_at FROM runs WHERE id = ?1", [&run_id], |r| {
            r.get(0)
        })
        .expect("the run's row in the copy");
    drop(c);
    drop(other);
    let _ = std::fs::remove_file(&backup);
    assert_eq!(copied, all, "rows missing from the .db file alone");
    assert!(ended.is_some(), "the run's end is in the copy");
}

#[test]
fn a_database_that_fills_up_mid_run_refuses_further_requests() {
    let w = VendorWorld::new();
    let dir = files::scratch_dir().join(format!("full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let db = dir.join("audit.db");
    let script = files::write(
        "fill.py",
        r#"
import http.client, ssl
ctx = ssl.create_default_context()
codes = {}
c = http.client.HTTPSConnection("api.vendor.test", 443, context=ctx, timeout=10)
for i in range(6000):
    c.request("GET", "/v1/fill/" + "x" * 200)
    r = c.getresponse(); r.read()
    codes[r.status] = codes.get(r.status, 0) + 1
    if r.status == 503:
        break
print(sorted(codes.items()))
"#,
    );
    let out = with_db(
        w.launch(
            POLICY,
            &["/usr/bin/python3", script.to_str().expect("utf-8")],
        ),
        &db,
    )
    .run();
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&dir)
        .status();
    out.assert_clean();
    assert!(
        out.stdout.contains("503"),
        "the proxy kept forwarding without an audit log: {out:?}"
    );
    // The run still ends with its summary, from enforcer's own counts, says
    // that the log failed and since when, and exits with its own status.
    assert_eq!(out.code(), 74, "{out:?}");
    for want in [
        "exited with code 0",
        " allowed, ",
        "THE AUDIT LOG FAILED at ",
        "since then no request was forwarded",
    ] {
        assert!(
            out.stderr.contains(want),
            "{want:?} missing: {}",
            out.stderr
        );
    }
    let received = w
        .vendor
        .count("GET", &format!("/v1/fill/{}", "x".repeat(200)));
    let allowed: u64 = out
        .stdout
        .split("(200, ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        received as u64, allowed,
        "only audited requests reached the vendor: {out:?}"
    );
}

#[test]
fn audit_queries_output_table_jsonl_and_csv_and_prune() {
    let w = VendorWorld::new();
    let db = db_path();
    let out = with_db(
        w.launch(
            POLICY,
            &[
                "/usr/bin/curl",
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "https://api.vendor.test/v1/q",
            ],
        ),
        &db,
    )
    .run();
    out.assert_clean();
    let run_id = out.run_id.clone().expect("run id");
    let enforcer = files::enforcer();
    let audit = |args: &[&str]| {
        let o = std::process::Command::new(&enforcer)
            .arg("audit")
            .args(args)
            .arg("--audit-db")
            .arg(&db)
            .output()
            .expect("enforcer audit");
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let table = audit(&["runs"]);
    assert!(
        table.contains(&run_id) && table.contains("billing-agent"),
        "{table}"
    );
    let jsonl = audit(&["events", "--run", &run_id, "--format", "jsonl"]);
    let events: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["path"] == "/v1/q" && e["verdict"] == "allow"),
        "{jsonl}"
    );
    let csv = audit(&[
        "events", "--run", &run_id, "--layer", "request", "--format", "csv",
    ]);
    let mut lines = csv.lines();
    let header = lines.next().expect("csv header");
    assert!(
        header.contains("verdict") && header.contains("path"),
        "{header}"
    );
    assert!(lines.any(|l| l.contains("/v1/q")), "{csv}");
    std::thread::sleep(Duration::from_secs(2));
    let pruned = audit(&["prune", "--older-than", "1s"]);
    assert!(pruned.contains("pruned"), "{pruned}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events"), 0);
}

#[test]
fn the_orchestrators_label_is_the_agent_run_id_of_the_seed_query() {
    let w = VendorWorld::new();
    let db = db_path();
    let out = with_db(
        w.launch(
            POLICY,
            &[
                "/bin/sh",
                "-c",
                "curl -sS -m 10 -o /dev/null -w '%{http_code}\\n' https://api.vendor.test/v1/labelled",
            ],
        ),
        &db,
    )
    .flag("--label")
    .flag("billing/run_abc123")
    .run();
    out.assert_clean();
    assert_eq!(out.stdout, "200\n", "{out:?}");
    let run_id = out.run_id.clone().expect("run id");
    let c = Connection::open(&db).expect("db");
    let rows: Vec<(String, String, String)> = c
        .prepare(
            "SELECT vendor, endpoint, enforcer_run_id FROM audit_log \
             WHERE agent_run_id = 'billing/run_abc123' AND layer = 'request' ORDER BY called_at;",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("the seed query by label");
    assert_eq!(
        rows,
        [(
            String::from("vendor"),
            String::from("GET /v1/labelled"),
            run_id.clone()
        )]
    );
    // A label that would break a log line is refused before anything starts.
    let out = with_db(w.launch(POLICY, &["/bin/true"]), &db)
        .flag("--label")
        .flag("a\nb")
        .run();
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("control characters"), "{}", out.stderr);
}
