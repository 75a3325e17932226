//! Authorized excess, end to end, against a fake vendor that refuses
//! nothing itself: a per-call ceiling, amount thresholds (under: allowed,
//! above: asked, far above: denied), and a merchant scope in a header and
//! in a body field, with the ways an agent might smuggle a second account
//! past it. Everything refused is refused before the vendor sees a byte.

use std::time::Duration;

use enforcer_e2e::{files, leftovers, world::VendorWorld};

/// Payment intents cost their form `amount` (cents): allowed up to $50,
/// asked above, refused above $1,000, and only for accounts acct_1 and
/// acct_2 (`Stripe-Account`). Customers may be created only for account
/// acct_1, named in the form body.
const POLICY: &str = r#"
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100, currency_field = "currency", rates = { eur = 1.08 } }
  ask_above_usd = 50
  deny_above_usd = 1000
  require = { header."Stripe-Account" = ["acct_1", "acct_2"] }
  [[host.rule]]
  method = "POST"
  path = "/v1/customers"
  action = "allow"
  require = { form.account = "acct_1" }
"#;

/// A curl printing `<label> <status>`; `args` are curl arguments.
fn call(label: &str, args: &str) -> String {
    format!("curl -sS -m 60 -o /dev/null -w '{label} %{{http_code}}\\n' {args}")
}

fn pay(label: &str, account: &str, amount: &str) -> String {
    call(
        label,
        &format!(
            "-H 'Stripe-Account: {account}' -d amount={amount} -d currency=usd https://api.vendor.test/v1/payment_intents"
        ),
    )
}

fn enforcer(args: &[&str]) -> std::process::Output {
    std::process::Command::new(files::enforcer())
        .args(args)
        .output()
        .expect("run enforcer")
}

/// Waits for a request of `run` to be pending and returns it (JSON).
fn next_pending(run: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = enforcer(&["approvals", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|p| p["run_id"] == run);
        if let Some(p) = found {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request waited for approval"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn causes(run: &str) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open(files::audit_db()).expect("audit db");
    db.prepare(
        "SELECT verdict, coalesce(cause, '') FROM events \
         WHERE run_id = ?1 AND layer = 'request' ORDER BY id",
    )
    .and_then(|mut s| {
        s.query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    })
    .expect("query")
}

#[test]
fn under_a_threshold_is_allowed_above_is_asked_far_above_is_denied() {
    let w = VendorWorld::new();
    let script = [
        pay("under", "acct_1", "4000"),
        pay("at", "acct_1", "5000"),
        pay("above", "acct_2", "48000"),
        pay("far-above", "acct_1", "100001"),
    ]
    .join("; ");
    let running = w
        .launch(POLICY, &["/bin/sh", "-c", &script])
        .flag("--approver")
        .flag("socket")
        .spawn();
    let run = running.run_id();
    // The $480 call waits for a human, who sees the money and the merchant.
    let p = next_pending(&run);
    assert_eq!(p["path"], "/v1/payment_intents", "{p}");
    assert_eq!(p["cost"], "$480.00 (48000 usd)", "{p}");
    assert_eq!(
        p["why"],
        serde_json::json!(["$480.00 (48000 usd) is above ask_above_usd $50.00"]),
        "{p}"
    );
    assert_eq!(
        p["scope"],
        serde_json::json!(["header Stripe-Account: acct_2"]),
        "{p}"
    );
    assert_eq!(
        p["caps"][0], "per-call ceiling $1000 (deny_above_usd): this call is $480.00",
        "{p}"
    );
    let listed = enforcer(&["approvals"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for want in [
        "asked because: $480.00 (48000 usd) is above ask_above_usd $50.00",
        "scope: header Stripe-Account: acct_2",
        "cost: $480.00 (48000 usd)",
    ] {
        assert!(listed.contains(want), "{want:?} not in:\n{listed}");
    }
    assert_eq!(
        w.vendor.count("POST", "/v1/payment_intents"),
        2,
        "the asked call waits unforwarded"
    );
    let id = p["id"].as_u64().expect("id").to_string();
    let out = enforcer(&["approve", &id, "--run", &run]);
    assert!(out.status.success(), "{out:?}");
    let out = running.wait(Duration::from_secs(60));
    out.assert_clean();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["under 200", "at 200", "above 200", "far-above 403"],
        "{out:?}"
    );
    // $1,000.01 never reached the vendor, and was never asked.
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 3);
    assert!(
        w.vendor
            .seen()
            .iter()
            .all(|s| !String::from_utf8_lossy(&s.body_sample).contains("100001"))
    );
    let rows = causes(&run);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[2], ("allow".into(), "approved".into()), "{rows:?}");
    assert_eq!(
        rows[3],
        ("deny".into(), "over-call-ceiling".into()),
        "{rows:?}"
    );
    leftovers::assert_run_gone(&run);
}

#[test]
fn without_an_approver_an_ask_above_the_threshold_is_a_denial_and_no_amount_is_refused() {
    let w = VendorWorld::new();
    let script = [
        pay("under", "acct_1", "4999"),
        pay("above", "acct_1", "5001"),
        // No readable amount: the thresholds cannot judge it, so it is refused.
        call(
            "no-amount",
            "-H 'Stripe-Account: acct_1' -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call(
            "two-amounts",
            "-H 'Stripe-Account: acct_1' -d amount=100 -d amount=900000 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
    ]
    .join("; ");
    let out = w
        .launch(POLICY, &["/bin/sh", "-c", &script])
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["under 200", "above 403", "no-amount 403", "two-amounts 403"],
        "{out:?}"
    );
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 1);
    let run = out.run_id.expect("run id");
    let rows = causes(&run);
    let got: Vec<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        got,
        ["allowed", "no-approver", "cost-unknown", "cost-unknown"],
        "{rows:?}"
    );
    leftovers::assert_run_gone(&run);
}

#[test]
fn a_second_merchant_cannot_be_smuggled_past_the_scope() {
    let w = VendorWorld::new();
    let cust = "https://api.vendor.test/v1/customers";
    let form = "-H 'Content-Type: application/x-www-form-urlencoded'";
    let script = [
        pay("header-ok", "acct_1", "100"),
        pay("header-other", "acct_3", "100"),
        call(
            "header-missing",
            "-d amount=100 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call(
            "header-twice",
            "-H 'Stripe-Account: acct_1' -H 'Stripe-Account: acct_3' -d amount=100 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call(
            "header-underscore",
            "-H 'Stripe-Account: acct_1' -H 'Stripe_Account: acct_3' -d amount=100 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call(
            "header-list",
            "-H 'Stripe-Account: acct_1,acct_3' -d amount=100 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call(
            "header-case",
            "-H 'Stripe-Account: ACCT_1' -d amount=100 -d currency=usd https://api.vendor.test/v1/payment_intents",
        ),
        call("form-ok", &format!("-d account=acct_1 -d name=a {cust}")),
        call("form-other", &format!("-d account=acct_3 {cust}")),
        call("form-missing", &format!("-d name=a {cust}")),
        call("form-twice", &format!("-d account=acct_1 -d account=acct_3 {cust}")),
        call("form-array", &format!("-d account=acct_1 -d 'account[]=acct_3' {cust}")),
        call("form-index", &format!("-d account=acct_1 -d 'account%5B0%5D=acct_3' {cust}")),
        call("form-php-space", &format!("-d account=acct_1 -d '+account=acct_3' {cust}")),
        call("form-query", &format!("-d account=acct_1 '{cust}?account=acct_3'")),
        call(
            "form-as-json",
            &format!("-H 'Content-Type: application/json' -d '{{\"account\":\"acct_1\"}}' {cust}"),
        ),
        call(
            "form-as-multipart",
            &format!("-F account=acct_1 {cust}"),
        ),
        call("form-ok-again", &format!("{form} -d account=acct_1 {cust}")),
    ]
    .join("; ");
    let out = w
        .launch(POLICY, &["/bin/sh", "-c", &script])
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    let got: Vec<&str> = out.stdout.lines().collect();
    let want = [
        "header-ok 200",
        "header-other 403",
        "header-missing 403",
        "header-twice 403",
        "header-underscore 403",
        "header-list 403",
        "header-case 403",
        "form-ok 200",
        "form-other 403",
        "form-missing 403",
        "form-twice 403",
        "form-array 403",
        "form-index 403",
        "form-php-space 403",
        "form-query 403",
        "form-as-json 403",
        "form-as-multipart 403",
        "form-ok-again 200",
    ];
    assert_eq!(got, want, "{}", out.stderr);
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 1);
    assert_eq!(w.vendor.count("POST", "/v1/customers"), 2);
    // The other account never reached the vendor, in any spelling.
    for s in w.vendor.seen() {
        let text = format!(
            "{:?} {:?} {}",
            s.headers,
            s.query,
            String::from_utf8_lossy(&s.body_sample)
        );
        assert!(!text.to_ascii_lowercase().contains("acct_3"), "{text}");
    }
    let run = out.run_id.expect("run id");
    let rows = causes(&run);
    let unmet = rows
        .iter()
        .filter(|(_, c)| c == "requirement-unmet")
        .count();
    assert_eq!(unmet, 15, "{rows:?}");
    leftovers::assert_run_gone(&run);
}

/// What a fake vendor received once proved that an agent could make the
/// proxy drop a checked header (`Connection: Stripe-Account` is hop-by-hop
/// stripping of the scope), or hide a second account where a framework
/// reads it (a second Content-Type, brackets PHP or Rack read as the same
/// name, a `;` Rack 2 splits on). All of it is refused before the vendor
/// sees a byte; a plain `Connection: keep-alive` still goes through.
/// (Connection headers are HTTP/1 only: curl drops them over HTTP/2.)
#[test]
fn no_header_trick_or_field_spelling_gets_a_second_merchant_through() {
    let w = VendorWorld::new();
    let pi = "https://api.vendor.test/v1/payment_intents";
    let cust = "https://api.vendor.test/v1/customers";
    let pay_args = "-d amount=100 -d currency=usd";
    let script = [
        call(
            "connection-scope",
            &format!("--http1.1 -H 'Stripe-Account: acct_1' -H 'Connection: Stripe-Account' {pay_args} {pi}"),
        ),
        call(
            "connection-lower",
            &format!("--http1.1 -H 'Stripe-Account: acct_1' -H 'Connection: stripe-account' {pay_args} {pi}"),
        ),
        call(
            "connection-content-type",
            &format!("--http1.1 -H 'Connection: Content-Type' -d account=acct_1 {cust}"),
        ),
        call(
            "content-type-twice",
            &format!(
                "-H 'Content-Type: application/x-www-form-urlencoded' -H 'Content-Type: application/json' -d account=acct_1 {cust}"
            ),
        ),
        call("form-bracket-tail", &format!("-d account=acct_1 -d 'account]=acct_3' {cust}")),
        call("form-bracket-around", &format!("-d account=acct_1 -d '[account]=acct_3' {cust}")),
        call(
            "form-semicolon",
            &format!("-d 'account=acct_1&x=1;account=acct_3' {cust}"),
        ),
        call(
            "keep-alive-ok",
            &format!("--http1.1 -H 'Connection: keep-alive' -d account=acct_1 {cust}"),
        ),
    ]
    .join("; ");
    let out = w
        .launch(POLICY, &["/bin/sh", "-c", &script])
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    let got: Vec<&str> = out.stdout.lines().collect();
    let want = [
        "connection-scope 400",
        "connection-lower 400",
        "connection-content-type 400",
        "content-type-twice 400",
        "form-bracket-tail 403",
        "form-bracket-around 403",
        "form-semicolon 403",
        "keep-alive-ok 200",
    ];
    assert_eq!(got, want, "{}", out.stderr);
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 0);
    assert_eq!(w.vendor.count("POST", "/v1/customers"), 1);
    for s in w.vendor.seen() {
        let body = String::from_utf8_lossy(&s.body_sample);
        assert!(!body.contains("acct_3"), "{body}");
    }
    let run = out.run_id.expect("run id");
    let rows = causes(&run);
    let ambiguous = rows.iter().filter(|(_, c)| c == "ambiguous").count();
    assert_eq!(ambiguous, 4, "{rows:?}");
    leftovers::assert_run_gone(&run);
}
