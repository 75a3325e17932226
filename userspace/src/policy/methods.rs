//! HTTP method sets of `[[host.rule]]`: `"*"`, one method, or a list.
//! Methods are case-sensitive uppercase tokens.

use std::fmt;

/// Which methods a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodSet {
    /// `"*"`: every method.
    Any,
    /// These methods exactly (case-sensitive), in the order written.
    Only(Vec<String>),
}

impl MethodSet {
    /// Builds a set from the methods as written (`["*"]` alone means any).
    /// Every problem is returned with the index of the offending entry.
    pub fn parse<S: AsRef<str>>(methods: &[S]) -> Result<Self, Vec<(usize, String)>> {
        if methods.is_empty() {
            return Err(vec![(
                0,
                "the method list is empty; write \"*\" for every method, or list them (e.g. [\"GET\", \"HEAD\"])"
                    .into(),
            )]);
        }
        if methods.len() == 1 && methods[0].as_ref() == "*" {
            return Ok(Self::Any);
        }
        let mut errors = Vec::new();
        let mut out: Vec<String> = Vec::with_capacity(methods.len());
        for (i, m) in methods.iter().enumerate() {
            let m = m.as_ref();
            if m == "*" {
                errors.push((
                    i,
                    "`*` already means every method; write it alone (method = \"*\")".into(),
                ));
                continue;
            }
            match check_method(m) {
                Err(e) => errors.push((i, e)),
                Ok(()) if out.iter().any(|o| o == m) => {
                    errors.push((i, format!("method `{m}` is listed twice")));
                }
                Ok(()) => out.push(m.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(Self::Only(out))
        } else {
            Err(errors)
        }
    }

    /// Whether `method` (case-sensitive) is in the set.
    pub fn matches(&self, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => list.iter().any(|m| m == method),
        }
    }

    /// Whether every method in `other` is also in `self`.
    pub fn covers(&self, other: &MethodSet) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Only(_), Self::Any) => false,
            (Self::Only(mine), Self::Only(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        }
    }
}

impl fmt::Display for MethodSet {
    /// `*`, `GET`, or `GET,HEAD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Only(list) => f.write_str(&list.join(",")),
        }
    }
}

/// An RFC 9110 token in uppercase.
fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("method is empty".into());
    }
    if m.len() > 32 {
        return Err(format!("method `{m}` is longer than 32 characters"));
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) && is_token(&m.to_ascii_uppercase()) {
        return Err(format!(
            "method `{m}` must be uppercase (methods are case-sensitive): write `{}`",
            m.to_ascii_uppercase()
        ));
    }
    if m.contains('*') {
        return Err(format!(
            "method `{m}`: `*` must stand alone (method = \"*\" matches every method)"
        ));
    }
    if !is_token(m) {
        return Err(format!(
            "`{m}` is not an HTTP method (expected a token such as `GET`, `POST` or `DELETE`)"
        ));
    }
    Ok(())
}

/// An RFC 9110 token (method names, header names).
pub(crate) fn is_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn any_and_lists() {
        let any = MethodSet::parse(&["*"]).unwrap();
        assert_eq!(any, MethodSet::Any);
        assert!(any.matches("GET"));
        assert!(any.matches("PROPFIND"));
        let set = MethodSet::parse(&["GET", "HEAD"]).unwrap();
        assert!(set.matches("GET"));
        assert!(set.matches("HEAD"));
        assert!(!set.matches("get"));
        assert!(!set.matches("POST"));
        assert_eq!(set.to_string(), "GET,HEAD");
        assert_eq!(any.to_string(), "*");
    }

    #[test]
    fn bad_methods() {
        let err = MethodSet::parse(&["get"]).unwrap_err();
        assert!(err[0].1.contains("write `GET`"), "{err:?}");
        let err = MethodSet::parse(&["GET", "GET"]).unwrap_err();
        assert_eq!(err[0].0, 1);
        assert!(err[0].1.contains("twice"));
        let err = MethodSet::parse(&["GET", "*"]).unwrap_err();
        assert!(err[0].1.contains("alone"));
        assert!(
            MethodSet::parse::<&str>(&[]).unwrap_err()[0]
                .1
                .contains("empty")
        );
        assert!(
            MethodSet::parse(&["GE T"]).unwrap_err()[0]
                .1
                .contains("not an HTTP method")
        );
        assert!(MethodSet::parse(&[""]).is_err());
        assert!(MethodSet::parse(&["G*"]).is_err());
        assert!(MethodSet::parse(&["M-SEARCH"]).is_ok());
        let err = MethodSet::parse(&["get", "PO ST"]).unwrap_err();
        assert_eq!(err.len(), 2);
    }

    #[test]
    fn covers() {
        let any = MethodSet::Any;
        let get = MethodSet::parse(&["GET"]).unwrap();
        let get_head = MethodSet::parse(&["HEAD", "GET"]).unwrap();
        assert!(any.covers(&get));
        assert!(any.covers(&any));
        assert!(get_head.covers(&get));
        assert!(!get.covers(&get_head));
        assert!(!get.covers(&any));
    }

    proptest! {
        #[test]
        fn parsed_sets_match_exactly_their_members(
            methods in proptest::collection::btree_set("[A-Z]{1,8}", 1..4), probe in "[A-Za-z]{1,8}"
        ) {
            let list: Vec<String> = methods.iter().cloned().collect();
            let set = MethodSet::parse(&list).unwrap();
            prop_assert_eq!(set.matches(&probe), methods.contains(&probe));
            prop_assert!(!set.matches(&probe.to_ascii_lowercase()));
        }
    }
}
