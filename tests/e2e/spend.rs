//! Spend caps, rate limits and the loop breaker, end to end, against a
//! Stripe-shaped fake vendor that counts what it receives: whatever the
//! proxy refuses must never arrive.

use std::time::Duration;

use enforcer_e2e::{files, leftovers, world::VendorWorld};

/// A policy whose payment intents cost their form `amount` (cents) in
/// `currency`; `host_extra` and `rule_extra` add keys to the host and rule.
fn policy(name: &str, run_extra: &str, host_extra: &str, cost_extra: &str) -> String {
    format!(
        r#"
[run]
name = "{name}"
{run_extra}

[[host]]
name = "api.vendor.test"
{host_extra}
  [[host.rule]]
  method = ["POST"]
  path = "/v1/payment_intents"
  action = "allow"
  cost = {{ form_field = "amount", divide_by = 100, currency_field = "currency"{cost_extra} }}
  [[host.rule]]
  method = ["GET"]
  path = "/v1/**"
  action = "allow"
"#
    )
}

/// A name no other run of this test binary uses (daily caps are per name).
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// `curl` of a payment intent with these form fields, printing the status.
fn pay(fields: &str) -> String {
    let mut cmd = String::from("curl -sS -m 30 -o /dev/null -w '%{http_code}\\n'");
    for f in fields.split('&') {
        cmd.push_str(&format!(" -d '{f}'"));
    }
    cmd.push_str(" https://api.vendor.test/v1/payment_intents");
    cmd
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

fn audit() -> rusqlite::Connection {
    rusqlite::Connection::open(files::audit_db()).expect("audit db")
}

#[test]
fn a_cap_is_exact_under_200_concurrent_requests_and_the_vendor_never_sees_the_rest() {
    let w = VendorWorld::new();
    // 200 different calls of $0.07 against a $10.00 cap: exactly 142 fit.
    let script = format!(
        "seq 200 | xargs -P 200 -I@ {} | sort | uniq -c",
        pay("amount=7&currency=usd&description=call-@")
    );
    let out = w
        .launch(
            &policy(&unique("cap"), "", "spend_cap_usd = 10.00", ""),
            &["/bin/sh", "-c", &script],
        )
        .run();
    out.assert_clean();
    let counts: Vec<(u32, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (n, code) = l.trim().split_once(' ')?;
            Some((n.parse().ok()?, code.to_string()))
        })
        .collect();
    assert!(
        counts.contains(&(142, "200".into())),
        "{counts:?}\n{}",
        out.stderr
    );
    assert!(counts.contains(&(58, "429".into())), "{counts:?}");
    assert_eq!(
        w.vendor.count("POST", "/v1/payment_intents"),
        142,
        "the vendor saw more than the cap allows"
    );
    let run = out.run_id.expect("run id");
    let (spent, rows): (f64, i64) = audit()
        .query_row(
            "SELECT total(cost_usd), count(*) FROM events WHERE run_id = ?1 AND layer = 'request' AND verdict = 'allow'",
            [&run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("query");
    assert_eq!(rows, 142);
    assert!((spent - 9.94).abs() < 1e-9, "{spent}");
    assert!(
        out.stderr.contains("spend: $9.94"),
        "the summary shows the spend: {}",
        out.stderr
    );
}

#[test]
fn a_daily_cap_holds_across_two_runs() {
    let w = VendorWorld::new();
    let p = policy(&unique("daily"), "", "daily_cap_usd = 1.00", "");
    let script: Vec<String> = (0..6)
        .map(|i| pay(&format!("amount=25&currency=usd&n={i}")))
        .collect();
    let script = script.join("; ");
    let first = w.launch(&p, &["/bin/sh", "-c", &script]).run();
    first.assert_clean();
    assert_eq!(
        lines(&first.stdout),
        ["200", "200", "200", "200", "429", "429"],
        "{first:?}"
    );
    let second = w.launch(&p, &["/bin/sh", "-c", &script]).run();
    second.assert_clean();
    assert_eq!(lines(&second.stdout), ["429"; 6], "{second:?}");
    assert!(
        second.stderr.contains("daily host api.vendor.test"),
        "{}",
        second.stderr
    );
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 4);
}

#[test]
fn a_call_the_vendor_refuses_releases_its_reservation() {
    let w = VendorWorld::new();
    let script = [
        pay("amount=80&currency=usd&payment_method=pm_card_declined"),
        pay("amount=80&currency=usd&n=1"),
        pay("amount=80&currency=usd&n=2"),
    ]
    .join("; ");
    let out = w
        .launch(
            &policy(&unique("release"), "", "spend_cap_usd = 1.00", ""),
            &["/bin/sh", "-c", &script],
        )
        .run();
    out.assert_clean();
    // The declined $0.80 was released, so the next fits; the third does not.
    assert_eq!(lines(&out.stdout), ["402", "200", "429"], "{out:?}");
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 2);
}

#[test]
fn other_currencies_convert_by_the_policy_rate_or_are_refused() {
    let w = VendorWorld::new();
    let script = [
        pay("amount=100&currency=eur&n=1"),
        pay("amount=100&currency=jpy&n=2"),
        pay("amount=100&currency=eur&n=3"),
        pay("amount=80&currency=usd&n=4"),
    ]
    .join("; ");
    let out = w
        .launch(
            &policy(
                &unique("fx"),
                "",
                "spend_cap_usd = 2.00",
                ", rates = { eur = 1.10 }",
            ),
            &["/bin/sh", "-c", &script],
        )
        .run();
    out.assert_clean();
    // eur 1.00 = $1.10; jpy has no rate (refused, not asked); a second
    // $1.10 would pass $2.00; $0.80 still fits.
    assert_eq!(lines(&out.stdout), ["200", "403", "429", "200"], "{out:?}");
    assert!(out.stderr.contains("no rate for it"), "{}", out.stderr);
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 2);
}

#[test]
fn the_actual_cost_and_the_vendor_id_come_from_the_response() {
    let w = VendorWorld::new();
    let script = pay("amount=500&currency=usd&partial=1");
    let out = w
        .launch(
            &policy(
                &unique("actual"),
                "",
                "spend_cap_usd = 100",
                ", response_cost_pointer = \"/amount_received\", response_id_pointer = \"/id\"",
            ),
            &["/bin/sh", "-c", &script],
        )
        .run();
    out.assert_clean();
    assert_eq!(out.stdout.trim(), "200", "{out:?}");
    let run = out.run_id.expect("run id");
    let (cost, reserved, txn): (f64, f64, String) = audit()
        .query_row(
            "SELECT cost_usd, reserved_usd, vendor_txn_id FROM events WHERE run_id = ?1 AND layer = 'request'",
            [&run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row");
    assert_eq!((cost, reserved), (2.5, 5.0));
    assert!(txn.starts_with("pi_"), "{txn}");
}

#[test]
fn a_rate_limit_answers_429_with_retry_after() {
    let w = VendorWorld::new();
    let p = r#"
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["GET"]
  path = "/v1/**"
  action = "allow"
  rate = "3/min"
"#;
    let script = "for i in 1 2 3 4 5; do curl -sS -m 20 -o /dev/null -D - -w '%{http_code}\\n' https://api.vendor.test/v1/poll | grep -i -E '^(retry-after|[0-9]{3}$)'; done";
    let out = w.launch(p, &["/bin/sh", "-c", script]).run();
    out.assert_clean();
    let codes: Vec<&str> = out.stdout.lines().filter(|l| l.len() == 3).collect();
    assert_eq!(codes, ["200", "200", "200", "429", "429"], "{out:?}");
    assert!(
        out.stdout.to_ascii_lowercase().contains("retry-after: 20"),
        "{}",
        out.stdout
    );
    assert_eq!(w.vendor.count("GET", "/v1/poll"), 3);
}

#[test]
fn the_loop_breaker_trips_on_repeats_and_a_human_resets_it() {
    let w = VendorWorld::new();
    let bodies = files::agent_writable("breaker-bodies");
    let go = files::scratch_dir().join(format!("breaker-go-{}", std::process::id()));
    let same = pay("amount=1&currency=usd&description=same");
    let script = format!(
        "for i in 1 2 3 4; do {same}; done; {other}; \
         curl -sS -m 20 -d amount=1 -d currency=usd -d description=same https://api.vendor.test/v1/payment_intents >> {bodies}; \
         while [ ! -e {go} ]; do sleep 0.1; done; {same}",
        other = pay("amount=1&currency=usd&description=different"),
        bodies = bodies.display(),
        go = go.display(),
    );
    let running = w
        .launch(
            &policy(
                &unique("breaker"),
                "loop_breaker = { calls = 3, window = \"10m\" }",
                "",
                "",
            ),
            &["/bin/sh", "-c", &script],
        )
        .spawn();
    let run = running.run_id();
    // Wait for the agent's refused call and read the key from its body.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let key = loop {
        let text = std::fs::read_to_string(&bodies).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            break v["limit"]["key"]
                .as_str()
                .expect("key in the 429 body")
                .to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no 429 body: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let reset = std::process::Command::new(files::enforcer())
        .args(["reset", &run, &key])
        .output()
        .expect("enforcer reset");
    assert!(reset.status.success(), "{reset:?}");
    std::fs::write(&go, "").expect("go");
    let out = running.wait(Duration::from_secs(60));
    let _ = std::fs::remove_file(&go);
    // Two identical calls pass, the third trips, the fourth stays refused;
    // a different call passes; after the reset the same call passes again.
    let got = lines(&out.stdout);
    assert_eq!(got, ["200", "200", "429", "429", "200", "200"], "{out:?}");
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 4);
    leftovers::assert_run_gone(&run);
}
