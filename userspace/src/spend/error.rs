//! [`SpendError`]: why a call's cost cannot be determined (the proxy refuses
//! the request with the message), why a daily cap refuses it, or why the
//! daily-cap store failed (the proxy fails closed).

use std::path::PathBuf;

use thiserror::Error;

use super::ledger::OverCap;
use super::money::AmountError;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpendError {
    /// The field the cost rule reads is not in the request.
    #[error("{what} is missing from the request; it is needed to check the spend cap")]
    MissingField { what: String },

    /// The field appears more than once (or in both the query string and
    /// the body): vendors disagree on which one counts, so the enforcer
    /// does not guess.
    #[error("{what} appears {count} times in the request; refusing an ambiguous amount")]
    Ambiguous { what: String, count: usize },

    /// The body is not of the kind the cost rule reads.
    #[error("{what} is read from a {expected} body, but the request's Content-Type is {got}")]
    WrongContentType {
        what: String,
        expected: &'static str,
        got: String,
    },

    /// A rule reads the query string and the request has a body of no one
    /// declared kind: Rack reads such a body as a form and merges it over
    /// the query, so the field could be in it.
    #[error(
        "{what} is read from the query string, and the request has a body whose Content-Type is {got}; \
         some frameworks read such a body as a form: send one Content-Type naming the body's media type"
    )]
    UntypedBody { what: String, got: String },

    /// The body claims to be JSON but is not.
    #[error("{what} cannot be read: the request body is not valid JSON ({detail})")]
    InvalidBody { what: String, detail: String },

    /// The field is there but is not an acceptable amount.
    #[error("{what} = {text:?} is not an acceptable amount: {why}")]
    InvalidAmount {
        what: String,
        text: String,
        why: AmountError,
    },

    /// A required JSON field is there but is not text or a number.
    #[error("{what} is {kind}, not a string or a number")]
    NotText { what: String, kind: &'static str },

    /// The currency field is there but is not a currency code.
    #[error("{what} = {text:?} is not a currency code (three letters, e.g. usd)")]
    InvalidCurrency { what: String, text: String },

    /// The request is in a currency the policy has no rate for. Refused
    /// rather than asked: converting currencies is not a human's call to
    /// make at a prompt, and refusing is deterministic.
    #[error(
        "the request is in `{currency}` ({what}) and the cost rule has no rate for it; \
         add `rates = {{ {currency} = <USD per {currency}> }}` to the rule's cost"
    )]
    NoRate { what: String, currency: String },

    /// A policy value the spend module cannot use (validated at load time,
    /// so this only happens with hand-built policies).
    #[error("invalid spend setting: {0}")]
    InvalidRule(String),

    /// A spend cap refuses the call.
    #[error("{0}")]
    OverCap(OverCap),

    /// The daily-cap store failed; the call must be refused (fail closed).
    #[error("spend database {}: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },
}

impl From<OverCap> for SpendError {
    fn from(o: OverCap) -> Self {
        Self::OverCap(o)
    }
}
