//! Swapping placeholders for real values on the way out: only for secrets
//! bound to the request's host, only in the place the policy says (a header,
//! HTTP basic credentials, a query parameter), only while credentials are
//! live. Each injection also records what the response must not echo: the
//! value and the exact wire form it went out in, with their placeholders.

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};

use super::{Access, Secret, Secrets, basic, redact::Redaction};
use crate::policy::{BasicPart, Injection, Policy};

/// What injection did to a request.
#[derive(Debug, Default)]
pub struct Injected {
    /// Names of the secrets injected (for the audit row).
    pub names: Vec<String>,
    /// Every encoding of the injected values the response must not show.
    pub redact: Redaction,
}

/// What one injection wrote: (real, placeholder) wire forms besides the
/// value itself, or None when nothing was injected.
type Wrote = Option<Vec<(Vec<u8>, Vec<u8>)>>;

/// Why a request carrying a bound placeholder cannot get its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLive {
    pub secret: String,
    pub access: Access,
}

fn bound<'a>(
    secrets: &'a Secrets,
    policy: &'a Policy,
    host: &'a str,
) -> impl Iterator<Item = &'a Secret> + 'a {
    secrets.iter().filter(move |s| {
        policy
            .secrets
            .get(s.spec)
            .is_some_and(|spec| spec.matches_host(host))
            && policy.host(host).is_some()
    })
}

/// The placeholders of `host`'s secrets this request carries where they are
/// injected, replaced by the real values.
pub fn inject(
    headers: &mut HeaderMap,
    uri: &mut Uri,
    host: &str,
    policy: &Policy,
    secrets: &Secrets,
) -> Result<Injected, NotLive> {
    let mut done = Injected::default();
    let access = secrets.access();
    for s in bound(secrets, policy, host) {
        let wrote = match &s.injection {
            Injection::Header { name, format } => header(headers, name, format, s, access),
            Injection::Basic(part) => basic_auth(headers, *part, s, access),
            Injection::Query(param) => query(uri, param, s, access),
        }?;
        if let Some(wire) = wrote {
            done.names.push(s.name.clone());
            done.redact.add_secret(s, wire);
        }
    }
    Ok(done)
}

fn check(access: Access, s: &Secret) -> Result<(), NotLive> {
    if access == Access::Live {
        Ok(())
    } else {
        Err(NotLive {
            secret: s.name.clone(),
            access,
        })
    }
}

fn header(
    headers: &mut HeaderMap,
    name: &str,
    format: &str,
    s: &Secret,
    access: Access,
) -> Result<Wrote, NotLive> {
    let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else {
        return Ok(None);
    };
    let carries = headers
        .get(&hname)
        .is_some_and(|v| memchr::memmem::find(v.as_bytes(), s.placeholder.as_bytes()).is_some());
    if !carries {
        return Ok(None);
    }
    check(access, s)?;
    let value = format.replace("{}", s.value());
    let Ok(mut v) = HeaderValue::from_str(&value) else {
        return Ok(None);
    };
    v.set_sensitive(true);
    headers.insert(hname, v);
    let shown = format.replace("{}", &s.placeholder);
    Ok(Some(vec![(value.into_bytes(), shown.into_bytes())]))
}

fn basic_auth(
    headers: &mut HeaderMap,
    part: BasicPart,
    s: &Secret,
    access: Access,
) -> Result<Wrote, NotLive> {
    let Some(decoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| basic::decode(v.as_bytes()))
    else {
        return Ok(None);
    };
    let (user, pass) = match decoded.iter().position(|b| *b == b':') {
        Some(i) => (&decoded[..i], &decoded[i + 1..]),
        None => (&decoded[..], &b""[..]),
    };
    let p = s.placeholder.as_bytes();
    let (user, pass, shown) = match part {
        BasicPart::User if user == p => (s.value().as_bytes(), pass, basic::encode_token(p, pass)),
        BasicPart::Password if pass == p => {
            (user, s.value().as_bytes(), basic::encode_token(user, p))
        }
        _ => return Ok(None),
    };
    check(access, s)?;
    let token = basic::encode_token(user, pass);
    let Ok(mut v) = HeaderValue::from_str(&format!("Basic {token}")) else {
        return Ok(None);
    };
    v.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, v);
    Ok(Some(vec![(token.into_bytes(), shown.into_bytes())]))
}

fn query(uri: &mut Uri, param: &str, s: &Secret, access: Access) -> Result<Wrote, NotLive> {
    let Some(q) = uri.query() else {
        return Ok(None);
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    if !pairs.iter().any(|(k, v)| k == param && *v == s.placeholder) {
        return Ok(None);
    }
    check(access, s)?;
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        if k == param && *v == s.placeholder {
            ser.append_pair(k, s.value());
        } else {
            ser.append_pair(k, v);
        }
    }
    let new_pq = format!("{}?{}", uri.path(), ser.finish());
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = new_pq.parse().ok();
    let form = |v: &str| -> Vec<u8> {
        url::form_urlencoded::byte_serialize(v.as_bytes())
            .collect::<String>()
            .into_bytes()
    };
    match Uri::from_parts(parts) {
        Ok(u) => {
            *uri = u;
            // The value as it went out, form-encoded, e.g. inside an echoed query string.
            Ok(Some(vec![(form(s.value()), form(&s.placeholder))]))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use http::HeaderValue;

    use super::*;
    use crate::secrets::scan;

    const REAL: &str = "bk_live_B4s1c/Pass+word=0123456789abcdef";

    fn setup() -> (Policy, Secrets) {
        let policy = Policy::parse(
            r#"
[[secret]]
name = "BASIC_KEY"
from = "env:UNUSED"
hosts = ["api.a.test"]
basic = "password"

[[host]]
name = "api.a.test"
action = "allow"

[[host]]
name = "other.b.test"
action = "allow"
"#,
            Path::new("p.toml"),
        )
        .unwrap();
        let secrets = Secrets::for_tests(&policy, &[REAL]);
        (policy, secrets)
    }

    /// Injection, approval and leak detection read Basic credentials the
    /// same way, whatever the case of the scheme.
    #[test]
    fn one_basic_reader_for_injection_and_detection_in_any_case() {
        let (policy, secrets) = setup();
        let placeholder = secrets.iter().next().unwrap().placeholder.clone();
        let token = STANDARD.encode(format!("me:{placeholder}"));
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let value = HeaderValue::from_str(&format!("{scheme} {token}")).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.clone());
            let mut uri: Uri = "/v1/x".parse().unwrap();
            assert!(
                scan::carries_placeholder(&secrets, "BASIC_KEY", &uri, &headers),
                "{scheme}: approval"
            );
            assert_eq!(
                scan::in_head(&secrets, &policy, "other.b.test", "/x", &headers),
                Some("BASIC_KEY"),
                "{scheme}: detection"
            );
            let done = inject(&mut headers, &mut uri, "api.a.test", &policy, &secrets).unwrap();
            assert_eq!(
                done.names,
                vec!["BASIC_KEY".to_string()],
                "{scheme}: injection"
            );
            assert_eq!(
                headers[header::AUTHORIZATION],
                format!("Basic {}", STANDARD.encode(format!("me:{REAL}"))).as_str()
            );
            assert!(!done.redact.is_empty());
        }
    }

    #[test]
    fn the_response_gets_back_the_agents_own_basic_token() {
        let (policy, secrets) = setup();
        let placeholder = secrets.iter().next().unwrap().placeholder.clone();
        let agent = STANDARD.encode(format!("me:{placeholder}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {agent}")).unwrap(),
        );
        let mut uri: Uri = "/v1/x".parse().unwrap();
        let done = inject(&mut headers, &mut uri, "api.a.test", &policy, &secrets).unwrap();
        let echoed = format!(
            "{{\"authorization\":\"{}\"}}",
            headers[header::AUTHORIZATION].to_str().unwrap()
        );
        let out = done.redact.bytes(echoed.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{{\"authorization\":\"Basic {agent}\"}}")
        );
    }
}
