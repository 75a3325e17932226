//! The per-run certificate authority. Its key is generated at launch and
//! never leaves this process's memory; its certificate goes into the agent's
//! trust bundle. Leaf certificates are minted per server name on first use
//! and cached for the run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::TlsError;

/// Leaf certificates kept per run; past this, the cache starts over.
const MAX_CACHED_LEAVES: usize = 4096;

pub struct RunCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: time::OffsetDateTime,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for RunCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl RunCa {
    /// A new CA for run `run_id`, valid from an hour ago (clock skew) for `lifetime`.
    pub fn generate(run_id: &str, lifetime: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("enforcer run {run_id} CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "enforcer");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after =
            now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(1));
        let cert = params.self_signed(&key)?;
        let not_after = params.not_after;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_after,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM encoded (public; goes into the trust bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The leaf for `name` (a DNS name or IP literal), minted on first use.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.leaves.lock().ok().and_then(|c| c.get(&name).cloned()) {
            return Ok(k);
        }
        let leaf = Arc::new(self.mint(&name)?);
        if let Ok(mut cache) = self.leaves.lock() {
            if cache.len() >= MAX_CACHED_LEAVES {
                cache.clear();
            }
            cache.insert(name, Arc::clone(&leaf));
        }
        Ok(leaf)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - time::Duration::hours(1);
        params.not_after = self.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(TlsError::Key)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

/// Serves the leaf for the SNI of each handshake. Connections without SNI
/// get no certificate (the handshake fails): the proxy only intercepts names.
#[derive(Debug)]
pub struct LeafResolver {
    pub ca: Arc<RunCa>,
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.ca.leaf(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("cannot mint a certificate for {name}: {e}");
                None
            }
        }
    }
}

/// The server side of interception: leaves from `ca`, ALPN h2 and http/1.1.
///
/// Our order of cipher suites wins over the client's, and it puts the
/// SHA-256 suites first: most clients prefer TLS_AES_256_GCM_SHA384, whose
/// handshake hashing (SHA-512) has no hardware help, while SHA-256 and AES
/// have it. This leg never leaves the machine; AES-128-GCM is as safe here.
pub fn server_config(ca: Arc<RunCa>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LeafResolver { ca }));
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn the_interception_side_picks_aes_128_whatever_the_client_prefers() {
        let ca = Arc::new(RunCa::generate("test", Duration::from_secs(3600)).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        // A client that prefers AES-256 (ring's default order, as most do).
        let client_cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            client_cfg.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config(ca).unwrap()).unwrap();
        // Shuttle the handshake through memory until both sides are done.
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking(), "the handshake completes");
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    #[test]
    fn leaves_chain_to_the_run_ca_and_are_cached() {
        let ca = RunCa::generate("test", Duration::from_secs(3600)).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.leaf("API.Example.com.").unwrap();
        let b = ca.leaf("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same name is minted once");
        assert_eq!(a.cert.len(), 2);
        assert_eq!(&a.cert[1], ca.cert_der());
        // The leaf verifies against the CA as a root, for that name only.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&a.cert[0], &a.cert[1..], &name, &[], now)
                .is_ok()
        );
        let other = rustls::pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&a.cert[0], &a.cert[1..], &other, &[], now)
                .is_err()
        );
    }
}
