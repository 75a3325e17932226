//! Golden tests for policy error messages (every `tests/policy_golden/*.toml`
//! must fail to load with exactly the text in the matching `*.expected`),
//! and a check that every example policy in `policies/` loads.
//!
//! `BLESS=1 cargo test -p enforcer --test policy_golden` rewrites the
//! `*.expected` files from the current output.

use std::fs;
use std::path::{Path, PathBuf};

use enforcer::policy::{ConnectionVerdict, Policy};

const GOLDEN_DIR: &str = "tests/policy_golden";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `*.toml` files in `dir` (absolute), sorted by name.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// A line-by-line comparison that is easy to read in test output.
fn diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..exp.len().max(act.len()) {
        match (exp.get(i), act.get(i)) {
            (Some(e), Some(a)) if e == a => out.push_str(&format!("  {e}\n")),
            (e, a) => {
                if let Some(e) = e {
                    out.push_str(&format!("- {e}\n"));
                }
                if let Some(a) = a {
                    out.push_str(&format!("+ {a}\n"));
                }
            }
        }
    }
    out
}

#[test]
fn bad_policies_render_the_expected_errors() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let dir = crate_dir().join(GOLDEN_DIR);
    let cases = toml_files(&dir);
    assert!(
        cases.len() >= 12,
        "expected at least 12 golden cases in {GOLDEN_DIR}, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let file_name = case.file_name().unwrap().to_string_lossy().into_owned();
        // Relative to the crate, so messages do not depend on the checkout.
        let rel = Path::new(GOLDEN_DIR).join(&file_name);
        let text = fs::read_to_string(case).unwrap();
        let actual = match Policy::parse(&text, &rel) {
            Ok(_) => {
                failures.push(format!(
                    "{}: loaded, but it should be rejected",
                    rel.display()
                ));
                continue;
            }
            Err(e) => format!("{e}\n"),
        };
        let expected_path = case.with_extension("expected");
        if bless {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: output differs from {} (- expected, + actual):\n{}",
                rel.display(),
                expected_path.file_name().unwrap().to_string_lossy(),
                diff(&expected, &actual)
            )),
            Err(_) => failures.push(format!(
                "{}: no {} (run with BLESS=1 to create it); output was:\n{actual}",
                rel.display(),
                expected_path.file_name().unwrap().to_string_lossy()
            )),
        }
    }
    // Every .expected belongs to a case.
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expected")
            && !path.with_extension("toml").exists()
        {
            failures.push(format!("{}: no matching .toml", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es) (BLESS=1 rewrites the expected files):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_example_policy_loads() {
    let dir = crate_dir().join("../policies");
    let files = toml_files(&dir);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "demo.toml",
        "billing.toml",
        "ci-readonly.toml",
        "deny-all.toml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "policies/{required} is missing"
        );
    }
    for file in &files {
        let policy =
            Policy::load(file).unwrap_or_else(|e| panic!("{} does not load:\n{e}", file.display()));
        assert!(!policy.summary().is_empty());
        // Nothing outside the policy is reachable.
        assert!(matches!(
            policy.connection("not-in-any-policy.invalid", 443),
            ConnectionVerdict::Refuse { .. }
        ));
    }
}

#[test]
fn deny_all_allows_nothing() {
    let policy = Policy::load(&crate_dir().join("../policies/deny-all.toml")).unwrap();
    assert!(policy.hosts.is_empty());
    assert!(policy.tcp.is_empty());
    assert!(policy.names().is_empty());
    assert!(policy.local.loopback_ports.is_empty());
    assert!(policy.local.unix_sockets.is_empty());
}

#[test]
fn unreadable_policy_names_the_path() {
    let err = Policy::load(Path::new("tests/policy_golden/does-not-exist.toml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "tests/policy_golden/does-not-exist.toml: error: cannot read policy file:"
        ),
        "{text}"
    );
}

/// The `policy check` and `policy explain` examples in docs/policy.md are
/// the real output for policies/billing.toml.
#[test]
fn docs_examples_match_real_output() {
    let docs = fs::read_to_string(crate_dir().join("../docs/policy.md")).unwrap();
    let text = fs::read_to_string(crate_dir().join("../policies/billing.toml")).unwrap();
    let policy = Policy::parse(&text, Path::new("policies/billing.toml")).unwrap();
    let summary = policy.summary();
    assert!(
        docs.contains(&summary),
        "docs/policy.md should contain the summary of policies/billing.toml:\n{summary}"
    );
    for (method, url) in [
        ("POST", "https://api.stripe.com/v1/payment_intents"),
        ("POST", "https://api.stripe.com/v1/refunds"),
        ("DELETE", "https://api.stripe.com/v1/customers/cus_1"),
        ("GET", "https://files.pypi.org/packages/x.whl"),
        ("GET", "https://evil.com/"),
        ("GET", "http://api.stripe.com/v1/customers/cus_1"),
    ] {
        let line = policy.explain(method, url).unwrap().to_string();
        assert!(
            docs.contains(&format!("\n{line}\n")),
            "docs/policy.md should contain the explain line:\n{line}"
        );
    }
}
