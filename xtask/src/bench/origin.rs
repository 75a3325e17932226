//! The origin every measurement fetches from: nginx serving a small static
//! file over HTTP (80) and HTTPS (443, a certificate from a test CA made
//! here) on 10.231.200.2, in a network namespace of the bench's own behind a
//! veth pair. Not on loopback: enforcer refuses unlisted loopback
//! destinations, and listed loopback ports bypass its proxy.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::{oha::ORIGIN_NAME, peers::Daemon};
use crate::netns::{self, Netns, Spec};

pub const ORIGIN_ADDR: &str = "10.231.200.2";
/// The origin's namespace and veth pair.
pub const NETNS: Spec = Spec {
    ns: "enft-bench-proxy",
    host_if: "enftbp0",
    ns_if: "enftbp1",
    host_addr: "10.231.200.1",
    ns_addr: ORIGIN_ADDR,
};
/// Size of the file every request fetches.
pub const BODY_BYTES: usize = 1024;

/// The namespace (removed on drop, whatever happened) and nginx inside it.
/// Fields drop in order: nginx (a graceful stop takes its workers along),
/// then the namespace, killing anything left in it.
pub struct Origin {
    nginx: Daemon,
    _netns: Netns,
    /// The test CA the origin's certificate chains to (PEM).
    pub ca_file: PathBuf,
}

/// Is the namespace gone (after the bench)?
pub fn netns_gone() -> bool {
    !netns::exists(NETNS.ns)
}

/// Writes a test CA and a certificate for the origin (its name and address).
fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "enforcer bench origin CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(vec![ORIGIN_NAME.to_string(), ORIGIN_ADDR.to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, ORIGIN_NAME);
    let cert = params.signed_by(&key, &issuer)?;
    let (ca_file, cert_file, key_file) = (
        dir.join("origin-ca.pem"),
        dir.join("origin.pem"),
        dir.join("origin.key"),
    );
    std::fs::write(&ca_file, ca_cert.pem())?;
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok((ca_file, cert_file, key_file))
}

impl Origin {
    /// Creates the namespace and starts nginx in it. `dir` must be readable
    /// by nginx's workers (user nobody).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let netns = Netns::create(NETNS)?;
        let (ca_file, cert_file, key_file) = certificates(dir)?;
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        let body: Vec<u8> = (0..BODY_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(www.join(super::oha::PATH.trim_start_matches('/')), body)?;
        let logs = dir.join("nginx");
        std::fs::create_dir_all(&logs)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes auto;\n\
                 pid {logs}/nginx.pid;\n\
                 error_log {logs}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n\
                 \x20 access_log off;\n\
                 \x20 client_body_temp_path {logs}/body;\n\
                 \x20 proxy_temp_path {logs}/proxy;\n\
                 \x20 fastcgi_temp_path {logs}/fastcgi;\n\
                 \x20 uwsgi_temp_path {logs}/uwsgi;\n\
                 \x20 scgi_temp_path {logs}/scgi;\n\
                 \x20 keepalive_requests 1000000;\n\
                 \x20 keepalive_timeout 300s;\n\
                 \x20 server {{\n\
                 \x20   listen {ORIGIN_ADDR}:80 backlog=4096;\n\
                 \x20   listen {ORIGIN_ADDR}:443 ssl backlog=4096;\n\
                 \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
                 \x20   ssl_certificate {cert};\n\
                 \x20   ssl_certificate_key {key};\n\
                 \x20   root {www};\n\
                 \x20 }}\n\
                 }}\n",
                logs = logs.display(),
                cert = cert_file.display(),
                key = key_file.display(),
                www = www.display(),
            ),
        )?;
        let nginx = Daemon::spawn(
            "nginx",
            Command::new("ip")
                .args(["netns", "exec", NETNS.ns, "nginx", "-c"])
                .arg(&conf)
                .args(["-g", "daemon off;"]),
            dir,
        )?;
        for port in [80, 443] {
            wait_listening(SocketAddr::new(ORIGIN_ADDR.parse()?, port), &nginx)?;
        }
        Ok(Self {
            nginx,
            _netns: netns,
            ca_file,
        })
    }
}

impl Origin {
    pub fn nginx_pid(&self) -> u32 {
        self.nginx.pid()
    }

    /// CPU seconds nginx (master and workers) has used so far.
    pub fn cpu_s(&self) -> f64 {
        super::procstat::tree_cpu_s(self.nginx.pid())
    }
}

/// Waits until `addr` accepts connections (or `daemon` died).
pub fn wait_listening(addr: SocketAddr, daemon: &Daemon) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !daemon.alive() {
            bail!(
                "{} exited before listening on {addr}; see {}",
                daemon.name,
                daemon.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow::anyhow!(
        "{} does not listen on {addr} after 30 s; see {}",
        daemon.name,
        daemon.log.display()
    ))
    .context("starting a bench server")
}
