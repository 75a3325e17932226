//! Telling someone that a request waits for approval, since nobody sits at
//! a unit's terminal: a JSON POST to a configured URL, shaped like a Slack
//! incoming webhook (`text`), with the same facts as structured fields
//! (`enforcer`). It carries what `enforcer approvals` shows except headers
//! and the body (placeholders appear by name; a secret's value never does),
//! and the command that answers.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::{ApprovalHub, Pending, printable};

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL {0}: not a URL")]
    BadUrl(String),
    #[error(
        "webhook URL {0}: use https:// (plain http:// is accepted only for a loopback address)"
    )]
    Plaintext(String),
    #[error("webhook POST to {url} failed: {detail}")]
    Post { url: String, detail: String },
}

/// Where notices go, and how.
pub struct Webhook {
    url: http::Uri,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

/// Whether `url` can be a webhook: https, or http to a loopback address
/// (a notice names requests and amounts; it does not cross a network in
/// clear).
pub fn check_url(url: &str) -> Result<(), WebhookError> {
    let parsed = url::Url::parse(url).map_err(|_| WebhookError::BadUrl(url.to_string()))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(WebhookError::BadUrl(url.to_string())),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(WebhookError::Plaintext(url.to_string())),
        _ => Err(WebhookError::BadUrl(url.to_string())),
    }
}

impl Webhook {
    /// A webhook for `url` (see [`check_url`]), trusting what `tls` trusts.
    pub fn new(url: &str, tls: rustls::ClientConfig) -> Result<Self, WebhookError> {
        check_url(url)?;
        let uri: http::Uri = url
            .parse()
            .map_err(|_| WebhookError::BadUrl(url.to_string()))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Posts the notice of `p`, a request of `unit`'s run.
    pub async fn notify(&self, unit: &str, p: &Pending) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(&notice(unit, p)).unwrap_or_default();
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.failed(e))?;
        let resp = tokio::time::timeout(POST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| self.failed("timed out"))?
            .map_err(|e| self.failed(e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.failed(format!("the receiver answered {}", resp.status())))
        }
    }

    fn failed(&self, detail: impl std::fmt::Display) -> WebhookError {
        WebhookError::Post {
            url: self.url.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// The JSON posted for `p`.
pub fn notice(unit: &str, p: &Pending) -> serde_json::Value {
    let mut text = format!(
        "enforcer: {unit} (run {}) asks to send {} — {}",
        p.run_id,
        printable(&p.request_line()),
        printable(&p.rule)
    );
    if let Some(c) = &p.cost {
        text.push_str(&format!("; cost {}", printable(c)));
    }
    for c in &p.caps {
        text.push_str(&format!("; {}", printable(c)));
    }
    text.push_str(&format!(
        ". Denied in {}s unless answered: sudo enforcer approve {id} --run {run} (or deny {id} --run {run})",
        p.expires_in_secs,
        id = p.id,
        run = p.run_id
    ));
    serde_json::json!({
        "text": text,
        "enforcer": {
            "unit": unit,
            "run_id": p.run_id,
            "id": p.id,
            "method": p.method,
            "host": p.host,
            "target": p.target,
            "rule": p.rule,
            "cost": p.cost,
            "caps": p.caps,
            "scope": p.scope,
            "why": p.why,
            "secrets": p.secrets,
            "expires_in_secs": p.expires_in_secs,
        }
    })
}

/// Posts a notice for every request that starts waiting in `hub` to the
/// webhook in force (`hooks`: a reload may change it), until the task is
/// aborted (with the run). A failed POST is logged; the request still
/// waits for an answer.
pub async fn watch(
    hub: Arc<ApprovalHub>,
    hooks: Arc<arc_swap::ArcSwapOption<Webhook>>,
    unit: String,
) {
    let mut announced = 0u64;
    loop {
        hub.arrived.notified().await;
        let seen = announced;
        for p in hub.pending().into_iter().filter(|p| p.id > seen) {
            announced = announced.max(p.id);
            let Some(hook) = hooks.load_full() else {
                continue;
            };
            if let Err(e) = hook.notify(&unit, &p).await {
                crate::say!(
                    Warn,
                    "enforcer: {e} (request {} of {unit} still waits)",
                    p.id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_cross_networks_only_over_tls() {
        assert!(check_url("https://hooks.slack.com/services/T0/B0/x").is_ok());
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("http://[::1]:9000/hook").is_ok());
        assert!(check_url("http://localhost/hook").is_ok());
        assert!(matches!(
            check_url("http://hooks.example.com/x"),
            Err(WebhookError::Plaintext(_))
        ));
        assert!(matches!(
            check_url("ftp://x/y"),
            Err(WebhookError::BadUrl(_))
        ));
        assert!(matches!(
            check_url("not a url"),
            Err(WebhookError::BadUrl(_))
        ));
    }

    #[test]
    fn a_notice_is_slack_text_plus_the_facts_and_says_how_to_answer() {
        let p = Pending {
            id: 3,
            run_id: "20261130-120000-abcdef".into(),
            scheme: "https".into(),
            host: "api.stripe.com".into(),
            method: "POST".into(),
            path: "/v1/refunds".into(),
            target: "/v1/refunds?charge=ch_1".into(),
            body_preview: Some("amount=48000&note=$STRIPE_KEY".into()),
            headers: vec!["authorization: (credential hidden)".into()],
            secrets: vec!["STRIPE_KEY".into()],
            cost: Some("$480.00".into()),
            caps: vec!["run cap: $20.00 left after this call".into()],
            scope: vec![],
            why: vec![],
            rule: "POST /v1/refunds -> ask".into(),
            expires_in_secs: 60,
        };
        let n = notice("billing-agent.service", &p);
        let text = n["text"].as_str().unwrap();
        assert!(text.contains("billing-agent.service"), "{text}");
        assert!(
            text.contains("POST https://api.stripe.com/v1/refunds?charge=ch_1"),
            "{text}"
        );
        assert!(text.contains("$480.00"), "{text}");
        assert!(
            text.contains("sudo enforcer approve 3 --run 20261130-120000-abcdef"),
            "{text}"
        );
        assert_eq!(n["enforcer"]["id"], 3);
        // Neither the body nor the headers are sent to a third party.
        let all = n.to_string();
        assert!(!all.contains("amount=48000"), "{all}");
        assert!(!all.contains("authorization"), "{all}");
    }
}
