//! `cargo xtask bench stream`: time to first byte of a streamed response
//! (server-sent events, an LLM-style answer whose cost comes in its last
//! event) through enforcer with a cost rule that reads the response, against
//! the same request sent directly, in one run. The origin, in a network
//! namespace, sends its first event at once and then one every 50 ms;
//! a proxy that holds the body to read its cost shows it as a first byte
//! that arrives with the last.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use super::{median, release};
use crate::{
    netns::{Netns, Spec},
    util,
};

const NETNS: Spec = Spec {
    ns: "enfbench-stream",
    host_if: "enfbs-h",
    ns_if: "enfbs-n",
    host_addr: "10.232.9.1",
    ns_addr: "10.232.9.2",
};
const PORT: u16 = 8080;
const NAME: &str = "stream.bench.test";
const ROUNDS: usize = 7;

/// The origin: HTTP/1.1, one event now, twenty more 50 ms apart, then the
/// usage event and the end.
const ORIGIN: &str = r#"
import socketserver, sys, time
class H(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        w = self.wfile
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        w.write(b'data: {"id":"resp_1","delta":"first"}\n\n'); w.flush()
        for i in range(20):
            time.sleep(0.05)
            w.write(b'data: {"id":"resp_1","delta":"more"}\n\n'); w.flush()
        w.write(b'data: {"id":"resp_1","usage":{"cost":0.002}}\n\ndata: [DONE]\n\n'); w.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Measure this enforcer binary instead of building target/release/enforcer.
    #[arg(long, value_name = "PATH")]
    enforcer: Option<PathBuf>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut argv = vec!["bench".to_string(), "stream".to_string()];
    if let Some(e) = &opts.enforcer {
        argv.push("--enforcer".into());
        argv.push(e.display().to_string());
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    super::build_then_become_root(&argv)?;
    let enforcer = opts.enforcer.clone().unwrap_or_else(|| release("enforcer"));
    let dir = std::env::temp_dir().join("enforcer-bench-stream");
    std::fs::create_dir_all(&dir)?;
    let _ns = Netns::create(NETNS)?;
    let mut origin = Command::new("ip")
        .args([
            "netns",
            "exec",
            NETNS.ns,
            "python3",
            "-c",
            ORIGIN,
            NETNS.ns_addr,
        ])
        .arg(PORT.to_string())
        .spawn()
        .context("starting the streaming origin (python3)")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let result = measure(&enforcer, &dir);
    let _ = origin.kill();
    let _ = origin.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `time_starttransfer time_total` of one curl run.
fn parse(out: &str) -> anyhow::Result<(f64, f64)> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 2)
        .with_context(|| format!("unexpected curl output: {out}"))?;
    let mut it = line.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => anyhow::bail!("unexpected curl output: {out}"),
    }
}

fn curl_args(url: &str) -> Vec<String> {
    vec![
        "/usr/bin/curl".into(),
        "-sS".into(),
        "--noproxy".into(),
        "*".into(),
        "--resolve".into(),
        format!("{NAME}:{PORT}:{}", NETNS.ns_addr),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{time_starttransfer} %{time_total}\n".into(),
        url.into(),
    ]
}

fn measure(enforcer: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let policy = dir.join("stream.toml");
    std::fs::write(
        &policy,
        format!(
            "[[host]]\nname = \"{NAME}\"\nports = [{PORT}]\n  [[host.rule]]\n  method = \"GET\"\n  path = \"/sse\"\n  action = \"allow\"\n  cost = {{ fixed_usd = 0.01, response_cost_pointer = \"/usage/cost\" }}\n"
        ),
    )?;
    let url = format!("http://{NAME}:{PORT}/sse");
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let out = util::output(Command::new("/usr/bin/curl").args(&curl_args(&url)[1..]))?;
        direct.push(parse(&out)?);
        let out = util::output(
            Command::new(enforcer)
                .args(["launch", "--policy"])
                .arg(&policy)
                .args([
                    "--user",
                    "nobody",
                    "--resolver",
                    "127.0.0.1:1",
                    "--audit-db",
                ])
                .arg(dir.join("audit.db"))
                .arg("--resolve")
                .arg(format!("{NAME}={}", NETNS.ns_addr))
                .arg("--")
                .args(curl_args(&url)),
        )?;
        through.push(parse(&out)?);
    }
    let first = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0 * 1000.0).collect());
    let total = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1 * 1000.0).collect());
    println!("streamed response (SSE, 21 events over ~1 s), median of {ROUNDS}:");
    println!("| path | first byte (ms) | whole response (ms) |");
    println!("|---|---|---|");
    println!("| direct | {:.1} | {:.1} |", first(&direct), total(&direct));
    println!(
        "| enforcer, cost rule reading the response | {:.1} | {:.1} |",
        first(&through),
        total(&through)
    );
    println!(
        "first byte through enforcer / direct: {:.2} (ms added: {:.1}); whole response ratio {:.3}",
        first(&through) / first(&direct).max(0.001),
        first(&through) - first(&direct),
        total(&through) / total(&direct).max(0.001)
    );
    Ok(())
}
