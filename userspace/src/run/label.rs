//! A run's label: the orchestrator's name for it (`--label`, or a systemd
//! unit's invocation id), recorded as the audit log's `agent_run_id`.
//! Unlike run ids, labels may hold `/` and need not be unique.

use std::{fmt, str::FromStr};

/// The longest label kept, in bytes.
pub const MAX_LABEL: usize = 200;

/// A checked label: 1 to [`MAX_LABEL`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("a label cannot be empty")]
    Empty,
    #[error("a label is at most {MAX_LABEL} bytes (this one is {0})")]
    TooLong(usize),
    #[error("a label cannot contain control characters (newline, tab, NUL...)")]
    ControlCharacter,
}

impl FromStr for Label {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, LabelError> {
        if s.is_empty() {
            return Err(LabelError::Empty);
        }
        if s.len() > MAX_LABEL {
            return Err(LabelError::TooLong(s.len()));
        }
        if s.chars().any(char::is_control) {
            return Err(LabelError::ControlCharacter);
        }
        Ok(Self(s.to_string()))
    }
}

impl Label {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orchestrator_ids_pass_and_what_would_break_a_log_line_does_not() {
        assert_eq!(
            "billing/run_abc123".parse::<Label>().unwrap().as_str(),
            "billing/run_abc123"
        );
        assert_eq!("".parse::<Label>(), Err(LabelError::Empty));
        assert_eq!("a\nb".parse::<Label>(), Err(LabelError::ControlCharacter));
        assert_eq!(
            "x".repeat(MAX_LABEL + 1).parse::<Label>(),
            Err(LabelError::TooLong(MAX_LABEL + 1))
        );
    }
}
