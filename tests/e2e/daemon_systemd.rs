//! `enforcer daemon` under a real systemd: a Debian root booted with
//! systemd-nspawn (see `enforcer_e2e::nspawn`), the shipped
//! `enforcer.service` and `agents.slice` installed where the package puts
//! them and started by that systemd, and agent units started with
//! `systemd-run --slice=agents.slice`. The container's only network is a
//! veth to the test host made for it.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use enforcer_e2e::{
    TestHost, deb, files, leftovers,
    nspawn::{Boot, Container},
    vendor::Vendor,
};

/// What the booted root has besides systemd (one cached root for every
/// test here): curl, to speak HTTPS as an agent.
const ROOT_PACKAGES: &[&str] = &["curl", "ca-certificates"];

/// The shipped unit files, installed as the package installs them.
const SHIPPED: &[&str] = &["enforcer.service", "agents.slice", "enforcer-bpffs.service"];

fn dist_systemd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd")
}

/// A booted container with the built enforcer and probe bound in, the
/// shipped units installed, and a test host it can reach.
struct World {
    host: TestHost,
    ct: Container,
    started: Instant,
}

impl World {
    fn new() -> Self {
        let w = Self::boot(true);
        for unit in SHIPPED {
            let text = std::fs::read_to_string(dist_systemd().join(unit)).expect("shipped unit");
            w.ct.write(&format!("/usr/lib/systemd/system/{unit}"), &text);
        }
        w.ct.ok("systemctl daemon-reload");
        w
    }

    /// Booted with the built enforcer bound in (or not, to install the
    /// package) and the probe.
    fn boot(bind_enforcer: bool) -> Self {
        Self::boot_with(bind_enforcer, ROOT_PACKAGES)
    }

    /// The same, the root with `packages` besides systemd.
    fn boot_with(bind_enforcer: bool, packages: &[&str]) -> Self {
        let started = Instant::now();
        let mut binds = vec![(files::probe(), PROBE.to_string())];
        if bind_enforcer {
            binds.push((files::enforcer(), "/usr/bin/enforcer".into()));
        }
        let ct = Container::boot(Boot {
            binds,
            packages,
            ..Boot::default()
        });
        eprintln!("container {} booted in {:?}", ct.name, ct.booted_in);
        let host = TestHost::new_for(&ct.netns);
        Self { host, ct, started }
    }

    /// Writes `/etc/enforcer/enforcer.toml` mapping each (unit name
    /// pattern, policy file name, policy TOML) of `units`.
    fn map(&self, units: &[(&str, &str, &str)]) {
        let mut config = String::from("slice = \"agents.slice\"\n");
        for (pattern, file, policy) in units {
            self.ct.write(&format!("/etc/enforcer/{file}"), policy);
            config.push_str(&format!(
                "[[unit]]\nmatch = \"{pattern}\"\npolicy = \"{file}\"\n"
            ));
        }
        self.ct.write("/etc/enforcer/enforcer.toml", &config);
    }

    /// `systemctl start enforcer`: returns once systemd saw READY=1.
    fn start_daemon(&self) {
        let o = self.ct.sh("systemctl start enforcer.service");
        assert!(
            o.status.success(),
            "systemctl start enforcer: {}\n{}\n{}",
            stderr(&o),
            self.ct.journal("enforcer.service"),
            stdout(&self.ct.sh("journalctl -b --no-pager -o cat | tail -n 30"))
        );
        assert_eq!(
            self.ct.property("enforcer.service", "ActiveState"),
            "active"
        );
    }

    /// Runs `argv` as a transient unit (`systemd-run --pipe --wait`) and
    /// returns its output; `props` are `-p` properties.
    fn unit(&self, name: &str, slice: &str, props: &[&str], argv: &[&str]) -> Output {
        let mut script = format!("systemd-run --quiet --pipe --wait --unit={name} --slice={slice}");
        for p in props {
            script.push_str(&format!(" -p {}", quoted(p)));
        }
        for a in argv {
            script.push(' ');
            script.push_str(&quoted(a));
        }
        self.ct.sh(&script)
    }

    /// The same through `enforcer exec` as a dynamic user, in agents.slice.
    fn agent(&self, name: &str, argv: &[&str]) -> Output {
        let mut full = vec!["/usr/bin/enforcer", "exec", "--"];
        full.extend_from_slice(argv);
        self.unit(name, "agents.slice", &["DynamicUser=yes"], &full)
    }

    /// The runs in the container's audit log, by the unit they belonged to.
    fn audited_run(&self, unit: &str) -> serde_json::Value {
        let runs = self.ct.ok("enforcer audit runs --format jsonl");
        runs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| {
                r["cgroup"]
                    .as_str()
                    .is_some_and(|c| c.ends_with(&format!("/{unit}")))
            })
            .unwrap_or_else(|| panic!("no run of {unit} in the audit log: {runs}"))
    }

    fn tcp(&self) -> String {
        self.host.tcp4().to_string()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        eprintln!("test ran {:?} in its container", self.started.elapsed());
    }
}

/// `s` as one word for /bin/sh.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn allow_tcp(host: &TestHost) -> String {
    format!(
        "[run]\nname = \"allowed\"\n[[tcp]]\nhost = \"{}\"\nport = {}\n",
        host.v4, host.tcp_port
    )
}

const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";

const PROBE: &str = "/usr/bin/enforcer-probe";

#[test]
fn the_shipped_service_is_active_once_ready_and_each_unit_gets_its_own_policy() {
    let w = World::new();
    w.map(&[
        ("a-*.service", "a.toml", &allow_tcp(&w.host)),
        ("b-*.service", "b.toml", DENY_ALL),
    ]);
    // Before the daemon is asked to start, the slice is not governed.
    assert_eq!(w.ct.property("enforcer.service", "ActiveState"), "inactive");
    w.start_daemon();
    // Type=notify: systemd took the daemon's READY=1 and its status line.
    assert_eq!(
        w.ct.property("enforcer.service", "StatusText"),
        "governing agents.slice (2 unit mapping(s))"
    );
    w.ct.ok("test -S /run/enforcer/daemon.sock");
    // Two units at once, each holding its run while the other connects.
    let target = w.tcp();
    let script =
        format!("{PROBE} tcp-echo {target} first; sleep 1; {PROBE} tcp-echo {target} second");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| w.agent("a-1", &["/bin/sh", "-c", &script]));
        let b = s.spawn(|| w.agent("b-1", &["/bin/sh", "-c", &script]));
        (a.join().expect("a"), b.join().expect("b"))
    });
    let a_out = stdout(&a);
    assert!(
        a_out.contains("vendor-echo first") && a_out.contains("vendor-echo second"),
        "unit a (allowed): {a:?}"
    );
    let b_out = stdout(&b);
    assert!(
        b_out.lines().count() == 2 && b_out.lines().all(|l| l.starts_with("err")),
        "unit b (deny-all): {b:?}"
    );
    assert_eq!(
        w.host.counters.snapshot().0,
        2,
        "unit a's two connections arrived, none of b's"
    );
    let log = w.ct.journal("enforcer.service");
    assert!(
        log.contains("started for a-1.service") && log.contains("policy /etc/enforcer/a.toml"),
        "{log}"
    );
    assert!(
        log.contains("started for b-1.service") && log.contains("policy /etc/enforcer/b.toml"),
        "{log}"
    );
    // The audit log: one run per unit, each under its own policy and
    // dynamic user, with its own decisions.
    let a = w.audited_run("a-1.service");
    let b = w.audited_run("b-1.service");
    assert_eq!(a["policy_path"], "/etc/enforcer/a.toml", "{a}");
    assert_eq!(b["policy_path"], "/etc/enforcer/b.toml", "{b}");
    assert_ne!(a["uid"], b["uid"], "a user per unit: {a} {b}");
    assert_eq!(
        (a["allowed"].as_u64(), a["denied"].as_u64()),
        (Some(2), Some(0)),
        "{a}"
    );
    assert_eq!(b["allowed"].as_u64(), Some(0), "{b}");
    assert!(b["denied"].as_u64() >= Some(2), "{b}");
    // The runs end with their units.
    assert!(
        leftovers::eventually(5, || {
            let log = w.ct.journal("enforcer.service");
            log.matches("ended").count() >= 2
        }),
        "{}",
        w.ct.journal("enforcer.service")
    );
}

#[test]
fn units_without_a_run_of_their_own_reach_nothing() {
    let w = World::new();
    w.map(&[("a-*.service", "a.toml", &allow_tcp(&w.host))]);
    w.start_daemon();
    let target = w.tcp();
    let dns_target = format!("{}:53", w.host.v4);
    let tcp = [PROBE, "tcp-echo", target.as_str(), "x"];
    let dns = [PROBE, "dns-udp", dns_target.as_str(), "vendor.test"];
    // Started after the daemon, not through exec: refused in the kernel
    // from its first connect, TCP and DNS alike, as a dynamic user or root.
    for (n, argv) in [&tcp[..], &dns[..]].iter().enumerate() {
        let o = w.unit(
            &format!("a-plain-{n}"),
            "agents.slice",
            &["DynamicUser=yes"],
            argv,
        );
        assert!(stdout(&o).starts_with("err EPERM"), "plain unit: {o:?}");
        let o = w.unit(&format!("a-root-plain-{n}"), "agents.slice", &[], argv);
        assert!(
            stdout(&o).starts_with("err EPERM"),
            "plain root unit: {o:?}"
        );
    }
    // A unit no [[unit]] entry maps.
    let o = w.agent("other", &tcp);
    assert!(
        stderr(&o).contains("no [[unit]] entry matches other.service"),
        "{o:?}"
    );
    assert_ne!(o.status.code(), Some(0));
    // A root unit through exec.
    let mut root_exec = vec!["/usr/bin/enforcer", "exec", "--"];
    root_exec.extend_from_slice(&tcp);
    let o = w.unit("a-root", "agents.slice", &[], &root_exec);
    assert!(stderr(&o).contains("must not run as root"), "{o:?}");
    // exec from a unit outside the slice.
    let o = w.unit("a-outside", "other.slice", &["DynamicUser=yes"], &root_exec);
    assert!(
        stderr(&o).contains("is not in the governed slice agents.slice"),
        "{o:?}"
    );
    w.host.assert_untouched("units without a run");
    let log = w.ct.journal("enforcer.service");
    assert!(log.contains("refused in a cgroup without a run"), "{log}");
}

#[test]
fn after_a_sigkill_nothing_gets_out_until_a_unit_starts_again_on_the_new_daemon() {
    let w = World::new();
    w.map(&[("a-*.service", "a.toml", &allow_tcp(&w.host))]);
    w.start_daemon();
    let target = w.tcp();
    // Load: a unit connecting in a loop, in the background.
    let looping = format!("while :; do {PROBE} tcp-echo {target} load; sleep 0.05; done");
    w.ct.ok(&format!(
        "systemd-run --quiet --unit=a-load --slice=agents.slice -p DynamicUser=yes \
         /usr/bin/enforcer exec -- /bin/sh -c '{looping}'"
    ));
    assert!(
        leftovers::eventually(10, || w.host.counters.snapshot().0 >= 5),
        "the loaded unit gets through: {}",
        w.ct.journal("a-load.service")
    );
    let first_pid = w.ct.property("enforcer.service", "MainPID");
    w.ct.ok("systemctl kill -s KILL enforcer.service");
    // Down, and kept down (no automatic restart) while we look.
    assert!(
        leftovers::eventually(5, || w.ct.property("enforcer.service", "MainPID")
            != first_pid),
        "the daemon died"
    );
    w.ct.ok("systemctl stop enforcer.service");
    let at_kill = w.host.counters.snapshot().0;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        w.host.counters.snapshot().0,
        at_kill,
        "nothing got out while the daemon was down"
    );
    let o = w.agent("a-down", &[PROBE, "tcp-echo", &target, "x"]);
    assert!(
        stderr(&o).contains("cannot reach the enforcer daemon"),
        "{o:?}"
    );
    let o = w.unit(
        "a-down-plain",
        "agents.slice",
        &["DynamicUser=yes"],
        &[PROBE, "tcp-echo", &target, "x"],
    );
    assert!(stdout(&o).starts_with("err EPERM"), "{o:?}");
    // Back: the looping unit's run is over (it gets nothing until it
    // restarts), a unit that starts now gets a run.
    w.start_daemon();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        w.host.counters.snapshot().0,
        at_kill,
        "the crashed daemon's runs stay over after the restart"
    );
    assert!(
        w.ct.journal("a-load.service").contains("err EPERM"),
        "{}",
        w.ct.journal("a-load.service")
    );
    let o = w.agent("a-after", &[PROBE, "tcp-echo", &target, "after"]);
    assert!(stdout(&o).contains("vendor-echo after"), "{o:?}");
    // Restart= in the shipped unit: a second SIGKILL is followed by a
    // restart on its own.
    let second_pid = w.ct.property("enforcer.service", "MainPID");
    w.ct.ok("systemctl kill -s KILL enforcer.service");
    assert!(
        leftovers::eventually(15, || {
            let pid = w.ct.property("enforcer.service", "MainPID");
            pid != "0"
                && pid != second_pid
                && w.ct.property("enforcer.service", "ActiveState") == "active"
        }),
        "restarted by systemd: {}",
        w.ct.journal("enforcer.service")
    );
    let o = w.agent("a-restarted", &[PROBE, "tcp-echo", &target, "again"]);
    assert!(stdout(&o).contains("vendor-echo again"), "{o:?}");
    w.ct.ok("systemctl stop a-load.service");
}

#[test]
fn a_sandboxed_daemon_without_the_hosts_bpffs_refuses_to_start() {
    let w = World::new();
    w.map(&[("a-*.service", "a.toml", DENY_ALL)]);
    // The shipped unit requires enforcer-bpffs.service; a service made without
    // it, sandboxed (a mount namespace of its own), would mount bpffs
    // there, and its pins would die with it: the slice would open while
    // it is down.
    w.ct.ok("systemctl start agents.slice");
    let o = w.unit(
        "enforcer-private",
        "system.slice",
        // RuntimeMaxSec: a daemon that did start is stopped (and fails this).
        &[
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "RuntimeDirectory=enforcer",
            "RuntimeMaxSec=10",
        ],
        &["/usr/bin/enforcer", "daemon"],
    );
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("no bpffs is mounted at /sys/fs/bpf")
            && stderr(&o).contains("enforcer-bpffs.service"),
        "{o:?}"
    );
    assert!(!w.ct.sh("mountpoint -q /sys/fs/bpf").status.success());
    // Through the shipped unit, the host's bpffs is mounted first.
    w.start_daemon();
    w.ct.ok("mountpoint -q /sys/fs/bpf");
    assert_eq!(w.ct.property("enforcer-bpffs.service", "Result"), "success");
}

/// The README's walkthrough for a real host, as a user types it: install
/// the package, enable the service, map a unit to a policy, add the unit
/// from the shipped example, start it, watch it, read its audit rows.
#[test]
fn the_package_installs_and_its_units_govern_an_agent_on_a_real_systemd() {
    let package = deb::build();
    let w = World::boot(false);
    std::fs::copy(&package, w.ct.root().join("root/enforcer.deb")).expect("copy the package in");
    w.ct.ok("dpkg -i /root/enforcer.deb");
    w.ct.ok("systemctl enable --now enforcer.service");
    assert_eq!(w.ct.property("enforcer.service", "ActiveState"), "active");
    assert_eq!(w.ct.property("agents.slice", "ActiveState"), "active");
    assert_eq!(
        w.ct.property("enforcer.service", "StatusText"),
        "governing agents.slice (1 unit mapping(s))"
    );
    // As shipped, every unit that asks gets a run that allows nothing.
    let target = w.tcp();
    let o = w.agent("any-agent", &[PROBE, "tcp-echo", &target, "x"]);
    assert!(stdout(&o).starts_with("err"), "{o:?}");
    w.host
        .assert_untouched("the shipped configuration allows nothing");
    // Map billing-*.service to a policy, ahead of the catch-all.
    let config = w.ct.root().join("etc/enforcer/enforcer.toml");
    let shipped = std::fs::read_to_string(&config).expect("the shipped enforcer.toml");
    let catch_all = "[[unit]]\nmatch = \"*\"";
    assert!(shipped.contains(catch_all), "{shipped}");
    let mapped = shipped.replace(
        catch_all,
        &format!(
            "[[unit]]\nmatch = \"billing-*.service\"\npolicy = \"billing.toml\"\n\n{catch_all}"
        ),
    );
    std::fs::write(&config, mapped).expect("edit enforcer.toml");
    let main_pid = w.ct.property("enforcer.service", "MainPID");
    // A mistake first: the reload fails, saying why, and nothing changes.
    w.ct.write(
        "/etc/enforcer/billing.toml",
        "[run]\nname = \"billing\"\nttl = \"soon\"\n",
    );
    let o = w.ct.sh("systemctl reload enforcer.service");
    assert!(!o.status.success(), "{o:?}");
    assert!(
        w.ct.journal("enforcer.service").contains("billing.toml"),
        "the reason, in the journal: {}",
        w.ct.journal("enforcer.service")
    );
    assert_eq!(w.ct.property("enforcer.service", "ActiveState"), "active");
    assert_eq!(w.ct.property("enforcer.service", "MainPID"), main_pid);
    assert_eq!(
        w.ct.property("enforcer.service", "StatusText"),
        "governing agents.slice (1 unit mapping(s))"
    );
    w.ct.write("/etc/enforcer/billing.toml", &allow_tcp(&w.host));
    w.ct.ok(
        "enforcer policy check /etc/enforcer/billing.toml && systemctl reload enforcer.service",
    );
    // ExecReload= (SIGHUP): the same daemon, with the new mapping; its
    // status line says so.
    assert_eq!(w.ct.property("enforcer.service", "MainPID"), main_pid);
    assert!(
        leftovers::eventually(5, || w.ct.property("enforcer.service", "StatusText")
            == "governing agents.slice (2 unit mapping(s))"),
        "{}",
        w.ct.journal("enforcer.service")
    );
    // The unit, from the shipped example, running an agent that connects
    // once and stays.
    w.ct.write(
        "/usr/local/bin/billing-agent",
        &format!("#!/bin/sh\n{PROBE} tcp-echo {target} billing\nexec sleep 600\n"),
    );
    w.ct.ok("chmod 755 /usr/local/bin/billing-agent \
         && sed 's|/usr/bin/python3 /opt/agent/agent.py|/usr/local/bin/billing-agent|' \
         /usr/share/doc/enforcer/examples/systemd/billing-agent.service.example \
         > /etc/systemd/system/billing-agent.service && systemctl daemon-reload \
         && systemctl start billing-agent.service");
    assert!(
        leftovers::eventually(10, || w
            .ct
            .journal("billing-agent.service")
            .contains("vendor-echo billing")),
        "{}\n{}",
        w.ct.journal("billing-agent.service"),
        w.ct.journal("enforcer.service")
    );
    // Watch it, revoke it by its unit's name.
    let status = w.ct.ok("enforcer status");
    assert!(
        status.contains("billing-agent.service") && status.contains("billing/nightly"),
        "{status}"
    );
    let revoked = w.ct.ok("enforcer revoke billing-agent");
    assert!(!revoked.trim().is_empty(), "{revoked}");
    let log = w.ct.journal("enforcer.service");
    assert!(
        log.contains("started for billing-agent.service")
            && log.contains("policy /etc/enforcer/billing.toml"),
        "{log}"
    );
    let runs = w.ct.ok("enforcer audit runs --format jsonl");
    let run = runs
        .lines()
        .find(|l| l.contains("billing.toml") || l.contains("allowed"))
        .unwrap_or_else(|| panic!("the billing run in the audit log: {runs}"));
    let run: serde_json::Value = serde_json::from_str(run).expect("jsonl");
    let run_id = run["run_id"].as_str().expect("run_id").to_string();
    let events = w.ct.ok(&format!(
        "enforcer audit events --run {run_id} --format jsonl"
    ));
    assert!(
        events.contains("allow") && events.contains(&w.host.v4.to_string()),
        "{events}"
    );
    assert!(
        run["revoked_at"].is_string(),
        "revoked in the audit log: {run}"
    );
    assert_eq!(
        w.host.counters.snapshot().0,
        1,
        "the billing agent's connection, no other"
    );
    w.ct.ok("systemctl stop billing-agent.service");
    // Uninstall: stopped, the daemon leaves the slice closed on purpose...
    w.ct.ok("systemctl disable --now enforcer.service");
    let o = w.unit(
        "after-stop",
        "agents.slice",
        &["DynamicUser=yes"],
        &[PROBE, "tcp-echo", &target, "x"],
    );
    assert!(stdout(&o).starts_with("err EPERM"), "{o:?}");
    // ...until its programs are removed, then the package.
    w.ct.ok("enforcer cleanup --daemon agents.slice && dpkg -r enforcer");
    assert_eq!(
        w.ct.ok("ls -A /sys/fs/bpf/enforcer 2>/dev/null || true")
            .trim(),
        "",
        "pins left"
    );
    let o = w.unit(
        "after-uninstall",
        "agents.slice",
        &["DynamicUser=yes"],
        &[PROBE, "tcp-echo", &target, "gone"],
    );
    assert!(
        stdout(&o).contains("vendor-echo gone"),
        "unconfined again: {o:?}"
    );
}

/// `LoadCredential=` on enforcer.service, read by a policy as
/// `from = "credential:NAME"`: the real key reaches the vendor, on the
/// agent's requests, and appears nowhere the agent unit can read.
#[test]
fn a_systemd_credential_of_the_service_reaches_the_vendor_and_never_the_agent() {
    const REAL: &str = "sk_live_SYSTEMDCRED0123456789abcdefABCDEF";
    let w = World::boot(true);
    for unit in SHIPPED {
        let text = std::fs::read_to_string(dist_systemd().join(unit)).expect("shipped unit");
        w.ct.write(&format!("/usr/lib/systemd/system/{unit}"), &text);
    }
    let vendor = Vendor::start(&w.host);
    w.ct.write(
        "/etc/enforcer/vendor-ca.pem",
        &std::fs::read_to_string(&vendor.ca_file).expect("vendor CA"),
    );
    w.ct.write("/etc/enforcer/keys/vendor", &format!("{REAL}\n"));
    w.ct.ok("chmod 700 /etc/enforcer/keys && chmod 600 /etc/enforcer/keys/vendor");
    // The shipped unit's commented example, made real; and, for the test
    // network only, the fake vendor's address and CA.
    w.ct.write(
        "/etc/systemd/system/enforcer.service.d/test.conf",
        &format!(
            "[Service]\nLoadCredential=vendor:/etc/enforcer/keys/vendor\nExecStart=\n\
             ExecStart=/usr/bin/enforcer daemon --config /etc/enforcer/enforcer.toml \
             --upstream-ca /etc/enforcer/vendor-ca.pem --resolve api.vendor.test={}\n",
            w.host.v4
        ),
    );
    w.map(&[(
        "a-*.service",
        "vendor.toml",
        "[[secret]]\nname = \"VENDOR_KEY\"\nfrom = \"credential:vendor\"\n\
         hosts = [\"api.vendor.test\"]\nheader = \"Authorization\"\nformat = \"Bearer {}\"\n\n\
         [[host]]\nname = \"api.vendor.test\"\n  [[host.rule]]\n  method = \"GET\"\n\
           path = \"/v1/**\"\n  action = \"allow\"\n",
    )]);
    w.ct.ok("systemctl daemon-reload");
    w.start_daemon();
    let script = "echo \"dir=${CREDENTIALS_DIRECTORY:-unset}\"; \
                  echo \"key=$VENDOR_KEY\"; \
                  curl -sS -m 20 -o /dev/null -w \"%{http_code}\\n\" \
                  -H \"Authorization: Bearer $VENDOR_KEY\" https://api.vendor.test/v1/cred; \
                  cat /etc/enforcer/keys/vendor /run/credentials/enforcer.service/vendor 2>&1";
    let o = w.agent("a-cred", &["/bin/sh", "-c", script]);
    let out = stdout(&o);
    assert!(out.contains("dir=unset"), "{o:?}");
    // Neither the key file nor the service's credentials are readable.
    assert_eq!(out.matches("Permission denied").count(), 2, "{o:?}");
    assert!(
        out.lines().any(|l| l == "200"),
        "{o:?}\n{}",
        w.ct.journal("enforcer.service")
    );
    assert!(
        !out.contains(REAL) && !stderr(&o).contains(REAL),
        "the agent saw the key: {o:?}"
    );
    let key_line = out
        .lines()
        .find(|l| l.starts_with("key="))
        .unwrap_or_default();
    assert!(key_line.len() > "key=".len(), "a placeholder: {o:?}");
    let seen: Vec<_> = vendor
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/cred")
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL}").as_str())
    );
}

/// The shipped example unit has `Requires=enforcer.service`: when systemd
/// restarts the daemon after a crash, it restarts the agent too, which so
/// gets a new run and its network back (with `BindsTo=` it would stay
/// stopped; with no dependency it would stay without a run).
#[test]
fn an_agent_unit_as_shipped_gets_a_new_run_when_the_daemon_restarts_after_a_crash() {
    let w = World::new();
    w.map(&[("billing-*.service", "billing.toml", &allow_tcp(&w.host))]);
    w.start_daemon();
    let target = w.tcp();
    w.ct.write(
        "/usr/local/bin/billing-agent",
        &format!("#!/bin/sh\nwhile :; do {PROBE} tcp-echo {target} n; sleep 0.2; done\n"),
    );
    let example = std::fs::read_to_string(dist_systemd().join("billing-agent.service.example"))
        .expect("the shipped example unit");
    w.ct.write(
        "/etc/systemd/system/billing-agent.service",
        &example.replace(
            "/usr/bin/python3 /opt/agent/agent.py",
            "/usr/local/bin/billing-agent",
        ),
    );
    w.ct.ok(
        "chmod 755 /usr/local/bin/billing-agent && systemctl daemon-reload \
         && systemctl start billing-agent.service",
    );
    assert!(
        leftovers::eventually(10, || w.host.counters.snapshot().0 >= 2),
        "{}",
        w.ct.journal("billing-agent.service")
    );
    let agent_before = w.ct.property("billing-agent.service", "InvocationID");
    w.ct.ok("systemctl kill -s KILL enforcer.service");
    assert!(
        leftovers::eventually(20, || {
            w.ct.property("enforcer.service", "NRestarts") == "1"
                && w.ct.property("enforcer.service", "ActiveState") == "active"
                && w.ct.property("billing-agent.service", "ActiveState") == "active"
                && w.ct.property("billing-agent.service", "InvocationID") != agent_before
        }),
        "{}\n{}",
        w.ct.journal("enforcer.service"),
        w.ct.journal("billing-agent.service")
    );
    let resumed_from = w.host.counters.snapshot().0;
    assert!(
        leftovers::eventually(10, || w.host.counters.snapshot().0 > resumed_from),
        "the restarted agent reaches its host again: {}",
        w.ct.journal("billing-agent.service")
    );
    let log = w.ct.journal("enforcer.service");
    assert_eq!(
        log.matches("started for billing-agent.service").count(),
        2,
        "a run before the crash and a new one after: {log}"
    );
    w.ct.ok("systemctl stop billing-agent.service");
}
