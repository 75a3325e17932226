//! TLS: the run's certificate authority and the leaf certificates it mints
//! for intercepted hosts, the trust bundle the agent is pointed at, and the
//! verification of upstream servers.

pub mod ca;
pub mod trust;
pub mod upstream;

use std::sync::Arc;

pub use ca::RunCa;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot use a generated key: {0}")]
    Key(#[source] rustls::Error),
    #[error("cannot build a TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("cannot read CA file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("cannot write the trust bundle {path}: {source}")]
    Bundle {
        path: String,
        source: std::io::Error,
    },
}

/// The crypto provider every TLS configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
