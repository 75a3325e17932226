//! `cargo xtask demo`: a fake vendor in a network namespace of its own, and
//! a real program (curl) launched under enforcement against it, showing one
//! allowed and several refused connections. Nothing leaves this machine.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::util::{self, cargo, exec};

const NS: &str = "enft-demo";
const HOST_IF: &str = "enftdemo0";
const NS_IF: &str = "enftdemo1";
const HOST_ADDR: &str = "10.231.0.1";
const VENDOR_ADDR: &str = "10.231.0.2";

pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    exec(cargo().args(["build", "-p", "enforcer"]))?;
    if let Some(code) = util::ensure_root(&["demo"])? {
        std::process::exit(code);
    }
    let _vendor = FakeVendor::start()?;
    let enforcer = util::target_dir().join("debug").join("enforcer");
    let policy = util::root().join("policies").join("demo.toml");
    let script = format!(
        "echo '--- allowed: the vendor named in the policy (api.vendor.test:8080)';\
         curl -sS -m 5 http://{VENDOR_ADDR}:8080/hello.txt;\
         echo '--- refused: another port on the same host';\
         curl -sS -m 5 http://{VENDOR_ADDR}:9090/ || true;\
         echo '--- refused: a UDP datagram (QUIC, DNS tunnels...)';\
         python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"{VENDOR_ADDR}\", 443))' 2>&1 | tail -1 || true"
    );
    eprintln!("\nxtask: sudo enforcer launch --policy policies/demo.toml -- sh -c '...curl...'\n");
    let mut cmd = Command::new(&enforcer);
    cmd.args(["launch", "--policy"])
        .arg(&policy)
        .args(["--resolve", &format!("api.vendor.test={VENDOR_ADDR}")]);
    if std::env::var_os("SUDO_UID").is_none() {
        cmd.args(["--user", "nobody"]);
    }
    cmd.args(["--", "/bin/sh", "-c", &script]);
    let status = cmd.status().context("cannot run enforcer")?;
    eprintln!("\nxtask: the demo's agent exited with {status}");
    Ok(())
}

/// The namespace, its veth and the HTTP server inside; removed on drop.
struct FakeVendor {
    server: Child,
    dir: PathBuf,
}

impl FakeVendor {
    fn start() -> anyhow::Result<Self> {
        Self::remove();
        let ip = |args: &[&str]| exec(Command::new("ip").args(args).stdout(Stdio::null()));
        ip(&["netns", "add", NS])?;
        ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF,
        ])?;
        ip(&["link", "set", NS_IF, "netns", NS])?;
        ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", HOST_IF])?;
        ip(&["link", "set", HOST_IF, "up"])?;
        ip(&[
            "netns",
            "exec",
            NS,
            "ip",
            "addr",
            "add",
            &format!("{VENDOR_ADDR}/30"),
            "dev",
            NS_IF,
        ])?;
        ip(&["netns", "exec", NS, "ip", "link", "set", NS_IF, "up"])?;
        ip(&["netns", "exec", NS, "ip", "link", "set", "lo", "up"])?;
        let dir = std::env::temp_dir().join(format!("enforcer-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hello.txt"),
            "hello from api.vendor.test, the fake vendor\n",
        )?;
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                NS,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                VENDOR_ADDR,
                "--directory",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the fake vendor")?;
        // Wait until it listens.
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(
                &format!("{VENDOR_ADDR}:8080").parse()?,
                Duration::from_millis(100),
            )
            .is_ok()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { server, dir })
    }

    fn remove() {
        let _ = Command::new("ip")
            .args(["link", "del", HOST_IF])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        Self::remove();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
