//! The proxies enforcer is compared with, each run by the bench with its own
//! configuration on a free loopback port, in explicit-proxy mode: squid and
//! tinyproxy (Debian; plain HTTP forwarding and CONNECT tunnels) and
//! mitmproxy (PyPI; intercepts the TLS inside CONNECT). And the background
//! process guard they (and nginx) run under.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::origin::wait_listening;
use crate::util;

/// A background server: its output goes to a log file; on drop it gets
/// SIGTERM, and SIGKILL if it is still there after a few seconds.
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", util::describe(cmd)))?;
        Ok(Self {
            name: name.to_string(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the (not yet reaped) child exists.
        let exists = unsafe { libc::kill(self.child.id() as i32, 0) == 0 };
        exists && !is_zombie(self.child.id())
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (the kernel's choice).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A directory the peer's unprivileged user can write its logs to.
fn writable_dir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))?;
    Ok(d)
}

/// A running peer proxy.
pub struct Peer {
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`, for oha's `-x`.
    pub url: String,
    /// The CA a client must trust for HTTPS through it (mitmproxy's own).
    pub cacert: Option<PathBuf>,
}

fn started(daemon: Daemon, port: u16, cacert: Option<PathBuf>) -> anyhow::Result<Peer> {
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &daemon)?;
    Ok(Peer {
        daemon,
        url: format!("http://127.0.0.1:{port}"),
        cacert,
    })
}

/// squid without a cache, logging only errors; `-N`: one process, in the
/// foreground. It drops to Debian's `proxy` user.
pub fn squid(dir: &Path) -> anyhow::Result<Peer> {
    let port = free_port()?;
    let d = writable_dir(dir, "squid")?;
    let conf = d.join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port}\n\
             visible_hostname enforcer-bench\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             coredump_dir {d}\n\
             access_log none\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             shutdown_lifetime 0 seconds\n\
             pinger_enable off\n\
             max_filedescriptors 4096\n\
             acl bench_client src 127.0.0.1/32\n\
             acl bench_tls port 443\n\
             acl bench_connect method CONNECT\n\
             http_access deny bench_connect !bench_tls\n\
             http_access allow bench_client\n\
             http_access deny all\n",
            d = d.display()
        ),
    )?;
    let daemon = Daemon::spawn(
        "squid",
        Command::new("squid").args(["-N", "-f"]).arg(&conf),
        dir,
    )?;
    started(daemon, port, None)
}

/// tinyproxy in the foreground (`-d`), as nobody.
pub fn tinyproxy(dir: &Path) -> anyhow::Result<Peer> {
    let port = free_port()?;
    let d = writable_dir(dir, "tinyproxy")?;
    let conf = d.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\n\
             Group nogroup\n\
             Port {port}\n\
             Listen 127.0.0.1\n\
             Timeout 600\n\
             MaxClients 1024\n\
             Allow 127.0.0.1\n\
             ConnectPort 443\n\
             DisableViaHeader Yes\n\
             LogLevel Error\n\
             LogFile \"{d}/tinyproxy.log\"\n\
             PidFile \"{d}/tinyproxy.pid\"\n",
            d = d.display()
        ),
    )?;
    let daemon = Daemon::spawn(
        "tinyproxy",
        Command::new("tinyproxy").args(["-d", "-c"]).arg(&conf),
        dir,
    )?;
    started(daemon, port, None)
}

/// mitmdump intercepting CONNECT, with a CA of its own made in `dir`, and
/// verifying the origin against `origin_ca`.
pub fn mitmproxy(mitmdump: &Path, dir: &Path, origin_ca: &Path) -> anyhow::Result<Peer> {
    let port = free_port()?;
    let confdir = dir.join("mitmproxy");
    std::fs::create_dir_all(&confdir)?;
    let daemon = Daemon::spawn(
        "mitmproxy",
        Command::new(mitmdump)
            .args(["--quiet", "--listen-host", "127.0.0.1", "--listen-port"])
            .arg(port.to_string())
            .arg("--set")
            .arg(format!("confdir={}", confdir.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                origin_ca.display()
            )),
        dir,
    )?;
    started(daemon, port, Some(confdir.join("mitmproxy-ca-cert.pem")))
}
