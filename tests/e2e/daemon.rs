//! `enforcer daemon` governing a slice of cgroups (made here by hand, as
//! systemd makes `agents.slice/<unit>.service`): each unit that starts
//! through `enforcer exec` is decided by its own policy; every other
//! process in the slice, a root unit, a unit with no mapping and a caller
//! outside the slice get nothing; while the daemon is down nothing gets out.

use enforcer_e2e::{
    TestHost,
    daemon::{Daemon, stderr, stdout},
    files, leftovers,
};

fn allow_tcp(host: &TestHost) -> String {
    format!(
        "[run]\nname = \"allowed\"\n[[tcp]]\nhost = \"{}\"\nport = {}\n",
        host.v4, host.tcp_port
    )
}

const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";

#[test]
fn each_unit_is_decided_by_its_own_policy() {
    let host = TestHost::new();
    let d = Daemon::start(&[
        ("a-*.service", &allow_tcp(&host)),
        ("b-*.service", DENY_ALL),
    ]);
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "hi"];
    let a = d.run_in(&d.unit("a-1.service"), Some("nobody"), true, &argv);
    assert!(
        stdout(&a).starts_with("ok peer") && stdout(&a).contains("vendor-echo hi"),
        "{a:?}"
    );
    let b = d.run_in(&d.unit("b-1.service"), Some("nobody"), true, &argv);
    assert!(stdout(&b).starts_with("err"), "{b:?}");
    assert_eq!(
        host.counters.snapshot().0,
        1,
        "only unit a's connection arrived"
    );
    // DNS of a unit is answered by enforcer, for its own policy.
    let dns = format!("{}:53", host.v4);
    let q = d.run_in(
        &d.unit("b-2.service"),
        Some("nobody"),
        true,
        &[
            probe.to_str().expect("utf-8"),
            "dns-udp",
            &dns,
            "vendor.test",
        ],
    );
    assert!(stdout(&q).starts_with("ok from"), "{q:?}");
    let log = {
        let mut d = d;
        d.stop()
    };
    assert!(log.contains("started for a-1.service"), "{log}");
    assert!(log.contains("started for b-1.service"), "{log}");
}

#[test]
fn nothing_in_the_slice_reaches_out_without_a_run_of_its_own() {
    let host = TestHost::new();
    let d = Daemon::start(&[("a-*.service", &allow_tcp(&host))]);
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let tcp = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let dns_target = format!("{}:53", host.v4);
    let dns = [
        probe.to_str().expect("utf-8"),
        "dns-udp",
        &dns_target,
        "vendor.test",
    ];
    // A process of a mapped unit that did not come through exec.
    for argv in [&tcp[..], &dns[..]] {
        let o = d.run_in(&d.unit("a-plain.service"), Some("nobody"), false, argv);
        assert!(stdout(&o).starts_with("err EPERM"), "{o:?}");
    }
    // A unit no [[unit]] entry maps.
    let o = d.run_in(&d.unit("other.service"), Some("nobody"), true, &tcp);
    assert!(
        stderr(&o).contains("no [[unit]] entry matches other.service"),
        "{o:?}"
    );
    assert_ne!(o.status.code(), Some(0));
    // A root unit.
    let o = d.run_in(&d.unit("a-root.service"), None, true, &tcp);
    assert!(stderr(&o).contains("must not run as root"), "{o:?}");
    // A cgroup below a unit's is not a unit, even named like one (a unit
    // with Delegate=yes can make it).
    let nested = d.unit("a-2.service").join("a-evil.service");
    std::fs::create_dir(&nested).expect("mkdir nested");
    let o = d.run_in(&nested, Some("nobody"), true, &tcp);
    assert!(stderr(&o).contains("is not a unit"), "{o:?}");
    let o = d.run_in(&nested, Some("nobody"), false, &tcp);
    assert!(stdout(&o).starts_with("err EPERM"), "{o:?}");
    std::fs::remove_dir(&nested).expect("rmdir nested");
    // A caller with uid 0 left in its real or saved uid, or with an
    // ambient capability, counts as root.
    let mut euid_only = vec![
        "setpriv",
        "--euid",
        "65534",
        "--egid",
        "65534",
        "--keep-groups",
        "--",
    ];
    let exec_line = [
        files::enforcer().to_str().expect("utf-8").to_string(),
        "exec".into(),
        "--socket".into(),
        d.socket.to_str().expect("utf-8").to_string(),
        "--".into(),
    ];
    euid_only.extend(exec_line.iter().map(String::as_str));
    euid_only.extend(tcp);
    let o = d.run_in(&d.unit("a-euid.service"), None, false, &euid_only);
    assert!(stderr(&o).contains("has uid 0"), "{o:?}");
    let mut ambient = vec![
        "setpriv",
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        "--clear-groups",
        "--inh-caps",
        "+net_admin",
        "--ambient-caps",
        "+net_admin",
        "--",
    ];
    ambient.extend(exec_line.iter().map(String::as_str));
    ambient.extend(tcp);
    let o = d.run_in(&d.unit("a-caps.service"), None, false, &ambient);
    assert!(stderr(&o).contains("holds capabilities"), "{o:?}");
    // A caller outside the slice asking for a run.
    let outside = leftovers::cgroup2_root().join(format!("enft-outside-{}", std::process::id()));
    std::fs::create_dir(&outside).expect("mkdir outside");
    let o = d.run_in(&outside, Some("nobody"), true, &tcp);
    let _ = std::fs::remove_dir(&outside);
    assert!(stderr(&o).contains("is not in the governed slice"), "{o:?}");
    // A run's agent cannot ask for another run: its seccomp filter refuses
    // unix sockets (the policy lists none), the daemon's included.
    let o = d.run_in(
        &d.unit("a-3.service"),
        Some("nobody"),
        true,
        &[
            files::enforcer().to_str().expect("utf-8"),
            "exec",
            "--socket",
            d.socket.to_str().expect("utf-8"),
            "--",
            "true",
        ],
    );
    assert!(
        stderr(&o).contains("cannot reach the enforcer daemon")
            && stderr(&o).contains("Function not implemented"),
        "{o:?}"
    );
    host.assert_untouched("nothing without a run");
}

#[test]
fn while_the_daemon_is_down_nothing_gets_out_and_units_start_again_after() {
    let host = TestHost::new();
    let mut d = Daemon::start(&[("a-*.service", &allow_tcp(&host))]);
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let unit = d.unit("a-1.service");
    let o = d.run_in(&unit, Some("nobody"), true, &argv);
    assert!(stdout(&o).starts_with("ok peer"), "{o:?}");
    let log = d.stop();
    assert!(log.contains("daemon governing"), "{log}");
    // Down: the programs stay attached with no run filed.
    let o = d.run_in(&unit, Some("nobody"), false, &argv);
    assert!(stdout(&o).starts_with("err EPERM"), "down: {o:?}");
    let o = d.run_in(&unit, Some("nobody"), true, &argv);
    assert!(
        stderr(&o).contains("cannot reach the enforcer daemon"),
        "{o:?}"
    );
    d.restart();
    let o = d.run_in(&unit, Some("nobody"), true, &argv);
    assert!(stdout(&o).starts_with("ok peer"), "after restart: {o:?}");
    assert_eq!(
        host.counters.snapshot().0,
        2,
        "the two runs' connections, no more"
    );
}

#[test]
fn cleanup_of_a_stopped_daemon_detaches_it_and_is_refused_while_it_runs() {
    let host = TestHost::new();
    let mut d = Daemon::start(&[("a-*.service", DENY_ALL)]);
    let slice = d.slice_name.clone();
    let refused = d.enforcer(&["cleanup", "--daemon", &slice]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stderr(&refused).contains("is running"),
        "{}",
        stderr(&refused)
    );
    d.stop();
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let unit = d.unit("a-1.service");
    let o = d.run_in(&unit, Some("nobody"), false, &argv);
    assert!(stdout(&o).starts_with("err EPERM"), "stopped: {o:?}");
    let done = d.enforcer(&["cleanup", "--daemon", &slice]);
    assert!(done.status.success(), "{done:?}");
    assert!(
        stderr(&done).contains("no longer governed"),
        "{}",
        stderr(&done)
    );
    // Uninstalled: the slice is the host's again.
    let o = d.run_in(&unit, Some("nobody"), false, &argv);
    assert!(stdout(&o).starts_with("ok peer"), "after cleanup: {o:?}");
    let again = d.enforcer(&["cleanup", "--daemon", &slice]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
}

#[test]
fn units_of_one_user_started_together_all_get_their_run() {
    // More than the daemon takes from one user at once (8): the others are
    // closed unanswered and `exec` asks again.
    let host = TestHost::new();
    let d = Daemon::start(&[("a-*.service", &allow_tcp(&host))]);
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let units: Vec<_> = (0..16).map(|i| d.unit(&format!("a-{i}.service"))).collect();
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .iter()
            .map(|u| s.spawn(|| d.run_in(u, Some("nobody"), true, &argv)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("unit"))
            .collect()
    });
    for o in &outs {
        assert!(stdout(o).starts_with("ok peer"), "{o:?}");
    }
    assert_eq!(host.counters.snapshot().0, 16);
}

#[test]
fn no_cleanup_but_the_daemons_own_detaches_a_running_daemon() {
    let host = TestHost::new();
    let mut d = Daemon::start(&[("a-*.service", DENY_ALL)]);
    let prefix = format!("daemon-{}-", d.slice_name.replace('.', "_d"));
    let pins = || {
        std::fs::read_dir("/sys/fs/bpf/enforcer")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };
    assert_eq!(pins(), 1, "the running daemon's pins");
    // The routine cleanup of launch's runs, by name and in bulk, and a
    // daemon cleanup of a slice whose name starts like ours.
    let ours = std::fs::read_dir("/sys/fs/bpf/enforcer")
        .expect("pins")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&prefix))
        .expect("our pins");
    let by_name = d.enforcer(&["cleanup", &ours]);
    assert_eq!(by_name.status.code(), Some(1), "{by_name:?}");
    let bulk = d.enforcer(&["cleanup"]);
    assert!(bulk.status.success(), "{bulk:?}");
    let shorter = d.slice_name.trim_end_matches(".slice");
    let shorter = &shorter[..shorter.rfind('-').expect("dash")];
    let other = d.enforcer(&["cleanup", "--daemon", shorter]);
    assert_eq!(other.status.code(), Some(1), "{other:?}");
    assert_eq!(pins(), 1, "a cleanup detached a running daemon");
    // Killed now, the slice still reaches nothing.
    if let Some(pid) = d.pid() {
        // SAFETY: kill(2) on the daemon we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    d.stop();
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let o = d.run_in(&d.unit("a-1.service"), Some("nobody"), false, &argv);
    assert!(stdout(&o).starts_with("err EPERM"), "after SIGKILL: {o:?}");
}

#[test]
fn units_of_one_user_cannot_read_or_signal_each_other() {
    let d = Daemon::start(&[("a-*.service", DENY_ALL)]);
    let pid_file = files::agent_writable("victim-pid");
    let pid_s = pid_file.to_str().expect("utf-8").to_string();
    let victim_unit = d.unit("a-victim.service");
    let attacker_unit = d.unit("a-attacker.service");
    std::thread::scope(|s| {
        let victim = s.spawn(|| {
            d.run_in(
                &victim_unit,
                Some("nobody"),
                true,
                &["/bin/sh", "-c", "echo $$ > \"$0\"; exec sleep 5", &pid_s],
            )
        });
        assert!(
            leftovers::eventually(10, || std::fs::read_to_string(&pid_file)
                .is_ok_and(|t| !t.trim().is_empty())),
            "the victim never started"
        );
        let probe = "p=$(cat \"$0\"); \
                     if cat /proc/$p/environ >/dev/null 2>&1; then echo read; else echo no-read; fi; \
                     if kill -0 $p 2>/dev/null; then echo signal; else echo no-signal; fi";
        let a = d.run_in(
            &attacker_unit,
            Some("nobody"),
            true,
            &["/bin/sh", "-c", probe, &pid_s],
        );
        assert_eq!(stdout(&a), "no-read\nno-signal", "{a:?}");
        let _ = std::fs::write(victim_unit.join("cgroup.kill"), "1");
        let _ = victim.join();
    });
}

#[test]
fn a_unit_restarted_at_once_gets_a_new_run() {
    let host = TestHost::new();
    let d = Daemon::start(&[("a-*.service", &allow_tcp(&host))]);
    let probe = files::probe();
    let target = host.tcp4().to_string();
    let argv = [probe.to_str().expect("utf-8"), "tcp-echo", &target, "x"];
    let unit = d.unit("a-1.service");
    // Faster than the reaper (every 0.5 s) notices the cgroup empty.
    for i in 0..5 {
        let o = d.run_in(&unit, Some("nobody"), true, &argv);
        assert!(stdout(&o).starts_with("ok peer"), "start {i}: {o:?}");
    }
}

#[test]
fn the_runs_of_a_killed_daemon_are_recorded_as_over_when_it_starts_again() {
    let mut d = Daemon::start(&[("a-*.service", DENY_ALL)]);
    let unit = d.unit("a-1.service");
    let db = files::audit_db();
    let run_of_unit = || -> Option<(String, Option<String>)> {
        let c = rusqlite::Connection::open(&db).ok()?;
        c.query_row(
            "SELECT id, revoked_by FROM runs WHERE cgroup = ?1",
            [unit.to_str().expect("utf-8")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
    };
    std::thread::scope(|s| {
        let agent = s.spawn(|| d.run_in(&unit, Some("nobody"), true, &["sleep", "30"]));
        assert!(
            leftovers::eventually(20, || run_of_unit().is_some()),
            "the unit's run never started"
        );
        if let Some(pid) = d.pid() {
            // SAFETY: kill(2) on the daemon we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = std::fs::write(unit.join("cgroup.kill"), "1");
        let _ = agent.join();
    });
    d.stop();
    assert_eq!(run_of_unit().and_then(|r| r.1), None, "not over yet");
    d.restart();
    let by = run_of_unit().and_then(|r| r.1).unwrap_or_default();
    assert!(by.contains("daemon restart"), "{by:?}");
}
