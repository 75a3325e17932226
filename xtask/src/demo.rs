//! `cargo xtask demo`: a fake vendor (HTTPS, its own test CA) in a network
//! namespace of its own, and real programs (curl, python) launched under
//! enforcement against it, showing what is allowed and what is refused, and
//! by which layer. Nothing leaves this machine.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    netns::{Netns, Spec},
    util::{self, cargo, exec},
};

const VENDOR_ADDR: &str = "10.231.0.2";
const NETNS: Spec = Spec {
    ns: "enft-demo",
    host_if: "enftdemo0",
    ns_if: "enftdemo1",
    host_addr: "10.231.0.1",
    ns_addr: VENDOR_ADDR,
};
const VENDOR: &str = "api.vendor.test";

/// The agent: its attempts, each labelled with what should happen.
const AGENT: &str = r#"
step() { printf '\n\033[1m--- %s\033[0m\n' "$1"; }
step "allowed: GET https://api.vendor.test/v1/hello.txt (intercepted, rule GET /v1/** -> allow)"
curl -sS -m 10 https://api.vendor.test/v1/hello.txt
step "allowed: POST https://api.vendor.test/v1/payment_intents amount=3000 (\$30.00 of the \$50 cap, reserved before it leaves)"
curl -sS -m 10 -d amount=3000 -d currency=usd -d description=first https://api.vendor.test/v1/payment_intents
step "refused: the same for another \$30.00 (over the spend cap: 429, the vendor never sees it)"
curl -sS -m 10 -d amount=3000 -d currency=usd -d description=second https://api.vendor.test/v1/payment_intents; echo
step "refused: POST https://api.vendor.test/v1/refunds (rule -> ask; --approver none in this demo)"
curl -sS -m 10 -X POST -d amount=5000 https://api.vendor.test/v1/refunds; echo
step "refused: DELETE https://api.vendor.test/v1/customers/42 (no rule: default deny)"
curl -sS -m 10 -X DELETE https://api.vendor.test/v1/customers/42; echo
step "refused: https://exfil.example/ (not in the policy)"
curl -sS -m 10 https://exfil.example/ || true
step "refused: a process ignoring proxy settings, dialing the vendor's address directly on port 22"
python3 -c 'import socket; s = socket.create_connection(("10.231.0.2", 22), timeout=5); s.sendall(b"hi"); print(s.recv(10))' 2>&1 | tail -1
step "refused: UDP to the vendor (QUIC, DNS tunnels...)"
python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.231.0.2", 443))' 2>&1 | tail -1
"#;

pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    exec(cargo().args(["build", "-p", "enforcer"]))?;
    if let Some(code) = util::ensure_root(&["demo"])? {
        std::process::exit(code);
    }
    let vendor = FakeVendor::start()?;
    let enforcer = util::target_dir().join("debug").join("enforcer");
    let policy = util::root().join("policies").join("demo.toml");
    eprintln!(
        "\nxtask: sudo enforcer launch --policy policies/demo.toml -- sh -c '<curl and python, as below>'"
    );
    let mut cmd = Command::new(&enforcer);
    cmd.args(["launch", "--policy"])
        .arg(&policy)
        .args(["--resolve", &format!("{VENDOR}={VENDOR_ADDR}")])
        .arg("--upstream-ca")
        .arg(vendor.dir.join("ca.pem"))
        // Only the vendor's name is allowed, and it is given above: enforcer
        // never needs this machine's resolver in the demo.
        .args(["--resolver", "127.0.0.1:1"])
        // Nobody answers approvals in the demo: asks are refused at once.
        .args(["--approver", "none"]);
    if std::env::var_os("SUDO_UID").is_none() {
        cmd.args(["--user", "nobody"]);
    }
    cmd.args(["--", "/bin/sh", "-c", AGENT]);
    let status = cmd.status().context("cannot run enforcer")?;
    eprintln!("\nxtask: the demo's agent exited with {status}");
    Ok(())
}

/// The namespace, its veth and the HTTPS server inside; removed on drop.
struct FakeVendor {
    server: Option<Child>,
    netns: Option<Netns>,
    dir: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A test CA and a certificate for the vendor's name, in `dir`.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=demo vendor test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    )?;
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={VENDOR}"),
            "-keyout",
            "vendor.key",
            "-out",
            "vendor.csr",
        ],
        dir,
    )?;
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName=DNS:{VENDOR}\n"),
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "vendor.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "vendor.pem",
        ],
        dir,
    )
}

/// The vendor: serves `dir/www` over HTTPS, answers POST with 200 too.
const SERVER: &str = r#"
import http.server, ssl, sys, os
os.chdir(sys.argv[1] + "/www")
class H(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"the vendor accepted a POST\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_DELETE = do_POST
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer((sys.argv[2], 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + "/vendor.pem", sys.argv[1] + "/vendor.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

impl FakeVendor {
    fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("enforcer-demo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www").join("v1"))?;
        let mut vendor = Self {
            server: None,
            netns: None,
            dir,
        };
        certificates(&vendor.dir)?;
        std::fs::write(
            vendor.dir.join("www").join("v1").join("hello.txt"),
            "hello from api.vendor.test, the fake vendor\n",
        )?;
        std::fs::write(vendor.dir.join("server.py"), SERVER)?;
        vendor.netns = Some(Netns::create(NETNS)?);
        vendor.server = Some(
            Command::new("ip")
                .args(["netns", "exec", NETNS.ns, "python3"])
                .arg(vendor.dir.join("server.py"))
                .arg(&vendor.dir)
                .arg(VENDOR_ADDR)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start the fake vendor")?,
        );
        for _ in 0..100 {
            let addr = format!("{VENDOR_ADDR}:443").parse()?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(vendor)
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.netns.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
