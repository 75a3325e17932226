//! The policy file as TOML, before validation: serde structs that keep the
//! span of every value (for error messages) and refuse unknown keys.
//!
//! Field order matters: serde lists expected keys in this order when it
//! meets an unknown one.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub run: Option<Spanned<RawRun>>,
    pub local: Option<Spanned<RawLocal>>,
    #[serde(default)]
    pub tcp: Vec<Spanned<RawTcp>>,
    #[serde(default)]
    pub secret: Vec<Spanned<RawSecret>>,
    #[serde(default)]
    pub host: Vec<Spanned<RawHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRun {
    pub name: Option<Spanned<String>>,
    pub ttl: Option<Spanned<DurationText>>,
    pub spend_cap_usd: Option<Spanned<Usd>>,
    pub loop_breaker: Option<Spanned<RawBreaker>>,
}

/// `loop_breaker = false`, `true`, or `{ calls = 20, window = "60s" }`.
/// (No spans inside: serde's untagged enums cannot carry them.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawBreaker {
    Switch(bool),
    Table(RawBreakerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreakerTable {
    pub calls: Option<i64>,
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocal {
    #[serde(default)]
    pub loopback_ports: Vec<Spanned<Port>>,
    #[serde(default)]
    pub unix_sockets: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_user_namespaces: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcp {
    pub host: Spanned<String>,
    pub port: Spanned<Port>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub name: Spanned<String>,
    pub from: Spanned<String>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub header: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub basic: Option<Spanned<RawBasicPart>>,
    pub query: Option<Spanned<String>>,
    pub placeholder_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawBasicPart {
    User,
    Password,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub name: Option<Spanned<String>>,
    pub vendor: Option<Spanned<String>>,
    pub vendor_file: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<Port>>>>,
    pub action: Option<Spanned<RawAction>>,
    pub spend_cap_usd: Option<Spanned<Usd>>,
    pub daily_cap_usd: Option<Spanned<Usd>>,
    pub rate: Option<Spanned<RateText>>,
    pub max_calls: Option<Spanned<Count>>,
    pub intercept: Option<Spanned<bool>>,
    pub allow_plaintext_secrets: Option<Spanned<bool>>,
    pub allow_ambiguous: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub method: Option<Spanned<MethodSpec>>,
    pub path: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<RawValues>>,
    pub action: Spanned<RawAction>,
    pub cost: Option<Spanned<RawCost>>,
    pub rate: Option<Spanned<RateText>>,
    pub max_calls: Option<Spanned<Count>>,
    pub max_usd_per_call: Option<Spanned<Usd>>,
    pub ask_above_usd: Option<Spanned<Usd>>,
    pub deny_above_usd: Option<Spanned<Usd>>,
    pub require: Option<Spanned<RawRequire>>,
    pub unmet: Option<Spanned<RawAction>>,
}

/// `require = { header."Stripe-Account" = ["acct_1"], form.customer = "cus_*" }`:
/// per place, field name -> accepted value(s).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequire {
    pub header: Option<BTreeMap<Spanned<String>, Spanned<RawValues>>>,
    pub form: Option<BTreeMap<Spanned<String>, Spanned<RawValues>>>,
    pub json: Option<BTreeMap<Spanned<String>, Spanned<RawValues>>>,
    pub query: Option<BTreeMap<Spanned<String>, Spanned<RawValues>>>,
}

/// `"acct_1"` or `["acct_1", "acct_2"]`.
#[derive(Debug)]
pub(crate) struct RawValues(pub Vec<String>);

impl<'de> Deserialize<'de> for RawValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value such as \"acct_1\" or a list such as [\"acct_1\", \"acct_2\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValues, E> {
                Ok(RawValues(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValues, A::Error> {
                let mut out = Vec::new();
                while let Some(m) = seq.next_element::<String>()? {
                    out.push(m);
                }
                Ok(RawValues(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAction {
    Allow,
    Deny,
    Ask,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCost {
    pub form_field: Option<Spanned<String>>,
    pub json_pointer: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub fixed_usd: Option<Spanned<Usd>>,
    pub divide_by: Option<Spanned<Positive>>,
    pub currency_field: Option<Spanned<String>>,
    pub currency: Option<Spanned<String>>,
    pub rates: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Positive>>>>,
    pub response_cost_pointer: Option<Spanned<String>>,
    pub response_id_pointer: Option<Spanned<String>>,
}

/// `method = "GET"`, `method = ["GET", "HEAD"]` or `method = "*"`.
#[derive(Debug)]
pub(crate) enum MethodSpec {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MethodSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a method such as \"GET\", a list such as [\"GET\", \"HEAD\"], or \"*\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MethodSpec, E> {
                Ok(MethodSpec::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MethodSpec, A::Error> {
                let mut out = Vec::new();
                while let Some(m) = seq.next_element::<Spanned<String>>()? {
                    out.push(m);
                }
                Ok(MethodSpec::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string-only value with a precise "expected ..." in type errors.
macro_rules! text_value {
    ($name:ident, $expecting:literal) => {
        #[derive(Debug, Clone)]
        pub(crate) struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name(v.to_string()))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

text_value!(
    DurationText,
    "a duration string such as \"90s\", \"15m\", \"3h\" or \"1d\""
);
text_value!(RateText, "a rate string such as \"60/min\"");

/// An integer-only value (any size; range checked during validation).
macro_rules! integer_value {
    ($name:ident, $expecting:literal) => {
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name(pub i128);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        Ok($name(i128::from(v)))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name(i128::from(v)))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

integer_value!(Port, "a port number (1-65535)");
integer_value!(Count, "a whole number (at least 1)");

/// A number (integer or float; range checked during validation).
macro_rules! number_value {
    ($name:ident, $expecting:literal) => {
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name(pub f64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        Ok($name(v))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        Ok($name(v as f64))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name(v as f64))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

number_value!(Usd, "an amount in US dollars, such as 500 or 12.50");
number_value!(Positive, "a number greater than 0");
