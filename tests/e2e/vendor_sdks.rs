//! Vendor profiles driven by the vendors' own Python SDKs (stripe, twilio,
//! resend from PyPI, installed by `cargo xtask setup`), talking to the real
//! host names (resolved to the fake vendor with `--resolve`, never a base
//! URL option): allowed calls work unchanged, and enforcer's 403 and 429
//! surface as each library's own error class. The fake vendor refuses
//! nothing itself: every refusal here is enforcer's, decided before the
//! vendor sees a byte.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use enforcer_e2e::{files, leftovers, sdk, world::VendorWorld};

fn key_file(name: &str, value: &str) -> PathBuf {
    let p = files::scratch_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::write(&p, format!("{value}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

/// Runs `script` with the SDK venv's python under `policy` (no approver:
/// an ask is a 403), and returns its output lines.
fn run_sdk(w: &VendorWorld, policy: &str, name: &str, script: &str) -> (Vec<String>, String) {
    let python = sdk::python();
    let file = sdk::script(name, script);
    let py = python.to_string_lossy().to_string();
    let f = file.to_string_lossy().to_string();
    let out = w
        .launch(policy, &[py.as_str(), f.as_str()])
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    let run = out.run_id.clone().expect("run id");
    leftovers::assert_run_gone(&run);
    (
        out.stdout.lines().map(String::from).collect(),
        format!("{}\n{run}", out.stderr),
    )
}

fn vendor_txn_ids(run: &str) -> Vec<Option<String>> {
    let db = rusqlite::Connection::open(files::audit_db()).expect("audit db");
    db.prepare(
        "SELECT vendor_txn_id FROM events WHERE run_id = ?1 AND layer = 'request' \
         AND verdict = 'allow' ORDER BY id",
    )
    .and_then(|mut s| s.query_map([run], |r| r.get(0))?.collect())
    .expect("query")
}

const STRIPE_SCRIPT: &str = r#"
import os, stripe
# stripe-python trusts only its own CA bundle: point it at the run's.
stripe.ca_bundle_path = os.environ["SSL_CERT_FILE"]
stripe.api_key = os.environ["STRIPE_SECRET_KEY"]
stripe.max_network_retries = 0

def attempt(label, call):
    try:
        r = call()
        print(label, "ok", r.to_dict().get("id", "-"))
    except stripe.StripeError as e:
        print(label, type(e).__name__, e.http_status, "|", e.user_message)

pi = stripe.PaymentIntent.create
attempt("small", lambda: pi(amount=4000, currency="usd", stripe_account="acct_1"))
attempt("asked", lambda: pi(amount=6000, currency="usd", stripe_account="acct_1"))
attempt("over-ceiling", lambda: pi(amount=30000, currency="usd", stripe_account="acct_2"))
attempt("other-merchant", lambda: pi(amount=100, currency="usd", stripe_account="acct_9"))
attempt("no-merchant", lambda: pi(amount=100, currency="usd"))
attempt("customer", lambda: stripe.Customer.retrieve("cus_1"))
attempt("refund", lambda: stripe.Refund.create(charge="ch_1"))
attempt("balance-1", lambda: stripe.Balance.retrieve())
attempt("balance-2", lambda: stripe.Balance.retrieve())
"#;

#[test]
fn stripe_python_against_the_stripe_profile() {
    let w = VendorWorld::new();
    let key = key_file("stripe-key", "sk_live_SDKTESTKEY0123456789abcdefABCDEF");
    let policy = format!(
        r#"
[[secret]]
name = "STRIPE_SECRET_KEY"
from = "file:{key}"
hosts = ["api.stripe.com"]
header = "Authorization"
format = "Bearer {{}}"

[[host]]
vendor = "stripe"
  [[host.rule]]
  endpoint = "payment_intents.create"
  action = "allow"
  max_usd_per_call = 200
  ask_above_usd = 50
  require = {{ header."Stripe-Account" = ["acct_1", "acct_2"] }}
  [[host.rule]]
  endpoint = "customers.read"
  action = "allow"
  [[host.rule]]
  endpoint = "balance.read"
  action = "allow"
  rate = "1/min"
"#,
        key = key.display()
    );
    let (lines, stderr) = run_sdk(&w, &policy, "stripe.py", STRIPE_SCRIPT);
    let pi = lines
        .first()
        .and_then(|l| l.strip_prefix("small ok "))
        .unwrap_or_default()
        .to_string();
    assert!(pi.starts_with("pi_"), "{lines:#?}\n{stderr}");
    let short: Vec<String> = lines
        .iter()
        .map(|l| l.split(" | ").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        short,
        [
            format!("small ok {pi}").as_str(),
            "asked PermissionError 403",
            "over-ceiling PermissionError 403",
            "other-merchant PermissionError 403",
            "no-merchant PermissionError 403",
            "customer ok -",
            "refund PermissionError 403",
            "balance-1 ok -",
            "balance-2 RateLimitError 429",
        ],
        "{lines:#?}\n{stderr}"
    );
    // The SDK shows enforcer's reason as the error's message.
    assert!(
        lines[2].contains("above the rule's per-call ceiling of $200.00"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("header Stripe-Account is \"acct_9\""),
        "{}",
        lines[3]
    );
    assert_eq!(w.vendor.count("POST", "/v1/payment_intents"), 1);
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 0);
    assert_eq!(w.vendor.count("GET", "/v1/balance"), 1);
    // The real key went out; the agent held a placeholder.
    let seen = w.vendor.seen();
    assert!(seen.iter().all(|s| s.host == "api.stripe.com"));
    assert!(
        seen.iter().all(|s| s.authorization.as_deref()
            == Some("Bearer sk_live_SDKTESTKEY0123456789abcdefABCDEF"))
    );
    // The payment intent's id is the audit row's vendor id.
    let run = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        vendor_txn_ids(run).first().cloned().flatten().as_deref(),
        Some(pi.as_str())
    );
}

const TWILIO_SCRIPT: &str = r#"
import os
from twilio.rest import Client
from twilio.base.exceptions import TwilioRestException
# twilio-python (requests) trusts REQUESTS_CA_BUNDLE, which enforcer sets.
client = Client("AC00000000000000000000000000000000", os.environ["TWILIO_AUTH_TOKEN"])

def send(label, sender):
    try:
        m = client.messages.create(to="+15005550006", from_=sender, body="hello")
        print(label, "ok")
    except TwilioRestException as e:
        print(label, type(e).__name__, e.status, "|", e.msg)

send("ours", "+15005550001")
send("other-sender", "+15005550009")
send("ours-again", "+15005550001")
send("over-rate", "+15005550001")
"#;

#[test]
fn twilio_python_against_the_twilio_profile() {
    let w = VendorWorld::new();
    let key = key_file("twilio-token", "TWILIOTOKEN0123456789abcdefABCDEF");
    let policy = format!(
        r#"
[[secret]]
name = "TWILIO_AUTH_TOKEN"
from = "file:{key}"
hosts = ["api.twilio.com"]
basic = "password"

[[host]]
vendor = "twilio"
  [[host.rule]]
  endpoint = "messages.create"
  action = "allow"
  cost = {{ fixed_usd = 0.01 }}
  require = {{ form.From = "+15005550001" }}
  rate = "2/min"
"#,
        key = key.display()
    );
    let (lines, stderr) = run_sdk(&w, &policy, "twilio.py", TWILIO_SCRIPT);
    let short: Vec<String> = lines
        .iter()
        .map(|l| l.split(" | ").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        short,
        [
            "ours ok",
            "other-sender TwilioRestException 403",
            "ours-again ok",
            "over-rate TwilioRestException 429",
        ],
        "{lines:#?}\n{stderr}"
    );
    assert!(
        lines[1].contains("form field From is \"+15005550009\""),
        "{}",
        lines[1]
    );
    assert_eq!(
        w.vendor.count(
            "POST",
            "/2010-04-01/Accounts/AC00000000000000000000000000000000/Messages.json"
        ),
        2
    );
    assert!(
        w.vendor
            .seen()
            .iter()
            .all(|s| !String::from_utf8_lossy(&s.body_sample).contains("5550009"))
    );
}

const RESEND_SCRIPT: &str = r#"
import os, resend
# resend-python (requests) trusts REQUESTS_CA_BUNDLE, which enforcer sets.
resend.api_key = os.environ["RESEND_API_KEY"]

def send(label, sender):
    try:
        r = resend.Emails.send({"from": sender, "to": ["b@example.org"], "subject": "s", "html": "<p>h</p>"})
        print(label, "ok")
    except resend.exceptions.ResendError as e:
        print(label, type(e).__name__, e.code, "|", e.message)

send("ours", "agent@example.com")
send("other-sender", "ceo@example.com.evil.test")
send("ours-again", "agent@example.com")
send("over-rate", "agent@example.com")
"#;

#[test]
fn resend_python_against_the_resend_profile() {
    let w = VendorWorld::new();
    let key = key_file("resend-key", "re_SDKTESTKEY0123456789abcdefABCDEF");
    let policy = format!(
        r#"
[[secret]]
name = "RESEND_API_KEY"
from = "file:{key}"
hosts = ["api.resend.com"]
header = "Authorization"
format = "Bearer {{}}"

[[host]]
vendor = "resend"
  [[host.rule]]
  endpoint = "emails.send"
  action = "allow"
  require = {{ json."/from" = "*@example.com" }}
  rate = "2/min"
"#,
        key = key.display()
    );
    let (lines, stderr) = run_sdk(&w, &policy, "resend.py", RESEND_SCRIPT);
    let short: Vec<String> = lines
        .iter()
        .map(|l| l.split(" | ").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        short,
        [
            "ours ok",
            "other-sender ResendError 403",
            "ours-again ok",
            "over-rate RateLimitError 429",
        ],
        "{lines:#?}\n{stderr}"
    );
    assert_eq!(w.vendor.count("POST", "/emails"), 2);
}
