//! The policy file's JSON Schema (for editors: `enforcer policy schema`,
//! installed by the package). It is written to follow the parser's raw
//! types in `schema.rs`, and the tests hold it to them: every section's
//! keys are the keys the parser accepts (read from the parser's own
//! "expected one of" error), and every example policy validates.

/// The schema (draft 2020-12).
pub const POLICY_SCHEMA: &str = include_str!("../../schemas/policy.schema.json");

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use super::*;
    use crate::policy::Policy;

    fn schema() -> serde_json::Value {
        serde_json::from_str(POLICY_SCHEMA).expect("the schema is JSON")
    }

    /// The keys the parser accepts where `toml` puts `zz_unknown`.
    fn parser_keys(toml: &str) -> BTreeSet<String> {
        let err = Policy::parse(toml, Path::new("probe.toml")).expect_err("unknown key refused");
        let msg = &err.problems[0].message;
        let expected = msg
            .split_once("expected")
            .unwrap_or_else(|| panic!("no expected keys in: {msg}"))
            .1;
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn schema_keys(v: &serde_json::Value) -> BTreeSet<String> {
        v["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_section_has_exactly_the_keys_the_parser_accepts() {
        let s = schema();
        let host = "[[host]]\nname = \"a.test\"\n";
        let rule = "  [[host.rule]]\n  method = \"GET\"\n  path = \"/\"\n  action = \"allow\"\n";
        let cases = [
            ("zz_unknown = 1\n".to_string(), &s),
            ("[run]\nzz_unknown = 1\n".to_string(), &s["properties"]["run"]),
            ("[local]\nzz_unknown = 1\n".to_string(), &s["properties"]["local"]),
            (
                "[[tcp]]\nhost = \"a.test\"\nport = 1\nzz_unknown = 1\n".to_string(),
                &s["properties"]["tcp"]["items"],
            ),
            (
                "[[secret]]\nname = \"A\"\nfrom = \"env:A\"\nhosts = [\"a.test\"]\nzz_unknown = 1\n"
                    .to_string(),
                &s["properties"]["secret"]["items"],
            ),
            (format!("{host}zz_unknown = 1\n"), &s["$defs"]["host"]),
            (format!("{host}{rule}  zz_unknown = 1\n"), &s["$defs"]["rule"]),
            (
                format!("{host}{rule}  cost = {{ zz_unknown = 1 }}\n"),
                &s["$defs"]["cost"],
            ),
            (
                format!("{host}{rule}  require = {{ zz_unknown = 1 }}\n"),
                &s["$defs"]["rule"]["properties"]["require"],
            ),
        ];
        for (toml, section) in cases {
            assert_eq!(
                schema_keys(section),
                parser_keys(&toml),
                "the schema and the parser disagree about:\n{toml}"
            );
        }
    }

    #[test]
    fn every_example_policy_validates_and_a_wrong_one_does_not() {
        let validator = jsonschema::validator_for(&schema()).expect("the schema compiles");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("policies/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let value: toml::Value = toml::from_str(&text).expect("TOML");
            let json = serde_json::to_value(value).expect("JSON");
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            n += 1;
        }
        assert!(n > 0, "no example policies found in {}", dir.display());
        let wrong: toml::Value =
            toml::from_str("[[host]]\nname = \"a.test\"\nports = [70000]\n").expect("TOML");
        assert!(!validator.is_valid(&serde_json::to_value(wrong).expect("JSON")));
    }
}
