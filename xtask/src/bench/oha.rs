//! The load generator: oha's arguments for one measurement, and what its
//! JSON report says.

use std::path::Path;

use anyhow::{Context as _, bail};

/// One load: which URL, how many connections, keep-alive or not.
#[derive(Debug, Clone)]
pub struct Load {
    /// `http` or `https`.
    pub scheme: &'static str,
    pub concurrency: u32,
    pub keep_alive: bool,
    pub seconds: f64,
    /// `-x`: an explicit proxy (plain HTTP absolute-form, CONNECT for HTTPS).
    pub proxy: Option<String>,
    /// `--cacert` (oha also trusts the native roots, which honour SSL_CERT_FILE).
    pub cacert: Option<String>,
    /// Map the origin's name to its address (`--connect-to`); without it
    /// the name is left to the proxy.
    pub connect_to: bool,
    /// A query string added to the URL (without `?`).
    pub query: Option<&'static str>,
    /// Request headers (`-H`), as `Name: value`.
    pub headers: &'static [&'static str],
}

/// The name the origin is asked for (SNI, Host); oha maps it to the origin's
/// address itself (`--connect-to`), no DNS involved.
pub const ORIGIN_NAME: &str = "origin.bench.test";
/// The file every request fetches.
pub const PATH: &str = "/1k.bin";

impl Load {
    /// oha's arguments (the binary not included).
    pub fn args(&self, origin_addr: &str) -> Vec<String> {
        let port = if self.scheme == "https" { 443 } else { 80 };
        let mut a: Vec<String> = vec![
            match self.query {
                Some(q) => format!("{}://{ORIGIN_NAME}{PATH}?{q}", self.scheme),
                None => format!("{}://{ORIGIN_NAME}{PATH}", self.scheme),
            },
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
            // Wait for the requests in flight at the deadline instead of
            // counting them as errors.
            "-w".into(),
            "-z".into(),
            format!("{}ms", (self.seconds * 1000.0).round() as u64),
            "-c".into(),
            self.concurrency.to_string(),
            "-t".into(),
            "10s".into(),
        ];
        if self.connect_to {
            a.push("--connect-to".into());
            a.push(format!("{ORIGIN_NAME}:{port}:{origin_addr}:{port}"));
        }
        for h in self.headers {
            a.push("-H".into());
            a.push((*h).to_string());
        }
        if !self.keep_alive {
            a.push("--disable-keepalive".into());
        }
        if let Some(p) = &self.proxy {
            a.push("-x".into());
            a.push(p.clone());
        }
        if let Some(c) = &self.cacert {
            a.push("--cacert".into());
            a.push(c.clone());
        }
        a
    }
}

/// What one oha run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rps: f64,
    /// Successful requests (status 200).
    pub ok: u64,
    /// Everything else: other statuses and connection errors.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What went wrong most often, if anything did (status or error).
    pub top_failure: Option<String>,
}

/// Parses oha's `--output-format json` report.
pub fn parse(json: &str) -> anyhow::Result<Report> {
    let start = json
        .find('{')
        .with_context(|| format!("no JSON in oha's output: {json}"))?;
    let v: serde_json::Value = serde_json::from_str(&json[start..]).context("oha's JSON report")?;
    let num = |p: &str| v.pointer(p).and_then(serde_json::Value::as_f64);
    let count = |p: &str| -> u64 {
        v.pointer(p)
            .and_then(serde_json::Value::as_object)
            .map_or(0, |m| {
                m.values().filter_map(serde_json::Value::as_u64).sum()
            })
    };
    let ok = v
        .pointer("/statusCodeDistribution/200")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let all_statuses = count("/statusCodeDistribution");
    let errors = count("/errorDistribution");
    let Some(rps) = num("/summary/requestsPerSec") else {
        bail!("oha's report has no requestsPerSec: {json}");
    };
    // Percentiles are in seconds.
    let pct = |p: &str| num(&format!("/latencyPercentiles/{p}")).unwrap_or(f64::NAN) * 1000.0;
    let top_failure = ["/statusCodeDistribution", "/errorDistribution"]
        .iter()
        .filter_map(|p| v.pointer(p).and_then(serde_json::Value::as_object))
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.as_str() != "200")
        .max_by_key(|(_, n)| n.as_u64().unwrap_or(0))
        .map(|(k, n)| format!("{k} (x{n})"));
    Ok(Report {
        top_failure,
        rps: rps * ok as f64 / (all_statuses + errors).max(1) as f64,
        ok,
        failed: all_statuses - ok + errors,
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
    })
}

/// A copy of oha that user `nobody` (the agent under enforcer) can run.
pub fn world_executable_copy(oha: &Path, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dst = dir.join("oha");
    std::fs::copy(oha, &dst).with_context(|| format!("copy {}", oha.display()))?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    Ok(dst)
}
