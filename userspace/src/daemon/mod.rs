//! `enforcer daemon`: one process that governs every agent unit in a
//! systemd slice. Its programs are attached once to the slice's cgroup; each
//! unit that starts through `enforcer exec` gets a run of its own (see
//! `crate::run`), decided by the policy its unit name maps to. A cgroup in
//! the slice without a run reaches nothing.

pub mod client;
pub mod config;
pub mod exec;
pub mod notify;
pub mod peer;
pub mod protocol;
pub mod reload;
pub mod requests;
pub mod unit_run;

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::UnixListener, sync::Mutex};

use self::{config::DaemonConfig, unit_run::UnitRun};
use crate::{
    audit::AuditWriter,
    decision::LogMode,
    kernel::{Enforcement, bpffs, cgroup, events::KernelEvent, loader::LoadError},
    policy::PolicyError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] PolicyError),
    #[error("enforcer daemon must run as root (it attaches kernel programs)")]
    NotRoot,
    #[error(
        "the slice's cgroup {0} does not exist (start the slice first: systemctl start agents.slice)"
    )]
    NoSlice(PathBuf),
    #[error("refused: {0}")]
    Refused(String),
    #[error("another enforcer daemon already governs {0} (lock {1})")]
    AlreadyRunning(String, String),
    #[error("another enforcer daemon listens on {0}")]
    SocketInUse(String),
    #[error(
        "unprivileged users may bind ports from {0} up (net.ipv4.ip_unprivileged_port_start): \
         the daemon needs ports below it for its listeners, which no one else may take over \
         while it is down; set it to 1024"
    )]
    NoPrivilegedPorts(u16),
    #[error(
        "the slice's cgroup {0} was removed or made again: the programs no longer cover it; \
         the daemon stops so that it is started again on the new one"
    )]
    SliceReplaced(PathBuf),
    #[error(
        "no bpffs is mounted at /sys/fs/bpf and the daemon runs in a mount namespace of its own \
         (a sandboxed service): a bpffs it mounted would vanish with it, taking the pins that \
         keep the slice closed while it is down; mount one on the host first (the shipped \
         enforcer.service requires enforcer-bpffs.service, which does)"
    )]
    PrivateBpffs,
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    #[error(transparent)]
    Peer(#[from] peer::PeerError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Resolve(#[from] crate::dns::ResolveError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Spend(#[from] crate::spend::SpendError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    Webhook(crate::approval::webhook::WebhookError),
    #[error("cannot bind a run's listeners: {0}")]
    Listeners(#[source] std::io::Error),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { context, source }
}

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub resolve: Vec<String>,
    pub upstream_ca: Vec<PathBuf>,
    pub upstream_timeout: Duration,
    pub approval_timeout: Duration,
    pub log_json: bool,
    /// Where the daemon's socket is bound.
    pub socket: PathBuf,
}

/// What every unit's run is started with.
pub struct Shared {
    /// The configuration in force (a reload swaps it).
    pub config: arc_swap::ArcSwap<DaemonConfig>,
    /// Where it is read from again on reload.
    pub config_path: PathBuf,
    /// The governed cgroup, relative to the cgroup2 root (fixed for the
    /// daemon's life).
    pub slice: PathBuf,
    pub cgroup_root: PathBuf,
    /// The id of the slice cgroup the programs are attached to.
    pub slice_id: u64,
    /// Where each run's listeners are bound: privileged ports only.
    pub ports: std::ops::Range<u16>,
    /// Raised when the slice's cgroup is no longer the one governed.
    pub slice_gone: tokio::sync::Notify,
    /// Requests being answered, per uid (a user cannot hold them all).
    pub asking: std::sync::Mutex<HashMap<u32, usize>>,
    pub enforcement: Enforcement,
    pub audit: Option<AuditWriter>,
    pub audit_db: Option<PathBuf>,
    pub resolve: Vec<String>,
    pub upstream_dns: Vec<SocketAddr>,
    pub upstream_tls: rustls::ClientConfig,
    pub upstream_timeout: Duration,
    pub approval_timeout: Duration,
    /// Where notices of waiting approvals go (a reload may change it).
    pub webhook: Arc<arc_swap::ArcSwapOption<crate::approval::webhook::Webhook>>,
    pub log_mode: LogMode,
}

/// Live runs by cgroup id.
pub(crate) type Runs = Arc<Mutex<HashMap<u64, UnitRun>>>;

/// The same runs, for the kernel's refusal reports (read without waiting
/// on a run that is starting).
pub(crate) type Directory = Arc<std::sync::RwLock<HashMap<u64, Arc<crate::run::Run>>>>;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let config = DaemonConfig::load(&opts.config)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    if !bpffs::is_bpffs(Path::new(bpffs::BPFFS_ROOT)) && private_mount_namespace() {
        return Err(DaemonError::PrivateBpffs);
    }
    let cgroup_root = cgroup::cgroup2_mount()?;
    let slice_dir = cgroup_root.join(&config.slice);
    let slice =
        std::fs::File::open(&slice_dir).map_err(|_| DaemonError::NoSlice(slice_dir.clone()))?;
    let slice_id = slice
        .metadata()
        .map(|m| m.ino())
        .map_err(|_| DaemonError::NoSlice(slice_dir.clone()))?;
    let ports = privileged_ports()?;
    let _lock = lock_slice(&config.slice)?;
    // Each run's control socket goes here (on a fresh host nothing made it).
    std::fs::create_dir_all(crate::runs::RUNS_DIR)
        .map_err(io_err("cannot create the runs' directory"))?;
    let forgotten = crate::cleanup::forget_dead_daemon_runs();
    if std::os::unix::net::UnixStream::connect(&opts.socket).is_ok() {
        return Err(DaemonError::SocketInUse(opts.socket.display().to_string()));
    }
    let upstream_dns = crate::dns::config::upstreams(&[]).unwrap_or_default();
    let upstream_tls =
        crate::tls::upstream::client_config(crate::tls::upstream::root_store(&opts.upstream_ca)?)?;
    // Every run is audited: a daemon whose log cannot be written does not start.
    let audit_db = Some(config.audit_db.clone());
    let store = crate::audit::AuditStore::open(&config.audit_db)?;
    // The runs of a daemon that was killed are over: the audit log says so.
    let now = std::time::SystemTime::now();
    for id in forgotten {
        let recorded = store
            .revoke_run(
                &id,
                "enforcer daemon restart (the daemon that served it was killed)",
                now,
            )
            .unwrap_or(false);
        crate::say!(
            Info,
            "enforcer: run {id} of a daemon that is gone is over{} (its unit gets a new run when it restarts)",
            if recorded {
                ", recorded as revoked in the audit log"
            } else {
                ""
            }
        );
    }
    let store = Some(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("enforcer-daemon")
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    let bpf_root = bpffs::ensure_mounted()?;
    let pin_prefix = pin_prefix(&config.slice);
    let pin_name = format!("{pin_prefix}{}", crate::runid::new_run_id());
    let pins = bpffs::PinDir::create(&bpf_root, &pin_name)?;
    // Attached before an older daemon's programs are removed: in between,
    // both refuse everything in the slice (neither has a run for it).
    let mut enforcement = Enforcement::attach(std::os::fd::AsFd::as_fd(&slice), pins)?;
    remove_older_daemons(&bpf_root, &pin_prefix, &pin_name);
    let ring = enforcement.take_events()?;
    let webhook = webhook_for(&config, &upstream_tls)?;
    let shared = Arc::new(Shared {
        webhook: Arc::new(arc_swap::ArcSwapOption::new(webhook)),
        slice: config.slice.clone(),
        config: arc_swap::ArcSwap::from_pointee(config),
        config_path: opts.config.clone(),
        cgroup_root,
        slice_id,
        ports,
        slice_gone: tokio::sync::Notify::new(),
        asking: std::sync::Mutex::default(),
        enforcement,
        audit: store.map(crate::audit::AuditStore::writer),
        audit_db,
        resolve: opts.resolve.clone(),
        upstream_dns,
        upstream_tls,
        upstream_timeout: opts.upstream_timeout,
        approval_timeout: opts.approval_timeout,
        log_mode: if opts.log_json {
            LogMode::Json
        } else {
            LogMode::Human { verbose: false }
        },
    });
    let served = runtime.block_on(serve(Arc::clone(&shared), ring, &opts.socket));
    runtime.shutdown_timeout(Duration::from_millis(200));
    // Programs and maps stay attached and pinned with no run filed: while
    // no daemon runs, the slice reaches nothing.
    match Arc::try_unwrap(shared) {
        Ok(s) => s.enforcement.keep_pinned(),
        Err(_) => tracing::warn!("daemon state still shared at exit; pins stay"),
    }
    served
}

/// Whether this process has a mount namespace other than PID 1's (as a
/// service with ProtectSystem=, PrivateTmp= and the like has); unknown
/// counts as private.
fn private_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    match (ns("self"), ns("1")) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// The approval webhook `config` names, trusting what upstreams are
/// trusted with.
pub fn webhook_for(
    config: &DaemonConfig,
    tls: &rustls::ClientConfig,
) -> Result<Option<Arc<crate::approval::webhook::Webhook>>, DaemonError> {
    config
        .webhook
        .as_deref()
        .map(|url| crate::approval::webhook::Webhook::new(url, tls.clone()).map(Arc::new))
        .transpose()
        .map_err(DaemonError::Webhook)
}

/// Ports below `net.ipv4.ip_unprivileged_port_start` (from 600): only
/// root binds them, so while the daemon is down no one can listen where
/// the kernel still sends the slice's connections.
fn privileged_ports() -> Result<std::ops::Range<u16>, DaemonError> {
    const LOWEST: u16 = 600;
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    if start <= LOWEST + 100 {
        return Err(DaemonError::NoPrivilegedPorts(start));
    }
    Ok(LOWEST..start.min(1024))
}

/// One daemon per slice: an exclusive lock held for the daemon's life.
fn lock_slice(slice: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let dir = Path::new("/run/enforcer");
    std::fs::create_dir_all(dir).map_err(io_err("cannot create /run/enforcer"))?;
    let path = dir.join(format!("{}lock", pin_prefix(slice)));
    let file = std::fs::File::create(&path).map_err(io_err("cannot create the daemon's lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        DaemonError::AlreadyRunning(slice.display().to_string(), path.display().to_string())
    })
}

/// The start of the pin directory names of daemons governing `slice`:
/// one name per slice (bpffs refuses dots in names, so they are escaped,
/// and so is the escape character).
pub fn pin_prefix(slice: &Path) -> String {
    let mut flat = String::new();
    for c in slice.to_string_lossy().chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' => flat.push(c),
            '_' => flat.push_str("__"),
            '.' => flat.push_str("_d"),
            '/' => flat.push_str("_s"),
            other => flat.push_str(&format!("_x{:x}_", u32::from(other))),
        }
    }
    format!("daemon-{flat}-")
}

/// Whether the pin directory `name` is a daemon's of the slice whose
/// [`pin_prefix`] is `prefix`: the prefix, then exactly a run id (so that
/// slice `a` never claims slice `a-b`'s pins).
pub fn is_pin_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(crate::runid::is_generated)
}

/// Unpins the programs of earlier daemons of the same slice (this one's
/// are attached).
fn remove_older_daemons(bpf_root: &Path, prefix: &str, ours: &str) {
    let parent = bpf_root.join(bpffs::PINS_DIR);
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_pin_of(&name, prefix)
            && name != ours
            && let Err(e) = bpffs::remove_pins(&entry.path())
        {
            crate::say!(
                Warn,
                "enforcer: cannot remove an earlier daemon's pins {name}: {e}"
            );
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    socket: &Path,
) -> Result<(), DaemonError> {
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create the socket's directory"))?;
    }
    let listener = UnixListener::bind(socket).map_err(io_err("cannot bind the daemon socket"))?;
    // Anyone may ask; the kernel says who asked.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err("cannot open the daemon socket to units"))?;
    let runs: Runs = Arc::default();
    let directory: Directory = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(route_events(ring, Arc::clone(&directory)));
    tasks.spawn(reap(
        Arc::clone(&shared),
        Arc::clone(&runs),
        Arc::clone(&directory),
    ));
    crate::say!(
        Info,
        "enforcer: daemon governing {} ({} unit mapping(s)), socket {}",
        shared.slice.display(),
        shared.config.load().units.len(),
        socket.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io_err("cannot install signal handlers"))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(io_err("cannot install signal handlers"))?;
    // Programs attached, socket listening: a Type=notify service is up.
    // A manager that asked to be told and cannot be is an error: it would
    // kill the service at its start timeout anyway.
    let mut failure = notify::ready(&status_line(&shared))
        .err()
        .map(DaemonError::from);
    if let Some(e) = &failure {
        crate::say!(Error, "enforcer: {e}");
    }
    while failure.is_none() {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    let runs = Arc::clone(&runs);
                    let directory = Arc::clone(&directory);
                    tokio::spawn(async move { requests::answer(stream, shared, runs, directory).await });
                }
                Err(e) => {
                    tracing::warn!("accept on the daemon socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = hup.recv() => {
                // The outcome is logged; `enforcer reload` also gets it back.
                let _ = reload_and_tell(&shared, &runs, &directory).await;
            }
            _ = shared.slice_gone.notified() => {
                let e = DaemonError::SliceReplaced(shared.cgroup_root.join(&shared.slice));
                crate::say!(Error, "enforcer: {e}");
                failure = Some(e);
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tasks.abort_all();
    let _ = std::fs::remove_file(socket);
    let live: Vec<UnitRun> = runs.lock().await.drain().map(|(_, r)| r).collect();
    for r in live {
        crate::say!(
            Warn,
            "enforcer: daemon stopping: run {} of {} revoked; its unit reaches nothing until it restarts",
            r.run.id,
            r.unit
        );
        unit_run::end(&shared, r, -1).await;
    }
    failure.map_or(Ok(()), Err)
}

/// A reload (SIGHUP or `enforcer reload`), then the status line systemd
/// shows, which names the mappings now in force.
pub(crate) async fn reload_and_tell(
    shared: &Shared,
    runs: &Runs,
    directory: &Directory,
) -> protocol::ReloadReply {
    let reply = reload::reload(shared, runs, directory).await;
    if let Err(e) = notify::status(&status_line(shared)) {
        tracing::warn!("{e}");
    }
    reply
}

/// What `systemctl status` shows for the daemon (sd_notify STATUS=).
fn status_line(shared: &Shared) -> String {
    format!(
        "governing {} ({} unit mapping(s))",
        shared.slice.display(),
        shared.config.load().units.len()
    )
}

/// Routes each kernel refusal to the run of the cgroup it came from; a
/// refusal in a cgroup without a run is the daemon's to report.
async fn route_events(ring: aya::maps::RingBuf<aya::maps::MapData>, directory: Directory) {
    let mut quiet = Quieter::default();
    let record = move |e: KernelEvent| {
        let run = directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&e.cgroup)
            .cloned();
        if let Some(run) = run {
            (run.kernel_recorder())(e);
            return;
        }
        let Some(also) = quiet.admit(e.cgroup) else {
            return;
        };
        let also = if also > 0 {
            format!(" (and {also} more refusals in this cgroup in the last second)")
        } else {
            String::new()
        };
        crate::say!(
            Warn,
            "enforcer: refused in a cgroup without a run (id {}): pid {} ({}) {}{also}",
            e.cgroup,
            e.pid,
            crate::approval::printable(&e.comm),
            e.destination()
        );
    };
    if let Err(e) = crate::kernel::events::pump(ring, record).await {
        tracing::warn!("reading kernel refusal reports failed: {e}");
    }
}

/// At most one log line per second for each cgroup without a run (one
/// process can be refused a million times a second; the log must keep the
/// daemon's other lines).
#[derive(Default)]
struct Quieter {
    /// cgroup id -> (start of its second, refusals not logged in it).
    seen: HashMap<u64, (std::time::Instant, u64)>,
}

impl Quieter {
    /// `Some(n)`: log this one, saying `n` more were not logged.
    fn admit(&mut self, cgroup: u64) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.seen.len() > 4096 {
            self.seen
                .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        match self.seen.get_mut(&cgroup) {
            Some((start, skipped)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *skipped += 1;
                None
            }
            Some((start, skipped)) => {
                let n = *skipped;
                *start = now;
                *skipped = 0;
                Some(n)
            }
            None => {
                self.seen.insert(cgroup, (now, 0));
                Some(0)
            }
        }
    }
}

/// Ends the runs whose unit's cgroup is empty or gone.
async fn reap(shared: Arc<Shared>, runs: Runs, directory: Directory) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slice_now = std::fs::metadata(shared.cgroup_root.join(&shared.slice)).map(|m| m.ino());
        if slice_now.ok() != Some(shared.slice_id) {
            shared.slice_gone.notify_one();
            return;
        }
        let ended: Vec<UnitRun> = {
            let mut live = runs.lock().await;
            let gone: Vec<u64> = live
                .iter()
                .filter(|(_, r)| !populated(&shared.cgroup_root.join(&r.cgroup)))
                .map(|(id, _)| *id)
                .collect();
            let mut dir = directory.write().unwrap_or_else(|e| e.into_inner());
            for id in &gone {
                dir.remove(id);
            }
            gone.into_iter().filter_map(|id| live.remove(&id)).collect()
        };
        for r in ended {
            unit_run::end(&shared, r, 0).await;
        }
    }
}

fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_cgroup_gets_one_log_line_a_second() {
        let mut q = Quieter::default();
        assert_eq!(q.admit(7), Some(0));
        for _ in 0..1000 {
            assert_eq!(q.admit(7), None);
        }
        assert_eq!(q.admit(8), Some(0), "other cgroups are not silenced");
        q.seen.get_mut(&7).expect("seen").0 -= Duration::from_secs(2);
        assert_eq!(q.admit(7), Some(1000));
    }

    #[test]
    fn a_slice_claims_its_own_pins_only() {
        let a = pin_prefix(Path::new("enft-atk"));
        let b = pin_prefix(Path::new("enft-atk-13.slice"));
        let b_pins = format!("{b}20261130-115720-aa8cde");
        assert!(is_pin_of(&b_pins, &b));
        assert!(!is_pin_of(&b_pins, &a), "{a} claimed {b_pins}");
        assert!(!is_pin_of("20261130-115720-aa8cde", &a));
        assert!(!is_pin_of(&format!("{a}x"), &a));
    }
}
