//! A test host with the fake vendor on it, and launches set up to reach it:
//! enforcer resolves the vendor's names to the test host (`--resolve`) and
//! trusts the vendor's CA upstream (`--upstream-ca`).

use crate::{
    Launch, Outcome, TestHost,
    vendor::{NAMES, Vendor},
};

pub struct VendorWorld {
    pub host: TestHost,
    pub vendor: Vendor,
}

impl VendorWorld {
    pub fn new() -> Self {
        let host = TestHost::new();
        let vendor = Vendor::start(&host);
        Self { host, vendor }
    }

    /// `enforcer daemon` arguments with which its runs reach the vendor.
    pub fn daemon_args(&self) -> Vec<String> {
        let mut args = vec![
            String::from("--upstream-ca"),
            self.vendor.ca_file.display().to_string(),
        ];
        for name in NAMES {
            args.push(String::from("--resolve"));
            args.push(format!("{name}={}", self.host.v4));
        }
        args
    }

    /// A launch of `command` under `policy` that can reach the vendor.
    pub fn launch(&self, policy: &str, command: &[&str]) -> Launch {
        let mut l = Launch::new(policy, command)
            .flag("--upstream-ca")
            .flag(&self.vendor.ca_file);
        for name in NAMES {
            l = l.flag("--resolve").flag(format!("{name}={}", self.host.v4));
        }
        l
    }

    /// curl with `args` under `policy`; `transparent` ignores the proxy
    /// variables and resolves the vendor's names itself. Each transfer ends
    /// with a line `@@ <code> <http version> <connects>`.
    pub fn curl(&self, policy: &str, transparent: bool, args: &[&str]) -> Outcome {
        let mut cmd: Vec<String> = vec![
            "/usr/bin/curl".into(),
            "-sS".into(),
            "-m".into(),
            "20".into(),
        ];
        if transparent {
            cmd.push("--noproxy".into());
            cmd.push("*".into());
            for name in NAMES {
                for port in [443, 80] {
                    cmd.push("--resolve".into());
                    cmd.push(format!("{name}:{port}:{}", self.host.v4));
                }
            }
        }
        cmd.push("-w".into());
        cmd.push("\n@@ %{http_code} %{http_version} %{num_connects}\n".into());
        cmd.extend(args.iter().map(|s| s.to_string()));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = self.launch(policy, &cmd).run();
        out.assert_clean();
        out
    }
}

impl Default for VendorWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// The status codes of the `@@` lines curl printed, one per transfer.
pub fn statuses(out: &Outcome) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@@ "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}
