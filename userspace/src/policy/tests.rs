//! Whole-policy tests: parsing, validation messages, connection and request
//! decisions, explain and summary.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn parse(text: &str) -> Policy {
    match Policy::parse(text, Path::new("policy.toml")) {
        Ok(p) => p,
        Err(e) => panic!("policy did not parse:\n{e}"),
    }
}

fn errors(text: &str) -> String {
    match Policy::parse(text, Path::new("policy.toml")) {
        Ok(_) => panic!("policy parsed but should not have:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const BILLING: &str = r#"
[run]
name = "billing-agent"
ttl = "3h"
spend_cap_usd = 1000

[[secret]]
name = "STRIPE_SECRET_KEY"
from = "env:STRIPE_SECRET_KEY"
hosts = ["api.stripe.com"]
header = "Authorization"
format = "Bearer {}"

[[host]]
name = "api.stripe.com"
ports = [443]
spend_cap_usd = 500
rate = "60/min"

  [[host.rule]]
  method = "GET"
  path = "/v1/customers/*"
  action = "allow"

  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100, currency_field = "currency", rates = { eur = 1.08 } }

  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "ask"

[[host]]
name = "*.pypi.org"
action = "allow"

[[host]]
name = "pypi.org"
action = "allow"

[[host]]
name = "upload.pypi.org"
action = "deny"
"#;

#[test]
fn billing_parses_with_all_fields() {
    let p = parse(BILLING);
    assert_eq!(p.run.name, "billing-agent");
    assert_eq!(p.run.ttl, Some(Duration::from_secs(3 * 3600)));
    assert_eq!(p.run.spend_cap_usd, Some(1000.0));
    let stripe = &p.hosts[0];
    assert_eq!(stripe.ports, vec![443]);
    assert_eq!(stripe.spend_cap_usd, Some(500.0));
    assert_eq!(
        stripe.rate.map(|r| r.to_string()).as_deref(),
        Some("60/min")
    );
    assert_eq!(stripe.secrets, vec!["STRIPE_SECRET_KEY".to_string()]);
    assert_eq!(stripe.rules.len(), 3);
    let cost = stripe.rules[1].cost.as_ref().unwrap();
    assert_eq!(cost.source, CostSource::FormField("amount".into()));
    assert_eq!(cost.divide_by, 100.0);
    assert_eq!(cost.currency, CostCurrency::Field("currency".into()));
    assert_eq!(cost.rates.get("eur"), Some(&1.08));
    assert_eq!(p.hosts[1].ports, vec![443, 80]);
    let secret = &p.secrets[0];
    assert_eq!(secret.from, SecretSource::Env("STRIPE_SECRET_KEY".into()));
    assert_eq!(
        secret.injection,
        Injection::Header {
            name: "Authorization".into(),
            format: "Bearer {}".into()
        }
    );
}

#[test]
fn request_decisions_first_match_and_default_deny() {
    let p = parse(BILLING);
    let stripe = p.host("api.stripe.com").unwrap();
    let v = stripe.decide("GET", "/v1/customers/cus_1");
    assert_eq!(v.action, Action::Allow);
    assert_eq!(v.rule.as_ref().unwrap().index, 0);
    let v = stripe.decide("POST", "/v1/refunds");
    assert_eq!(v.action, Action::Ask);
    let rule = v.rule.unwrap();
    assert_eq!(rule.index, 2);
    assert_eq!(rule.line, 31);
    assert_eq!(
        rule.description,
        "POST /v1/refunds -> ask (rule 3 of api.stripe.com, policy.toml:31)"
    );
    for (m, path) in [
        ("DELETE", "/v1/customers/cus_1"),
        ("GET", "/v1/customers"),
        ("GET", "/v1/customers/cus_1/sources"),
        ("GET", "/v1/charges"),
    ] {
        let v = stripe.decide(m, path);
        assert!(v.is_default_deny(), "{m} {path}: {v:?}");
        assert_eq!(v.reason, "no rule matches; default deny");
    }
    // A lower-case method is not another method: it is refused as ambiguous.
    let v = stripe.decide("get", "/v1/customers/cus_1");
    assert_eq!(v.action, Action::Deny);
    assert!(v.reason.contains("send `GET`"), "{}", v.reason);
}

#[test]
fn first_match_wins_in_file_order() {
    let p = parse(
        r#"
[[host]]
name = "api.example.com"
  [[host.rule]]
  method = "GET"
  path = "/v1/admin/*"
  action = "deny"
  [[host.rule]]
  method = "GET"
  path = "/v1/**"
  action = "allow"
"#,
    );
    let h = &p.hosts[0];
    assert_eq!(h.decide("GET", "/v1/admin/x").action, Action::Deny);
    assert_eq!(h.decide("GET", "/v1/admin/x").rule.unwrap().index, 0);
    assert_eq!(h.decide("GET", "/v1/other").action, Action::Allow);
    assert_eq!(h.decide("GET", "/v1/admin/x/y").action, Action::Allow);
}

#[test]
fn ambiguous_paths_are_refused_before_any_rule() {
    let p = parse(
        r#"
[[host]]
name = "api.example.com"
  [[host.rule]]
  method = "*"
  path = "/**"
  action = "allow"
"#,
    );
    let h = &p.hosts[0];
    assert_eq!(h.decide("GET", "/anything").action, Action::Allow);
    for bad in [
        "/v1/../admin",
        "/./x",
        "/v1//x",
        "/v1/%2e%2e/x",
        "relative",
        "/a\\b",
    ] {
        let v = h.decide("GET", bad);
        assert!(v.is_default_deny(), "{bad}: {v:?}");
        assert!(
            v.reason.starts_with("ambiguous request refused"),
            "{}",
            v.reason
        );
    }
}

#[test]
fn a_path_whose_case_changes_the_rule_is_ambiguous() {
    let p = parse(
        r#"
[[host]]
name = "api.example.com"
  [[host.rule]]
  method = "*"
  path = "/v1/admin/**"
  action = "deny"
  [[host.rule]]
  method = "POST"
  path = "/v1/Files/*"
  action = "ask"
  [[host.rule]]
  method = "*"
  path = "/v1/**"
  action = "allow"

[[host]]
name = "case.example.com"
allow_ambiguous = ["mixed-case"]
  [[host.rule]]
  method = "*"
  path = "/v1/admin/**"
  action = "deny"
  [[host.rule]]
  method = "*"
  path = "/**"
  action = "allow"
"#,
    );
    let h = &p.hosts[0];
    // Ids in mixed case that no rule cares about are fine.
    assert_eq!(
        h.decide("GET", "/v1/customers/cus_AbC").action,
        Action::Allow
    );
    assert_eq!(h.decide("POST", "/v1/Files/x").action, Action::Ask);
    for target in ["/v1/Admin/users", "/V1/ADMIN", "/v1/files/x", "/v1/FILES/x"] {
        let method = if target.to_ascii_lowercase().contains("files") {
            "POST"
        } else {
            "GET"
        };
        let v = h.decide(method, target);
        assert_eq!(v.action, Action::Deny, "{target}");
        assert!(v.reason.contains("ignoring case"), "{target}: {}", v.reason);
    }
    // Opted in: decided as sent.
    assert_eq!(
        p.hosts[1].decide("GET", "/v1/Admin/users").action,
        Action::Allow
    );
}

#[test]
fn a_suffix_that_changes_the_rule_is_ambiguous() {
    let p = parse(
        r#"
[[host]]
name = "api.example.com"
  [[host.rule]]
  method = "*"
  path = "/v1/admin/**"
  action = "deny"
  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "ask"
  [[host.rule]]
  method = "*"
  path = "/v1/**"
  action = "allow"
"#,
    );
    let h = &p.hosts[0];
    for (method, target) in [
        ("POST", "/v1/refunds.json"),
        ("POST", "/v1/refunds."),
        ("GET", "/v1/admin.json"),
        ("GET", "/v1/admin%20/users"),
        ("GET", "/v1/admin./users"),
        ("POST", "/v1/Refunds.JSON"),
    ] {
        let v = h.decide(method, target);
        assert_eq!(v.action, Action::Deny, "{target}");
        assert!(v.reason.contains("ambiguous"), "{target}: {}", v.reason);
    }
    // Suffixes no rule cares about are fine.
    assert_eq!(
        h.decide("GET", "/v1/files/report.pdf").action,
        Action::Allow
    );
    assert_eq!(
        h.decide("GET", "/v1/customers/cus_1.json").action,
        Action::Allow
    );
}

#[test]
fn opt_ins_are_validated_and_change_what_is_accepted() {
    let p = parse(
        r#"
[[host]]
name = "gitlab.example.com"
allow_ambiguous = ["encoded-slash", "semicolons"]
  [[host.rule]]
  method = "GET"
  path = "/api/v4/projects/*"
  action = "allow"
"#,
    );
    let h = &p.hosts[0];
    assert_eq!(
        h.decide("GET", "/api/v4/projects/group%2Fproj").action,
        Action::Allow
    );
    assert_eq!(
        h.decide("GET", "/api/v4/projects/a;b").action,
        Action::Allow
    );
    assert!(
        h.decide("GET", "/api/v4/projects/../x")
            .reason
            .contains("ambiguous")
    );
    let err = Policy::parse(
        "[[host]]\nname = \"a.example.com\"\nallow_ambiguous = [\"dot-segments\"]\naction = \"allow\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown entry `dot-segments`"), "{err}");
    assert!(err.contains("\"encoded-slash\""), "{err}");
}

#[test]
fn connection_verdicts() {
    let p = parse(BILLING);
    assert_eq!(
        p.connection("api.stripe.com", 443),
        ConnectionVerdict::Intercept { host: 0 }
    );
    assert_eq!(
        p.connection("API.Stripe.COM.", 443),
        ConnectionVerdict::Intercept { host: 0 }
    );
    let ConnectionVerdict::Refuse { reason } = p.connection("api.stripe.com", 80) else {
        panic!("port 80 must be refused");
    };
    assert_eq!(
        reason,
        "port 80 is not allowed for api.stripe.com (policy.toml:14 allows 443)"
    );
    assert_eq!(
        p.connection("files.pypi.org", 443),
        ConnectionVerdict::PassThrough { host: 1 }
    );
    assert_eq!(
        p.connection("pypi.org", 80),
        ConnectionVerdict::PassThrough { host: 2 }
    );
    let ConnectionVerdict::Refuse { reason } = p.connection("upload.pypi.org", 443) else {
        panic!("denied host must be refused");
    };
    assert!(reason.contains("denied"), "{reason}");
    let ConnectionVerdict::Refuse { reason } = p.connection("evil.com", 443) else {
        panic!("unknown host must be refused");
    };
    assert_eq!(reason, "host evil.com is not in the policy");
    for name in [
        "evilpypi.org",
        "pypi.org.evil.com",
        "stripe.com",
        "x.api.stripe.com",
        "",
        "1.2.3.4",
    ] {
        assert!(
            matches!(p.connection(name, 443), ConnectionVerdict::Refuse { .. }),
            "{name}"
        );
    }
    let ConnectionVerdict::Refuse { reason } = p.connection("evil\n.com", 443) else {
        panic!("must refuse");
    };
    assert!(!reason.contains('\n'));
}

#[test]
fn exact_beats_wildcard_and_longest_wildcard_wins() {
    let p = parse(
        r#"
[[host]]
name = "*.example.com"
action = "allow"

[[host]]
name = "*.api.example.com"
action = "deny"

[[host]]
name = "open.api.example.com"
action = "allow"
"#,
    );
    assert_eq!(p.host_index("www.example.com"), Some(0));
    assert_eq!(p.host_index("v1.api.example.com"), Some(1));
    assert_eq!(p.host_index("a.v1.api.example.com"), Some(1));
    assert_eq!(p.host_index("open.api.example.com"), Some(2));
    assert_eq!(p.host_index("api.example.com"), Some(0));
    assert_eq!(p.host_index("example.com"), None);
    assert!(!p.allows_name("v1.api.example.com"));
    assert!(p.allows_name("open.api.example.com."));
    assert!(!p.allows_name("example.com"));
}

#[test]
fn interception_rules() {
    let p = parse(
        r#"
[[secret]]
name = "TOKEN"
from = "file:/run/secrets/token"
hosts = ["*.svc.example.com"]
query = "token"

[[host]]
name = "plain.example.com"
action = "allow"

[[host]]
name = "capped.example.com"
action = "allow"
max_calls = 10

[[host]]
name = "*.svc.example.com"
action = "allow"

[[host]]
name = "a.svc.example.com"
action = "allow"
"#,
    );
    assert_eq!(p.hosts[0].mode(), HostMode::PassThrough);
    assert!(!p.hosts[0].intercepted());
    assert_eq!(p.hosts[1].mode(), HostMode::Intercept);
    // A secret forces interception, for the wildcard and the exact host below it.
    assert_eq!(p.hosts[2].mode(), HostMode::Intercept);
    assert_eq!(p.hosts[3].mode(), HostMode::Intercept);
    assert_eq!(
        p.connection("b.svc.example.com", 443),
        ConnectionVerdict::Intercept { host: 2 }
    );
    // Whole-host allow under interception allows every request, in any
    // form but a dot segment (refused everywhere).
    let v = p.hosts[1].decide("DELETE", "/a;b//c%2Fd");
    assert_eq!(v.action, Action::Allow);
    assert!(v.rule.is_none());
    assert!(!v.is_default_deny());
    assert_eq!(p.hosts[1].decide("DELETE", "/../x").action, Action::Deny);
}

#[test]
fn tcp_rules() {
    let p = parse(
        r#"
[[tcp]]
host = "DB.example.com."
port = 5432

[[tcp]]
host = "10.1.2.3"
port = 6379

[[tcp]]
host = "2001:db8::1"
port = 22
"#,
    );
    assert_eq!(
        p.tcp[0],
        TcpRule {
            host: "db.example.com".into(),
            port: 5432
        }
    );
    assert!(p.tcp_rule("db.example.com", 5432).is_some());
    assert!(p.tcp_rule("DB.EXAMPLE.COM.", 5432).is_some());
    assert!(p.tcp_rule("db.example.com", 5433).is_none());
    assert!(p.tcp_rule("10.1.2.3", 6379).is_some());
    assert!(p.tcp_rule("::ffff:10.1.2.3", 6379).is_some());
    assert!(p.tcp_rule("2001:db8:0::1", 22).is_some());
    assert!(p.tcp_rule("[2001:db8::1]", 22).is_some());
    assert!(p.tcp_rule("x.db.example.com", 5432).is_none());
    let names = p.names();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].pattern.as_str(), "db.example.com");
    assert_eq!(names[0].source, NameSource::Tcp(0));
    assert!(p.allows_name("db.example.com"));
    assert!(!p.allows_name("10.1.2.3"));
}

#[test]
fn empty_policy_denies_everything() {
    let p = parse("# nothing\n");
    assert_eq!(p.run.name, "policy");
    assert!(p.hosts.is_empty() && p.tcp.is_empty() && p.secrets.is_empty());
    assert!(matches!(
        p.connection("example.com", 443),
        ConnectionVerdict::Refuse { .. }
    ));
    assert!(p.names().is_empty());
}

#[test]
fn local_settings() {
    let p = parse(
        r#"
[local]
loopback_ports = [5432, 6379]
unix_sockets = ["/run/postgresql/.s.PGSQL.5432", "@abstract-name"]
allow_user_namespaces = true
"#,
    );
    assert_eq!(p.local.loopback_ports, vec![5432, 6379]);
    assert_eq!(p.local.unix_sockets.len(), 2);
    assert!(p.local.allow_user_namespaces);
}

#[test]
fn all_semantic_problems_are_reported_together() {
    let out = errors(
        r#"
[run]
ttl = "0s"

[[host]]
name = "*.com"
action = "allow"

[[host]]
name = "api.example.com"
  [[host.rule]]
  method = "get"
  path = "v1"
  action = "allow"
"#,
    );
    assert!(
        out.contains("policy.toml:3:7: error: ttl: duration `0s` is zero"),
        "{out}"
    );
    assert!(
        out.contains("policy.toml:6:8: error: `*.com` is too broad"),
        "{out}"
    );
    assert!(
        out.contains("policy.toml:12:12: error: method `get` must be uppercase"),
        "{out}"
    );
    assert!(
        out.contains("policy.toml:13:10: error: path `v1` must start with `/`"),
        "{out}"
    );
}

#[test]
fn validation_messages() {
    for (text, expected) in [
        (
            "[[host]]\nname = \"a.com\"\n",
            "host `a.com` allows nothing: add [[host.rule]] entries",
        ),
        (
            "[[host]]\nname = \"a.com\"\naction = \"ask\"\n",
            "`ask` is only for rules",
        ),
        (
            "[[host]]\nname = \"a.com\"\naction = \"deny\"\n[[host.rule]]\nmethod = \"*\"\npath = \"/**\"\naction = \"allow\"\n",
            "rules on a denied host",
        ),
        (
            "[[host]]\nname = \"a.com\"\naction = \"deny\"\nrate = \"1/s\"\n",
            "`rate` has no effect on a denied host",
        ),
        (
            "[[host]]\nname = \"a.com\"\nports = []\naction = \"allow\"\n",
            "`ports` is empty",
        ),
        (
            "[[host]]\nname = \"a.com\"\nports = [443, 443]\naction = \"allow\"\n",
            "port 443 is listed twice",
        ),
        (
            "[[host]]\nname = \"a.com\"\nspend_cap_usd = -5\naction = \"allow\"\n",
            "spend_cap_usd must be greater than 0",
        ),
        (
            "[[host]]\nname = \"a.com\"\nmax_calls = 0\naction = \"allow\"\n",
            "max_calls must be at least 1",
        ),
        (
            "[run]\nspend_cap_usd = nan\n",
            "spend_cap_usd must be greater than 0",
        ),
        ("[run]\nname = \"a b\"\n", "run name `a b`"),
        ("[run]\nttl = 3600\n", "expected a duration string"),
        ("[local]\nloopback_ports = [0]\n", "port 0 is out of range"),
        (
            "[local]\nunix_sockets = [\"x.sock\"]\n",
            "expected an absolute path",
        ),
        (
            "[[tcp]]\nhost = \"*.x.com\"\nport = 1\n",
            "cannot be wildcards",
        ),
        (
            "[[tcp]]\nhost = \"127.0.0.1\"\nport = 5432\n",
            "loopback_ports",
        ),
        (
            "[[tcp]]\nhost = \"a.com\"\nport = 1\n[[tcp]]\nhost = \"A.com\"\nport = 1\n",
            "duplicate [[tcp]] destination `a.com` port 1: already listed at line 1",
        ),
        (
            "[[tcp]]\nhost = \"a.com\"\nport = 443\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "both a raw [[tcp]] destination and an HTTP [[host]]",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = [\"GET\", \"GET\"]\npath = \"/\"\naction = \"allow\"\n",
            "policy.toml:4:18: error: method `GET` is listed twice",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"deny\"\ncost = { fixed_usd = 1 }\n",
            "a denied call costs nothing",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { divide_by = 100 }\n",
            "cost needs a source",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { json_pointer = \"amount\" }\n",
            "is not a JSON pointer",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { query = \"n\", currency = \"EUR\" }\n",
            "write currency codes in lowercase: `eur`",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { query = \"n\", currency = \"eur\" }\n",
            "no rate for `eur`",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { fixed_usd = 1, divide_by = 2 }\n",
            "`divide_by` does not apply to `fixed_usd`",
        ),
        (
            "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/\"\naction = \"allow\"\ncost = { form_field = \"n\", currency_field = \"c\", rates = { usd = 1 } }\n",
            "`usd` is always 1",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"vault:x\"\nhosts = [\"a.com\"]\nheader = \"X-Key\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "expected `env:VAR`, `file:/absolute/path` or `credential:NAME`",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"credential:../etc/shadow\"\nhosts = [\"a.com\"]\nheader = \"X-Key\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "is not a systemd credential name",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"credential:..\"\nhosts = [\"a.com\"]\nheader = \"X-Key\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "is not a systemd credential name",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "secret has no injection style",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nheader = \"X\"\nquery = \"k\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "secret has two injection styles (`header` and `query`)",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nheader = \"X\"\nformat = \"Bearer\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "format must contain `{}` exactly once",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nbasic = \"user\"\nformat = \"{}\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "`format` only applies with `header`",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nheader = \"Host\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "managed by the proxy",
        ),
        (
            "[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nheader = \"X\"\n[[host]]\nname = \"a.com\"\naction = \"deny\"\n",
            "which is denied",
        ),
        (
            "[[secret]]\nname = \"A\"\nfrom = \"env:A\"\nhosts = [\"a.com\"]\nheader = \"authorization\"\n[[secret]]\nname = \"B\"\nfrom = \"env:B\"\nhosts = [\"a.com\"]\nheader = \"Authorization\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "both set the header `authorization` on `a.com`",
        ),
        (
            "[[secret]]\nname = \"A\"\nfrom = \"env:A\"\nhosts = [\"a.com\"]\nbasic = \"user\"\n[[secret]]\nname = \"A\"\nfrom = \"env:B\"\nhosts = [\"a.com\"]\nbasic = \"password\"\n[[host]]\nname = \"a.com\"\naction = \"allow\"\n",
            "duplicate secret `A`: already defined at line 1",
        ),
        (
            "[[secret]]\nname = \"1A\"\nfrom = \"env:A\"\nhosts = []\nbasic = \"user\"\n",
            "`hosts` is empty",
        ),
    ] {
        let out = errors(text);
        assert!(
            out.contains(expected),
            "expected {expected:?} in:\n{out}\nfor:\n{text}"
        );
    }
}

#[test]
fn basic_user_and_password_may_share_a_host() {
    let p = parse(
        "[[secret]]\nname = \"U\"\nfrom = \"env:U\"\nhosts = [\"a.com\"]\nbasic = \"user\"\n\
         [[secret]]\nname = \"P\"\nfrom = \"env:P\"\nhosts = [\"a.com\"]\nbasic = \"password\"\n\
         [[host]]\nname = \"a.com\"\naction = \"allow\"\n",
    );
    assert_eq!(p.hosts[0].secrets, vec!["U".to_string(), "P".to_string()]);
}

#[test]
fn unreachable_rules_are_errors() {
    let rule = |m: &str, p: &str| {
        format!("[[host.rule]]\nmethod = {m}\npath = \"{p}\"\naction = \"allow\"\n")
    };
    for (first, second) in [
        (rule("\"GET\"", "/a"), rule("\"GET\"", "/a")),
        (rule("\"*\"", "/a"), rule("\"POST\"", "/a")),
        (rule("\"GET\"", "/**"), rule("\"GET\"", "/x/y")),
        (
            rule("[\"GET\", \"HEAD\"]", "/v1/*"),
            rule("\"HEAD\"", "/v1/x"),
        ),
        (
            rule("\"*\"", "/v1/**"),
            rule("[\"GET\", \"POST\"]", "/v1/*/z"),
        ),
    ] {
        let text = format!("[[host]]\nname = \"a.com\"\n{first}{second}");
        let out = errors(&text);
        assert!(
            out.contains("unreachable rule (shadowed by rule 1 at line 3)"),
            "{out}"
        );
        assert!(out.contains("policy.toml:7:1"), "{out}");
    }
    // Narrower first, broader later: fine.
    parse(&format!(
        "[[host]]\nname = \"a.com\"\n{}{}",
        rule("\"GET\"", "/a"),
        rule("\"*\"", "/**")
    ));
    // Overlapping but not covering: fine.
    parse(&format!(
        "[[host]]\nname = \"a.com\"\n{}{}",
        rule("\"GET\"", "/a/*"),
        rule("\"*\"", "/a/b")
    ));
}

#[test]
fn explain_outputs() {
    let p = parse(BILLING);
    let e = p
        .explain("POST", "https://api.stripe.com/v1/refunds")
        .unwrap();
    assert_eq!(
        e.to_string(),
        "POST https://api.stripe.com/v1/refunds -> ASK (rule 3: POST /v1/refunds -> ask, policy.toml:31)\n  \
         cost: none (no cost rule: the call counts $0 against the caps)\n  \
         spend cap: $500 per run on api.stripe.com\n  \
         run spend cap: $1000 across every host of the run\n  \
         rate: 60/min (every call to api.stripe.com)\n  \
         loop breaker: the same call 20 times within 1m is refused, until `enforcer reset` or 1m without it\n  \
         secret STRIPE_SECRET_KEY: header Authorization: Bearer {} (the agent holds a placeholder; the value is read from env:STRIPE_SECRET_KEY)"
    );
    assert_eq!(e.action, Action::Ask);
    assert_eq!(e.host, Some(0));
    let e = p
        .explain("DELETE", "https://api.stripe.com/v1/customers/cus_1")
        .unwrap();
    assert_eq!(
        e.to_string(),
        "DELETE https://api.stripe.com/v1/customers/cus_1 -> DENY (no rule matches; default deny)"
    );
    let e = p.explain("GET", "https://evil.com/").unwrap();
    assert_eq!(
        e.to_string(),
        "GET https://evil.com/ -> DENY (host evil.com is not in the policy)"
    );
    let e = p
        .explain("GET", "https://files.pypi.org/simple/x?y=1")
        .unwrap();
    assert_eq!(
        e.to_string(),
        "GET https://files.pypi.org/simple/x?y=1 -> ALLOW (whole host, passed through without interception: *.pypi.org, policy.toml:36)"
    );
    let e = p
        .explain("GET", "http://api.stripe.com/v1/customers/x")
        .unwrap();
    assert!(e.to_string().contains("port 80 is not allowed"), "{e}");
    let e = p
        .explain("GET", "https://api.stripe.com:8443/v1/customers/x")
        .unwrap();
    assert_eq!(e.port, 8443);
    assert_eq!(e.action, Action::Deny);
    let e = p
        .explain("get", "https://api.stripe.com/v1/customers/x")
        .unwrap();
    assert_eq!(e.action, Action::Deny);
    assert!(
        e.to_string().contains("note: methods are case-sensitive"),
        "{e}"
    );
    assert!(p.explain("GET", "not a url").is_err());
    assert!(p.explain("GET", "ftp://api.stripe.com/").is_err());
    assert!(p.explain("G T", "https://api.stripe.com/").is_err());
}

#[test]
fn explain_shows_what_applies_to_a_request_that_goes_out() {
    let p = parse(
        r#"
[run]
name = "agent"
spend_cap_usd = 100
loop_breaker = { calls = 5, window = "1h30m" }

[[secret]]
name = "KEY"
from = "file:/etc/enforcer/key"
hosts = ["api.example.com"]
header = "X-Api-Key"

[[secret]]
name = "PLAIN"
from = "env:PLAIN"
hosts = ["plain.example.com"]
query = "token"

[[host]]
name = "api.example.com"
daily_cap_usd = 20
max_calls = 1000
  [[host.rule]]
  method = "POST"
  path = "/v1/charges"
  action = "allow"
  rate = "5/30s"
  max_calls = 10
  cost = { json_pointer = "/amount", divide_by = 100, currency = "eur", rates = { eur = 1.1 } }
  [[host.rule]]
  method = "GET"
  path = "/**"
  action = "allow"

[[host]]
name = "plain.example.com"
ports = [80, 443]
action = "allow"
"#,
    );
    let e = p
        .explain("POST", "https://api.example.com/v1/charges")
        .unwrap();
    assert_eq!(e.action, Action::Allow);
    assert_eq!(
        e.applies,
        [
            "cost: JSON body /amount / 100 eur, rates eur=1.1",
            "daily cap: $20 per UTC day on api.example.com, across every run of policy agent",
            "run spend cap: $100 across every host of the run",
            "rate: 5/30s (calls matching rule 1)",
            "max calls: 1000 per run (every call to api.example.com)",
            "max calls: 10 per run (calls matching rule 1)",
            "loop breaker: the same call 5 times within 90m is refused, until `enforcer reset` or 90m without it",
            "secret KEY: header X-Api-Key: {} (the agent holds a placeholder; the value is read from file:/etc/enforcer/key)",
        ]
    );
    // Reads are never counted by the loop breaker.
    let e = p.explain("GET", "https://api.example.com/v1/x").unwrap();
    assert!(
        !e.applies.iter().any(|l| l.starts_with("loop breaker")),
        "{e}"
    );
    assert!(e.applies.iter().any(|l| l.starts_with("cost: none")), "{e}");
    // Nothing applies to what does not go out.
    let e = p.explain("DELETE", "https://api.example.com/v1/x").unwrap();
    assert_eq!(e.action, Action::Deny);
    assert!(e.applies.is_empty(), "{e}");
    // Secrets cross the network over TLS only.
    let e = p.explain("GET", "https://plain.example.com/").unwrap();
    assert_eq!(
        e.applies,
        [
            "cost: none (no cost rule: the call counts $0 against the caps)",
            "run spend cap: $100 across every host of the run",
            "secret PLAIN: query parameter token (the agent holds a placeholder; the value is read from env:PLAIN)"
        ]
    );
    let e = p.explain("GET", "http://plain.example.com/").unwrap();
    assert_eq!(e.action, Action::Allow);
    assert!(
        e.applies[2].starts_with("secret PLAIN: not injected over plain HTTP"),
        "{e}"
    );
}

#[test]
fn explain_shows_the_url_as_given_and_decides_its_raw_path() {
    let p = parse(BILLING);
    let e = p
        .explain("GET", "https://api.stripe.com/v1/customers/../refunds")
        .unwrap();
    assert_eq!(e.action, Action::Deny);
    assert!(
        e.to_string()
            .starts_with("GET https://api.stripe.com/v1/customers/../refunds -> DENY (ambiguous"),
        "{e}"
    );
}

#[test]
fn summary_is_stable_and_complete() {
    let p = parse(BILLING);
    let expected = "\
policy billing-agent (policy.toml)
run:
  ttl: 3h
  spend cap: $1000
  loop breaker: 20 identical calls in 1m
local:
  loopback ports: none
  unix sockets: none
  user namespaces: not allowed
tcp:
  none
hosts:
  api.stripe.com (ports 443): intercept; spend cap $500; rate 60/min; secrets STRIPE_SECRET_KEY
    1. GET /v1/customers/* -> allow
    2. POST /v1/payment_intents -> allow; cost form field amount / 100, currency from form field currency, rates eur=1.08
    3. POST /v1/refunds -> ask
    otherwise: deny
  *.pypi.org (ports 443, 80): pass-through (whole host allowed, not intercepted)
  pypi.org (ports 443, 80): pass-through (whole host allowed, not intercepted)
  upload.pypi.org (ports 443, 80): deny
secrets:
  STRIPE_SECRET_KEY: from env:STRIPE_SECRET_KEY, sent to api.stripe.com as header Authorization: Bearer {}
anything not listed above is denied
";
    assert_eq!(p.summary(), expected);
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Policy::load(Path::new("/nonexistent/dir/p.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/dir/p.toml: error: cannot read policy file:"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics(text in "\\PC{0,200}") {
        let _ = Policy::parse(&text, Path::new("p.toml"));
    }

    #[test]
    fn parse_never_panics_on_policy_like_text(
        lines in proptest::collection::vec(prop_oneof![
            Just("[[host]]".to_string()),
            Just("[[host.rule]]".to_string()),
            Just("[run]".to_string()),
            Just("[[secret]]".to_string()),
            "name = \"[a-z*.]{0,12}\"",
            "method = \"[A-Za-z*]{0,5}\"",
            "path = \"[/a-z*.%]{0,12}\"",
            "action = \"(allow|deny|ask|x)\"",
            "ports = \\[[0-9]{1,6}\\]",
            "rate = \"[0-9]{1,3}/(s|min|x)\"",
            "ttl = \"[0-9]{0,3}[smhdx]?\"",
            "hosts = \\[\"[a-z.*]{0,10}\"\\]",
        ], 0..16)
    ) {
        let text = lines.join("\n");
        if let Ok(p) = Policy::parse(&text, Path::new("p.toml")) {
            let _ = p.summary();
            for h in &p.hosts {
                let _ = h.decide("GET", "/a/b");
            }
            let _ = p.explain("GET", "https://a.example.com/x");
        }
    }

    #[test]
    fn decide_never_panics(method in "\\PC{0,10}", path in "\\PC{0,40}") {
        let p = parse(BILLING);
        for h in &p.hosts {
            let _ = h.decide(&method, &path);
        }
        let _ = p.connection(&path, 443);
        let _ = p.explain(&method, &path);
    }
}

#[test]
fn secrets_for_a_host_name() {
    let p = parse(
        r#"
[[secret]]
name = "A"
from = "env:A"
hosts = ["a.svc.example.com"]
header = "X-A"

[[secret]]
name = "ALL"
from = "env:ALL"
hosts = ["*.svc.example.com"]
header = "X-All"

[[host]]
name = "*.svc.example.com"
action = "allow"

[[host]]
name = "off.svc.example.com"
action = "deny"
"#,
    );
    let names = |host: &str| {
        p.secrets_for(host)
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("a.svc.example.com"), vec!["A", "ALL"]);
    assert_eq!(names("A.SVC.example.com."), vec!["A", "ALL"]);
    assert_eq!(names("b.svc.example.com"), vec!["ALL"]);
    assert!(names("off.svc.example.com").is_empty());
    assert!(names("svc.example.com").is_empty());
    assert!(names("evil.com").is_empty());
    assert_eq!(p.hosts[0].secrets, vec!["A", "ALL"]);
    assert!(p.hosts[1].secrets.is_empty());
}

#[test]
fn hostile_inputs_are_errors_not_crashes() {
    let deep = format!("a = {}", "[".repeat(100_000));
    assert!(Policy::parse(&deep, Path::new("p.toml")).is_err());
    let deep_tables = format!("a = {}", "{ b = ".repeat(10_000));
    assert!(Policy::parse(&deep_tables, Path::new("p.toml")).is_err());
    let long_glob = format!(
        "[[host]]\nname = \"a.com\"\n[[host.rule]]\nmethod = \"GET\"\npath = \"/{}\"\naction = \"allow\"\n",
        "**/a/".repeat(400)
    );
    assert!(Policy::parse(&long_glob, Path::new("p.toml")).is_err());
    let escape = "[run]\nname = \"a\\u001b[31mb\"\n";
    let err = Policy::parse(escape, Path::new("p.toml")).unwrap_err();
    assert!(err.to_string().contains("run name"), "{err}");
    assert!(!err.to_string().contains('\u{1b}'), "{err}");
    assert!(!err.problems[0].message.contains('\u{1b}'));
}

#[test]
fn duplicates_are_reported_even_when_the_first_entry_has_problems() {
    let out = errors(
        "[[host]]\nname = \"a.com\"\nrate = \"0/s\"\naction = \"allow\"\n\n[[host]]\nname = \"A.com\"\naction = \"allow\"\n",
    );
    assert!(out.contains("rate `0/s` allows no calls"), "{out}");
    assert!(
        out.contains("policy.toml:7:8: error: duplicate host `a.com`: already defined at line 1 (`A.com` is the same host as `a.com`)"),
        "{out}"
    );
}

#[test]
fn daily_caps_and_the_loop_breaker_parse_and_validate() {
    let p = parse(
        r#"
[run]
loop_breaker = { calls = 5, window = "10s" }

[[host]]
name = "api.example.com"
daily_cap_usd = 100
action = "allow"
"#,
    );
    assert_eq!(
        p.run.loop_breaker,
        Some(LoopBreakerSettings {
            calls: 5,
            window: Duration::from_secs(10)
        })
    );
    assert_eq!(p.hosts[0].daily_cap_usd, Some(100.0));
    assert_eq!(
        p.hosts[0].mode(),
        HostMode::Intercept,
        "a daily cap needs interception"
    );
    let off = parse("[run]\nloop_breaker = false\n");
    assert_eq!(off.run.loop_breaker, None);
    let default = parse("[run]\nname = \"x\"\n");
    assert_eq!(
        default.run.loop_breaker,
        Some(LoopBreakerSettings::default())
    );
    for (text, expect) in [
        (
            "[run]\nloop_breaker = { calls = 1 }\n",
            "between 2 and 10000",
        ),
        (
            "[run]\nloop_breaker = { window = \"soon\" }\n",
            "loop_breaker.window",
        ),
        (
            "[[host]]\nname = \"a.example.com\"\naction = \"deny\"\ndaily_cap_usd = 5\n",
            "no effect",
        ),
        (
            "[[host]]\nname = \"a.example.com\"\naction = \"allow\"\ndaily_cap_usd = -5\n",
            "daily_cap_usd",
        ),
    ] {
        let e = errors(text);
        assert!(e.contains(expect), "{text}: {e}");
    }
}

#[test]
fn amount_thresholds_and_requirements_are_validated() {
    let e = errors(
        r#"
[[host]]
name = "api.stripe.com"
  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "allow"
  max_usd_per_call = 200
  [[host.rule]]
  method = "POST"
  path = "/v1/charges"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100 }
  ask_above_usd = 500
  deny_above_usd = 100
  [[host.rule]]
  method = "POST"
  path = "/v1/payouts"
  action = "ask"
  cost = { form_field = "amount", divide_by = 100 }
  ask_above_usd = 5
  max_usd_per_call = 10
  deny_above_usd = 20
  [[host.rule]]
  method = "POST"
  path = "/v1/transfers"
  action = "allow"
  require = { header."Stripe_Account" = "acct_1", header.Host = "x", form."a[b]" = "1", json.x = "1", form.c = [] }
  unmet = "allow"
  [[host.rule]]
  method = "DELETE"
  path = "/v1/**"
  action = "deny"
  require = { header."Stripe-Account" = "acct_1" }
  [[host.rule]]
  method = "GET"
  path = "/v1/**"
  action = "allow"
  unmet = "ask"
"#,
    );
    for expected in [
        "`max_usd_per_call` needs the amount of the call: add a `cost`",
        "ask_above_usd ($500) must be below deny_above_usd ($100)",
        "`ask_above_usd` has no effect on an `ask` rule",
        "`max_usd_per_call` and `deny_above_usd` mean the same ceiling; keep one",
        "write header names with `-`, not `_`",
        "header `Host` cannot be required",
        "`a[b]` is not a plain field name",
        "`x` is not a JSON pointer",
        "no accepted value",
        "`unmet` is \"deny\" (the default) or \"ask\"",
        "`require` has no effect on a rule that denies",
        "the rule has no `require`",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn thresholds_and_requirements_show_in_check_and_explain() {
    let p = parse(
        r#"
[[host]]
name = "api.stripe.com"
  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100, currency_field = "currency", rates = { eur = 1.08 } }
  max_usd_per_call = 1000
  ask_above_usd = 50
  require = { header."Stripe-Account" = ["acct_1", "acct_2"], form.customer = "cus_*" }
  unmet = "ask"
"#,
    );
    let summary = p.summary();
    assert!(
        summary.contains(
            "1. POST /v1/payment_intents -> allow; cost form field amount / 100, currency from form field currency, rates eur=1.08; ask above $50, at most $1000 per call; requires header Stripe-Account in [acct_1, acct_2] and form field customer = cus_*, otherwise ask"
        ),
        "{summary}"
    );
    let e = p
        .explain("POST", "https://api.stripe.com/v1/payment_intents")
        .unwrap()
        .to_string();
    assert!(
        e.contains("amount: ask above $50, at most $1000 per call"),
        "{e}"
    );
    assert!(
        e.contains("requires: header Stripe-Account in [acct_1, acct_2] (present once, in one spelling; otherwise asked)"),
        "{e}"
    );
}

#[test]
fn a_vendor_file_of_ones_own_is_loaded_next_to_the_policy_and_checked() {
    let dir = std::env::temp_dir().join(format!("enforcer-profile-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    std::fs::write(
        dir.join("profiles/acme.toml"),
        r#"
[vendor]
name = "acme"
hosts = ["api.acme.test"]
[refusal]
body = { fault = { reason = "{message}", status = "{status}" } }
[[endpoint]]
name = "orders.create"
method = "POST"
path = "/orders"
cost = { json_pointer = "/total", currency = "usd", response_id_pointer = "/order_id" }
"#,
    )
    .unwrap();
    let policy = dir.join("p.toml");
    std::fs::write(
        &policy,
        r#"
[[host]]
vendor_file = "profiles/acme.toml"
  [[host.rule]]
  endpoint = "orders.create"
  action = "allow"
  max_usd_per_call = 20
"#,
    )
    .unwrap();
    let p = Policy::load(&policy).unwrap();
    let h = &p.hosts[0];
    assert_eq!(h.name, "api.acme.test");
    let rule = &h.rules[0];
    assert_eq!(rule.endpoint.as_deref(), Some("orders.create"));
    assert_eq!(
        rule.cost
            .as_ref()
            .and_then(|c| c.response_id_pointer.as_deref()),
        Some("/order_id")
    );
    let body = h
        .profile
        .as_ref()
        .and_then(|p| p.refusal.as_ref())
        .unwrap()
        .render(403, "deny-rule", "no");
    assert_eq!(
        body,
        serde_json::json!({"fault": {"reason": "no", "status": 403}})
    );

    // A broken profile is reported with its own file and line.
    std::fs::write(
        dir.join("profiles/acme.toml"),
        "[vendor]\nname = \"acme\"\nhosts = [\"api.acme.test\"]\n[[endpoint]]\nname = \"orders.create\"\nmethod = \"POST\"\npath = \"orders\"\n",
    )
    .unwrap();
    let e = Policy::load(&policy).unwrap_err().to_string();
    assert!(e.contains("p.toml:3:15"), "{e}");
    assert!(e.contains("profiles/acme.toml:7:8"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
