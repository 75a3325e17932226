//! Swapping placeholders for real values on the way out: only for secrets
//! bound to the request's host, only in the place the policy says (a header,
//! HTTP basic credentials, a query parameter), only while credentials are live.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};

use super::{Access, Secret, Secrets};
use crate::policy::{BasicPart, Injection, Policy};

/// What injection did to a request.
#[derive(Debug, Default)]
pub struct Injected {
    /// Names of the secrets injected (for the audit row).
    pub names: Vec<String>,
    /// (real value, placeholder) pairs to redact from the response.
    pub redact: Vec<(String, String)>,
}

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
        let swapped = match &s.injection {
            Injection::Header { name, format } => header(headers, name, format, s, access),
            Injection::Basic(part) => basic(headers, *part, s, access),
            Injection::Query(param) => query(uri, param, s, access),
        }?;
        if swapped {
            done.names.push(s.name.clone());
            done.redact
                .push((s.value().to_string(), s.placeholder.clone()));
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
) -> Result<bool, NotLive> {
    let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else {
        return Ok(false);
    };
    let carries = headers
        .get(&hname)
        .is_some_and(|v| memchr::memmem::find(v.as_bytes(), s.placeholder.as_bytes()).is_some());
    if !carries {
        return Ok(false);
    }
    check(access, s)?;
    let value = format.replace("{}", s.value());
    let Ok(mut v) = HeaderValue::from_str(&value) else {
        return Ok(false);
    };
    v.set_sensitive(true);
    headers.insert(hname, v);
    Ok(true)
}

fn basic(
    headers: &mut HeaderMap,
    part: BasicPart,
    s: &Secret,
    access: Access,
) -> Result<bool, NotLive> {
    let Some(decoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Ok(false);
    };
    let (user, pass) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    let (user, pass) = match part {
        BasicPart::User if user == s.placeholder => (s.value(), pass),
        BasicPart::Password if pass == s.placeholder => (user, s.value()),
        _ => return Ok(false),
    };
    check(access, s)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let Ok(mut v) = HeaderValue::from_str(&format!("Basic {encoded}")) else {
        return Ok(false);
    };
    v.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, v);
    Ok(true)
}

fn query(uri: &mut Uri, param: &str, s: &Secret, access: Access) -> Result<bool, NotLive> {
    let Some(q) = uri.query() else {
        return Ok(false);
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    if !pairs.iter().any(|(k, v)| k == param && *v == s.placeholder) {
        return Ok(false);
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
    match Uri::from_parts(parts) {
        Ok(u) => {
            *uri = u;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}
