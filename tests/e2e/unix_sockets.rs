//! Unix sockets from inside `enforcer launch` (issue 11): a listed socket is
//! reached with the agent's own credentials and file-system view, "listed"
//! means the listed socket (not whatever a symlink the agent planted points
//! at), enforcer's own sockets are never reachable, unix datagrams go
//! nowhere, threads work, and one blocked connect stalls nobody else.
//!
//! Every server here is the test's own, under the test's scratch directory;
//! the agent runs as `nobody`.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            fs::PermissionsExt as _,
            net::{UnixDatagram, UnixListener},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use enforcer_e2e::{Launch, TestHost, files};

/// uid and gid of `nobody`, the agent.
fn nobody() -> (u32, u32) {
    let name = CString::new("nobody").expect("name");
    // SAFETY: getpwnam returns a pointer into static storage or null.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: non-null passwd entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A fresh directory in the scratch dir with this mode and owner.
fn dir(name: &str, mode: u32, owner: Option<(u32, u32)>) -> PathBuf {
    let d = files::write(name, "");
    std::fs::remove_file(&d).expect("rm placeholder");
    std::fs::create_dir(&d).expect("mkdir");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown");
    }
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// A directory the agent owns (mode 0755).
fn agent_dir(name: &str) -> PathBuf {
    dir(name, 0o755, Some(nobody()))
}

fn policy(sockets: &[String]) -> String {
    let list = sockets
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[run]\nname = \"unix\"\n\n[local]\nunix_sockets = [{list}]\n")
}

const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";

/// Who connected, as the server saw it.
#[derive(Debug, Clone)]
struct Peer {
    uid: u32,
    gid: u32,
    /// The peer pid's cgroup when it connected.
    cgroup: String,
}

/// A stream (or seqpacket) listener of the test's that answers each
/// connection with what SO_PEERCRED says about its peer.
struct Server {
    accepted: Arc<Mutex<Vec<Peer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: Option<PathBuf>,
}

impl Server {
    fn at(path: &Path, mode: u32) -> Self {
        let l = UnixListener::bind(path).expect("bind");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let mut s = Self::serve(OwnedFd::from(l));
        s.path = Some(path.to_path_buf());
        s
    }

    /// `@name`.
    fn abstract_name(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).expect("addr");
        let l = UnixListener::bind_addr(&addr).expect("bind abstract");
        Self::serve(OwnedFd::from(l))
    }

    /// A listener with the kernel's backlog set to `backlog` (0: the second
    /// pending connect blocks); it never accepts.
    fn never_accepting(path: &Path, ty: i32, backlog: i32) -> Self {
        let fd = raw_unix_socket(ty);
        bind_path(&fd, path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        // SAFETY: listen on our own socket.
        assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), backlog) }, 0);
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // Holds the listener until the test drops the server.
                let _fd = fd;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            })
        };
        Self {
            accepted: Arc::default(),
            stop,
            thread: Some(thread),
            path: Some(path.to_path_buf()),
        }
    }

    fn seqpacket_at(path: &Path) -> Self {
        let fd = raw_unix_socket(libc::SOCK_SEQPACKET);
        bind_path(&fd, path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        // SAFETY: listen on our own socket.
        assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 16) }, 0);
        let mut s = Self::serve(fd);
        s.path = Some(path.to_path_buf());
        s
    }

    fn serve(fd: OwnedFd) -> Self {
        // SAFETY: fcntl on our own fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let accepted: Arc<Mutex<Vec<Peer>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // SAFETY: accept on our own listener.
                    let c = unsafe {
                        libc::accept4(
                            fd.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    // SAFETY: accept4 returned a new fd we own.
                    let c = unsafe { OwnedFd::from_raw_fd(c) };
                    let cred = peer_cred(&c);
                    accepted.lock().expect("lock").push(Peer {
                        uid: cred.uid,
                        gid: cred.gid,
                        cgroup: std::fs::read_to_string(format!("/proc/{}/cgroup", cred.pid))
                            .unwrap_or_default(),
                    });
                    // The client's line first (closing before it arrives
                    // would fail its write), then the answer.
                    let tv = libc::timeval {
                        tv_sec: 2,
                        tv_usec: 0,
                    };
                    let mut buf = [0u8; 256];
                    // SAFETY: setsockopt with a timeval; recv into our buffer.
                    unsafe {
                        libc::setsockopt(
                            c.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_RCVTIMEO,
                            (&tv as *const libc::timeval).cast(),
                            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                        );
                        libc::recv(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                    }
                    let line = format!("uid={} gid={}\n", cred.uid, cred.gid);
                    // SAFETY: write on our own socket.
                    unsafe { libc::write(c.as_raw_fd(), line.as_ptr().cast(), line.len()) };
                }
            })
        };
        Self {
            accepted,
            stop,
            thread: Some(thread),
            path: None,
        }
    }

    fn accepted(&self) -> Vec<Peer> {
        self.accepted.lock().expect("lock").clone()
    }

    fn assert_untouched(&self, what: &str) {
        let got = self.accepted();
        assert!(
            got.is_empty(),
            "{what}: the server accepted {} connection(s), peer uids {:?}",
            got.len(),
            got.iter().map(|c| c.uid).collect::<Vec<_>>()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn raw_unix_socket(ty: i32) -> OwnedFd {
    // SAFETY: socket(2); we own the result.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn bind_path(fd: &OwnedFd, path: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < a.sun_path.len(), "path too long");
    for (i, b) in bytes.iter().enumerate() {
        a.sun_path[i] = *b as libc::c_char;
    }
    let len = (2 + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: bind with a valid sockaddr_un.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(
        rc,
        0,
        "bind {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn peer_cred(fd: &OwnedFd) -> libc::ucred {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    cred
}

/// A datagram receiver at a path or an abstract name; counts what arrives.
struct Receiver {
    sock: UnixDatagram,
    path: Option<PathBuf>,
}

impl Receiver {
    fn at(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).expect("bind dgram");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        sock.set_nonblocking(true).expect("nonblocking");
        Self {
            sock,
            path: Some(path.to_path_buf()),
        }
    }

    fn abstract_name(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).expect("addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract dgram");
        sock.set_nonblocking(true).expect("nonblocking");
        Self { sock, path: None }
    }

    fn received(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 256];
        while self.sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An abstract name no other test (of any process) binds.
fn unique_abstract(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("enforcer-e2e-{}-{n}-{tag}", std::process::id())
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// The agent's refusal must be in the run's log, naming the path.
fn assert_reported(stderr: &str, path: &str) {
    assert!(
        stderr.contains(&format!("unix:{path}")),
        "the refusal of {path} is not reported:\n{stderr}"
    );
}

// --- Hole 1: the agent's connect was performed with root's privileges. ---

#[test]
fn a_listed_path_symlinked_to_a_root_only_socket_reaches_nothing() {
    let secret_dir = dir("root-only", 0o700, None);
    let secret = secret_dir.join("secret.sock");
    let server = Server::at(&secret, 0o600);
    let mine = agent_dir("agent-owned");
    let listed = mine.join("app.sock");
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-plant-symlink", &s(&listed), &s(&secret), &s(&listed)],
    )
    .run();
    out.assert_clean();
    server.assert_untouched("symlink to a root-only socket");
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    assert_reported(&out.stderr, &s(&listed));
}

#[test]
fn a_parent_directory_swapped_for_a_symlink_reaches_nothing() {
    // The listed socket's parent is the agent's; it swaps that directory for
    // a symlink to another directory holding a socket that anyone may
    // connect to, but that the policy does not list.
    let mine = agent_dir("agent-tree");
    let sub = mine.join("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    std::os::unix::fs::chown(&sub, Some(nobody().0), Some(nobody().1)).expect("chown");
    let listed = sub.join("app.sock");
    let listed_server = Server::at(&listed, 0o666);
    let elsewhere = dir("unlisted", 0o755, None);
    let unlisted_server = Server::at(&elsewhere.join("app.sock"), 0o666);
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-swap-parent", &s(&sub), &s(&elsewhere), &s(&listed)],
    )
    .run();
    out.assert_clean();
    unlisted_server.assert_untouched("through a swapped parent directory");
    listed_server.assert_untouched("through a swapped parent directory");
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    assert_reported(&out.stderr, &s(&listed));
}

#[test]
fn the_runs_control_socket_is_unreachable_through_a_listed_symlink() {
    // With the control socket an agent could answer its own `ask` requests.
    let mine = agent_dir("agent-ctl");
    let listed = mine.join("ctl.sock");
    let control = "/run/enforcer/runs/{run}.sock";
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &[
            "unix-plant-symlink",
            &s(&listed),
            control,
            &s(&listed),
            r#"{"op":"status"}"#,
        ],
    )
    .run();
    out.assert_clean();
    assert!(
        !out.stdout.contains("run_id") && !out.stdout.contains("connected"),
        "the agent reached its run's control socket: {out:?}"
    );
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    assert_reported(&out.stderr, &s(&listed));
}

#[test]
fn listing_enforcers_own_sockets_is_refused_at_launch() {
    // Directly, and through a symlink root planted before the run.
    let link_dir = dir("link-to-runs", 0o755, None);
    let link = link_dir.join("runs");
    std::os::unix::fs::symlink("/run/enforcer/runs", &link).expect("symlink");
    for listed in [
        String::from("/run/enforcer/runs/some-run.sock"),
        s(&link.join("some-run.sock")),
    ] {
        let out = Launch::probe(&policy(std::slice::from_ref(&listed)), &["now"]).run();
        out.assert_clean();
        assert_eq!(out.code(), 2, "{listed}: {out:?}");
        assert!(
            out.stderr.contains("enforcer's own"),
            "{listed}: the error must say why: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("ok now"), "{listed}: the agent ran");
    }
}

/// A bind mount the test made; unmounted on drop.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_control_socket_appearing_at_a_listed_path_is_refused_at_connect() {
    // Whatever puts one of enforcer's own sockets at a listed path after the
    // run started (here root, with a bind mount), the connect refuses that
    // inode.
    let srv = dir("srv-own", 0o755, None);
    let listed = srv.join("app.sock");
    std::fs::write(&listed, "").expect("mount point");
    let go = srv.join("go");
    let running = Launch::probe(
        &policy(&[s(&listed)]),
        &[
            "unix-wait-then-talk",
            &s(&go),
            &s(&listed),
            r#"{"op":"status"}"#,
        ],
    )
    .spawn();
    let run_id = running.run_id();
    let control = format!("/run/enforcer/runs/{run_id}.sock");
    assert!(
        enforcer_e2e::leftovers::eventually(20, || Path::new(&control).exists()),
        "no control socket at {control}"
    );
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&control)
        .arg(&listed)
        .status()
        .expect("mount");
    assert!(status.success(), "bind mount");
    let mount = BindMount(listed.clone());
    std::fs::write(&go, "").expect("signal the agent");
    let out = running.wait(Duration::from_secs(30));
    drop(mount);
    out.assert_clean();
    assert!(
        !out.stdout.contains("run_id") && out.stdout.starts_with("err EPERM"),
        "{out:?}"
    );
    assert!(out.stderr.contains("enforcer's own"), "{}", out.stderr);
    assert_reported(&out.stderr, &s(&listed));
}

#[test]
fn the_server_sees_the_agents_uid_not_root() {
    let srv = dir("srv", 0o755, None);
    let listed = srv.join("app.sock");
    let server = Server::at(&listed, 0o666);
    let out = Launch::probe(&policy(&[s(&listed)]), &["unix-talk", &s(&listed)]).run();
    out.assert_clean();
    let (uid, gid) = nobody();
    assert!(
        out.stdout
            .starts_with(&format!("ok connected reply uid={uid} gid={gid}")),
        "{out:?}"
    );
    let got = server.accepted();
    assert_eq!(got.len(), 1, "{out:?}");
    assert_eq!((got[0].uid, got[0].gid), (uid, gid), "SO_PEERCRED");
    // The peer process is one of the run's (the connector, in the run's
    // cgroup), not enforcer (in the invoking user's session).
    let run_id = out.run_id.as_deref().expect("run id");
    assert!(
        got[0].cgroup.contains(&format!("/enforcer/{run_id}")),
        "the peer's cgroup: {}",
        got[0].cgroup
    );
}

#[test]
fn the_agent_cannot_take_over_the_connector() {
    // It shares the agent's uid; ptrace, its memory, environment and
    // descriptors must still be out of reach.
    let srv = dir("srv-takeover", 0o755, None);
    let listed = s(&srv.join("app.sock"));
    let out = Launch::probe(
        &policy(std::slice::from_ref(&listed)),
        &["unix-connector-takeover"],
    )
    .run();
    out.assert_clean();
    assert!(out.stdout.starts_with("ok untouched"), "{out:?}");
}

#[test]
fn a_killed_connector_fails_closed() {
    let srv = dir("srv-killed", 0o755, None);
    let listed = srv.join("app.sock");
    let server = Server::at(&listed, 0o666);
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-kill-connector", &s(&listed)],
    )
    .run();
    out.assert_clean();
    server.assert_untouched("after the connector was killed");
    if out.stdout.starts_with("err setup kill EPERM") {
        // Signals out of the agent's domain are refused (Landlock scoping):
        // the agent cannot kill the connector at all.
        return;
    }
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    assert!(out.stderr.contains("connector"), "{}", out.stderr);
}

#[test]
fn a_restarted_server_is_reached_at_its_new_inode() {
    // Listed paths are resolved at each connect, not pinned at start.
    let srv = dir("srv-restart", 0o755, None);
    let listed = srv.join("app.sock");
    let go = srv.join("restarted");
    let first = Server::at(&listed, 0o666);
    let running = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-talk-after", &s(&listed), &s(&go)],
    )
    .spawn();
    assert!(
        enforcer_e2e::leftovers::eventually(20, || !first.accepted().is_empty()),
        "the first connect never arrived"
    );
    drop(first);
    let second = Server::at(&listed, 0o666);
    std::fs::write(&go, "").expect("signal the agent");
    let out = running.wait(Duration::from_secs(30));
    out.assert_clean();
    assert!(
        out.stdout.starts_with("ok first connected reply uid=")
            && out.stdout.contains("second connected reply uid="),
        "{out:?}"
    );
    assert_eq!(second.accepted().len(), 1);
}

#[test]
fn tcp_still_works_through_the_connector_and_refusals_are_reported() {
    // Listing a unix socket makes every connect supervised, inet included.
    let host = TestHost::new();
    let srv = dir("srv-tcp", 0o755, None);
    let listed = s(&srv.join("app.sock"));
    let p = format!(
        "{}\n[[tcp]]\nhost = \"{}\"\nport = {}\n",
        policy(std::slice::from_ref(&listed)),
        host.v4,
        host.tcp_port
    );
    let target = host.tcp4().to_string();
    let out = Launch::probe(&p, &["tcp-echo", &target, "hello"]).run();
    out.assert_clean();
    assert_eq!(
        out.stdout.trim(),
        format!("ok peer {target} reply vendor-echo hello"),
        "{out:?}"
    );
    let local = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = local.local_addr().expect("addr").port();
    local.set_nonblocking(true).expect("nonblocking");
    let unlisted = format!("127.0.0.1:{port}");
    let out = Launch::probe(&p, &["tcp-peer", &unlisted]).run();
    out.assert_clean();
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    // The kernel's report names the process that called connect(): the
    // connector, on the agent's behalf.
    assert!(
        out.stderr
            .contains(&format!("refused kernel {unlisted} by agent-connect[")),
        "{}",
        out.stderr
    );
    assert!(
        local.accept().is_err(),
        "the unlisted loopback port was reached"
    );
}

#[test]
fn a_listed_socket_the_agent_may_not_use_is_refused_by_the_kernel() {
    // Listing a socket does not lend the agent enforcer's permissions:
    // a root-only socket, and a socket in a root-only directory.
    let open_dir = dir("srv-open", 0o755, None);
    let root_only_socket = open_dir.join("root.sock");
    let s1 = Server::at(&root_only_socket, 0o600);
    let closed_dir = dir("srv-closed", 0o700, None);
    let in_closed_dir = closed_dir.join("app.sock");
    let s2 = Server::at(&in_closed_dir, 0o666);
    for (listed, server) in [(&root_only_socket, &s1), (&in_closed_dir, &s2)] {
        let out = Launch::probe(&policy(&[s(listed)]), &["unix-talk", &s(listed)]).run();
        out.assert_clean();
        server.assert_untouched(&s(listed));
        assert!(out.stdout.starts_with("err EACCES"), "{listed:?}: {out:?}");
    }
}

#[test]
fn a_relative_path_from_the_agents_cwd_reaches_a_listed_socket() {
    let srv = dir("srv-rel", 0o755, None);
    let listed = srv.join("app.sock");
    let server = Server::at(&listed, 0o666);
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-talk-from", &s(&srv), "app.sock"],
    )
    .run();
    out.assert_clean();
    assert!(out.stdout.starts_with("ok connected reply uid="), "{out:?}");
    assert_eq!(server.accepted().len(), 1);
}

#[test]
fn abstract_sockets_match_by_exact_name_and_see_the_agents_uid() {
    let name = unique_abstract("abs");
    let server = Server::abstract_name(&name);
    let other_name = format!("{name}2");
    let other = Server::abstract_name(&other_name);
    let listed = format!("@{name}");
    let out = Launch::probe(
        &policy(std::slice::from_ref(&listed)),
        &["unix-talk", &listed],
    )
    .run();
    out.assert_clean();
    let (uid, _) = nobody();
    assert!(
        out.stdout
            .starts_with(&format!("ok connected reply uid={uid} ")),
        "{out:?}"
    );
    assert_eq!(server.accepted().len(), 1);
    let out = Launch::probe(
        &policy(std::slice::from_ref(&listed)),
        &["unix-talk", &format!("@{other_name}")],
    )
    .run();
    out.assert_clean();
    assert!(out.stdout.starts_with("err EPERM"), "{out:?}");
    other.assert_untouched("an unlisted abstract name");
    assert_reported(&out.stderr, &format!("@{other_name}"));
}

// --- Hole 5: unix datagrams got out. ---

fn datagram_targets() -> (Receiver, Receiver, String, String) {
    let d = dir("dgram", 0o755, None);
    let path = d.join("log.sock");
    let by_path = Receiver::at(&path);
    let name = unique_abstract("dgram");
    let by_name = Receiver::abstract_name(&name);
    (by_path, by_name, s(&path), format!("@{name}"))
}

#[test]
fn unix_datagrams_reach_nothing_when_no_socket_is_listed() {
    let (by_path, by_name, path, name) = datagram_targets();
    for target in [&path, &name] {
        for mode in ["sendto", "connect"] {
            let out = Launch::probe(DENY_ALL, &["unix-dgram-pair", mode, target]).run();
            out.assert_clean();
            assert!(
                out.stdout.starts_with("err EPERM"),
                "{mode} {target}: {out:?}"
            );
        }
    }
    assert_eq!(by_path.received(), 0, "a datagram reached {path}");
    assert_eq!(by_name.received(), 0, "a datagram reached {name}");
}

#[test]
fn unix_datagrams_reach_nothing_when_sockets_are_listed() {
    let (by_path, by_name, path, name) = datagram_targets();
    let srv = dir("srv-dgram", 0o755, None);
    let listed = s(&srv.join("app.sock"));
    let p = policy(std::slice::from_ref(&listed));
    for target in [&path, &name] {
        for args in [
            ["unix-dgram-pair", "sendto"],
            ["unix-dgram-pair", "connect"],
            ["unix-dgram-socket", "dgram"],
            // AF_UNIX SOCK_RAW is a datagram socket to the kernel.
            ["unix-dgram-socket", "raw"],
        ] {
            let out = Launch::probe(&p, &[args[0], args[1], target]).run();
            out.assert_clean();
            assert!(
                out.stdout.starts_with("err EPERM"),
                "{args:?} {target}: {out:?}"
            );
        }
    }
    assert_eq!(by_path.received(), 0, "a datagram reached {path}");
    assert_eq!(by_name.received(), 0, "a datagram reached {name}");
}

#[test]
fn stream_and_seqpacket_pairs_work_and_cannot_be_repointed() {
    let d = dir("pairs", 0o755, None);
    let stream_target = d.join("stream.sock");
    let stream_server = Server::at(&stream_target, 0o666);
    let seq_target = d.join("seq.sock");
    let seq_server = Server::seqpacket_at(&seq_target);
    let listed = s(&d.join("listed.sock"));
    for p in [String::from(DENY_ALL), policy(&[listed])] {
        // connect() is EISCONN from the kernel, or EPERM when enforcer
        // supervises it (the target is not listed).
        let out = Launch::probe(&p, &["unix-stream-pair", "stream", &s(&stream_target)]).run();
        out.assert_clean();
        assert!(
            out.stdout
                .starts_with("ok pair-works connect=EISCONN sendto=EISCONN")
                || out
                    .stdout
                    .starts_with("ok pair-works connect=EPERM sendto=EISCONN"),
            "{out:?}"
        );
        let out = Launch::probe(&p, &["unix-stream-pair", "seqpacket", &s(&seq_target)]).run();
        out.assert_clean();
        assert!(
            out.stdout
                .starts_with("ok pair-works connect=EISCONN sendto=went-to-the-pair")
                || out
                    .stdout
                    .starts_with("ok pair-works connect=EPERM sendto=went-to-the-pair"),
            "{out:?}"
        );
    }
    stream_server.assert_untouched("a stream pair");
    seq_server.assert_untouched("a seqpacket pair");
}

// --- Hole 8: threads could not connect. ---

#[test]
fn a_non_main_thread_reaches_a_listed_socket() {
    let srv = dir("srv-thread", 0o755, None);
    let listed = srv.join("app.sock");
    let server = Server::at(&listed, 0o666);
    let out = Launch::probe(&policy(&[s(&listed)]), &["unix-talk-thread", &s(&listed)]).run();
    out.assert_clean();
    assert!(out.stdout.starts_with("ok connected reply uid="), "{out:?}");
    assert_eq!(server.accepted().len(), 1);
}

#[test]
fn connects_complete_under_a_storm_of_signals() {
    // Go preempts goroutines with SIGURG. A signal must not withdraw a
    // connect the supervisor has started on (the retry would find the
    // socket already connected: EISCONN).
    let srv = dir("srv-signals", 0o755, None);
    let listed = srv.join("app.sock");
    let server = Server::at(&listed, 0o666);
    let out = Launch::probe(
        &policy(&[s(&listed)]),
        &["unix-signal-storm", &s(&listed), "300"],
    )
    .run();
    out.assert_clean();
    assert!(out.stdout.starts_with("ok 300 connected"), "{out:?}");
    drop(server);
}

// --- A blocked connect must not stall the run's supervisor. ---

#[test]
fn a_full_backlog_does_not_stall_other_connects() {
    let srv = dir("srv-backlog", 0o755, None);
    let full = srv.join("full.sock");
    let full_server = Server::never_accepting(&full, libc::SOCK_STREAM, 0);
    let other = srv.join("other.sock");
    let other_server = Server::at(&other, 0o666);
    let mut running = Launch::probe(
        &policy(&[s(&full), s(&other)]),
        &["unix-backlog", &s(&full), &s(&other)],
    )
    .spawn();
    let mut line = String::new();
    {
        use std::io::BufRead as _;
        let mut r = std::io::BufReader::new(running.take_stdout());
        let _ = r.read_line(&mut line);
    }
    // Closing the full listener wakes whatever still waits on it.
    drop(full_server);
    let out = running.wait(Duration::from_secs(30));
    out.assert_clean();
    assert!(
        line.starts_with("ok connected reply uid="),
        "{line} {out:?}"
    );
    assert_eq!(other_server.accepted().len(), 1);
}
