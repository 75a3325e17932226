//! The trust bundle the agent is pointed at: the system's roots (or the
//! user's own SSL_CERT_FILE) plus the run's CA, written where the agent can
//! read it, and the environment variables common clients read it from.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::TlsError;

/// Parent of every run's trust directory (world-readable: the agent reads it).
pub const TRUST_DIR: &str = "/run/enforcer/trust";

/// Where distributions keep their root bundle, most common first.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Variables that point a client at a CA bundle file (system roots + run CA).
pub const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",      // OpenSSL, Python ssl, Go, Ruby, curl (OpenSSL builds)
    "CURL_CA_BUNDLE",     // curl
    "REQUESTS_CA_BUNDLE", // Python requests
    "GIT_SSL_CAINFO",     // git
    "AWS_CA_BUNDLE",      // AWS CLI and SDKs
    "PIP_CERT",           // pip
    "HTTPLIB2_CA_CERTS",  // httplib2 (Google API clients)
    "CARGO_HTTP_CAINFO",  // cargo
    "DENO_CERT",          // Deno
    "NIX_SSL_CERT_FILE",  // Nix
    "npm_config_cafile",  // npm
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", // gRPC
];

/// Variables that add a CA to a client's built-in roots (run CA only).
pub const EXTRA_CA_VARS: &[&str] = &["NODE_EXTRA_CA_CERTS"];

/// A run's trust files; removed on drop.
#[derive(Debug)]
pub struct TrustFiles {
    dir: PathBuf,
    pub bundle: PathBuf,
    pub ca: PathBuf,
}

impl TrustFiles {
    /// Writes `<TRUST_DIR>/<run_id>/{ca.pem,ca-bundle.pem}`. The base bundle is
    /// `base` (the user's SSL_CERT_FILE) when readable, else the system's.
    pub fn write(run_id: &str, ca_pem: &str, base: Option<&Path>) -> Result<Self, TlsError> {
        let root = Path::new(TRUST_DIR);
        let dir = root.join(run_id);
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Bundle { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(err(&dir))?;
        // Every directory on the way must let the agent through, whatever
        // state an earlier version or an administrator left them in.
        for d in [root.parent().unwrap_or(root), root, dir.as_path()] {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).map_err(err(d))?;
        }
        let base_pem = base
            .and_then(|p| fs::read_to_string(p).ok())
            .or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .find_map(|p| fs::read_to_string(p).ok())
            })
            .unwrap_or_default();
        let ca = dir.join("ca.pem");
        let bundle = dir.join("ca-bundle.pem");
        write_file(&ca, ca_pem).map_err(err(&ca))?;
        let mut all = base_pem;
        if !all.is_empty() && !all.ends_with('\n') {
            all.push('\n');
        }
        all.push_str(ca_pem);
        write_file(&bundle, &all).map_err(err(&bundle))?;
        Ok(Self { dir, bundle, ca })
    }

    /// The environment entries that point clients at these files.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = BUNDLE_VARS
            .iter()
            .map(|k| (k.to_string(), self.bundle.clone()))
            .collect();
        v.extend(
            EXTRA_CA_VARS
                .iter()
                .map(|k| (k.to_string(), self.ca.clone())),
        );
        v
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TrustFiles {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

/// Removes a run's trust directory (also used by the watchdog and cleanup).
pub fn remove(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
}

fn write_file(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(content.as_bytes())
}
