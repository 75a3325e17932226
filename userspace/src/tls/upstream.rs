//! How the proxy verifies upstream servers: the system's roots, plus
//! `--upstream-ca` files for tests and private vendors.

use std::{path::Path, sync::Arc};

use rustls::{RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject as _};

use super::TlsError;

/// Root store: native roots plus every certificate in `extra_ca_files`.
pub fn root_store(extra_ca_files: &[impl AsRef<Path>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for path in extra_ca_files {
        let path = path.as_ref();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::CaFile {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::CaFile {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::CaFile {
                path: path.display().to_string(),
                detail: String::from("no PEM certificate in it"),
            });
        }
        for c in certs {
            roots.add(c).map_err(|e| TlsError::CaFile {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// The client configuration for upstream TLS (ALPN is set by the connector).
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(Arc::new(roots))
            .with_no_client_auth(),
    )
}
