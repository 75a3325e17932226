//! Leak detection: a placeholder on its way to a host its secret is not
//! bound to is an exfiltration attempt. Names (SNI, Host, DNS) and request
//! heads are checked whole; request bodies are checked as they stream, and
//! a body that turns out to carry a placeholder is cut off before the
//! placeholder's last byte leaves.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, header};
use hyper::body::{Body, Frame};

use super::{Secrets, matcher::StreamMatcher};
use crate::{
    policy::Policy,
    proxy::upstream::{Body as ProxyBody, BoxError},
};

/// The reason every exfiltration refusal carries (the audit and the run
/// summary look for it).
pub const EXFILTRATION: &str = "credential exfiltration attempt";

/// Secrets whose placeholders must not go to `host` (those not bound to it).
fn foreign<'a>(
    secrets: &'a Secrets,
    policy: &'a Policy,
    host: &'a str,
) -> impl Iterator<Item = &'a super::Secret> + 'a {
    secrets.iter().filter(move |s| {
        policy
            .secrets
            .get(s.spec)
            .is_none_or(|spec| !spec.matches_host(host))
    })
}

/// The secret whose placeholder appears in `name` (a DNS name, SNI or Host;
/// case-insensitive, as DNS is).
pub fn in_name<'a>(secrets: &'a Secrets, name: &str) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    secrets
        .iter()
        .find(|s| lower.contains(&s.placeholder.to_ascii_lowercase()))
        .map(|s| s.name.as_str())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The secret whose placeholder a request to `host` carries in its target
/// (raw or percent-decoded), any header, or HTTP basic credentials, when that
/// secret is not bound to `host`.
pub fn in_head<'a>(
    secrets: &'a Secrets,
    policy: &'a Policy,
    host: &'a str,
    target: &str,
    headers: &HeaderMap,
) -> Option<&'a str> {
    let decoded = percent_decode(target);
    let basic: Vec<String> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .chain(headers.get_all(header::PROXY_AUTHORIZATION).iter())
        .filter_map(|v| super::basic::decode(v.as_bytes()))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    foreign(secrets, policy, host)
        .find(|s| {
            let p = s.placeholder.as_str();
            target.contains(p)
                || decoded.contains(p)
                || basic.iter().any(|b| b.contains(p))
                || headers
                    .iter()
                    .any(|(_, v)| memchr::memmem::find(v.as_bytes(), p.as_bytes()).is_some())
        })
        .map(|s| s.name.as_str())
}

/// Whether the request carries the placeholder of secret `name` in its
/// target or headers (to tell an approver which secrets would be injected).
pub fn carries_placeholder(
    secrets: &Secrets,
    name: &str,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> bool {
    secrets.iter().filter(|s| s.name == name).any(|s| {
        let p = s.placeholder.as_bytes();
        memchr::memmem::find(uri.to_string().as_bytes(), p).is_some()
            || headers
                .iter()
                .any(|(_, v)| memchr::memmem::find(v.as_bytes(), p).is_some())
            || headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .filter_map(|v| super::basic::decode(v.as_bytes()))
                .any(|b| memchr::memmem::find(&b, p).is_some())
    })
}

/// A request body that stops (with an error) before a foreign placeholder
/// inside it is passed on; `leaked` then names the secret.
pub struct ScanBody {
    inner: ProxyBody,
    matcher: StreamMatcher,
    names: Vec<String>,
    pub leaked: Arc<OnceLock<String>>,
    /// Trailers held while the last data bytes go out.
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{EXFILTRATION}: placeholder of {0} in the request body")]
pub struct LeakInBody(pub String);

impl ScanBody {
    /// Wraps `inner`; None when no placeholder is foreign to `host`.
    pub fn wrap(
        inner: ProxyBody,
        secrets: &Secrets,
        policy: &Policy,
        host: &str,
    ) -> Result<(Self, Arc<OnceLock<String>>), ProxyBody> {
        let foreign: Vec<&super::Secret> = foreign(secrets, policy, host).collect();
        if foreign.is_empty() {
            return Err(inner);
        }
        let matcher = StreamMatcher::new(
            foreign
                .iter()
                .map(|s| (s.placeholder.as_bytes().to_vec(), None))
                .collect(),
        );
        let names = foreign.iter().map(|s| s.name.clone()).collect();
        let leaked = Arc::new(OnceLock::new());
        Ok((
            Self {
                inner,
                matcher,
                names,
                leaked: Arc::clone(&leaked),
                trailers: None,
                done: false,
            },
            leaked,
        ))
    }

    fn caught(&mut self, index: usize) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let name = self.names.get(index).cloned().unwrap_or_default();
        let _ = self.leaked.set(name.clone());
        self.done = true;
        Poll::Ready(Some(Err(Box::new(LeakInBody(name)))))
    }
}

impl Body for ScanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(t) = self.trailers.take() {
                return Poll::Ready(Some(Ok(t)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let step = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.matcher.push(&data),
                    Err(trailers) => {
                        // Trailers end the data: flush what was held back first.
                        self.trailers = Some(trailers);
                        self.done = true;
                        self.matcher.finish()
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    self.matcher.finish()
                }
            };
            if let Some(i) = step.found {
                self.trailers = None;
                return self.caught(i);
            }
            if !step.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(step.out))));
            }
        }
    }
}
