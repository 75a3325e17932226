//! Answering the daemon's socket: who asks (from the kernel), how many of
//! one user's requests are in hand at once, and what each request gets: a
//! run for the caller's own unit (`enforcer exec`) or a reload (root).

use std::{os::unix::fs::MetadataExt as _, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{
    Directory, Runs, Shared, peer,
    protocol::{self, ExecReply, Request},
    reload, unit_run,
};

/// How many requests one uid may have in the daemon's hands at once, and
/// how long one may take to arrive.
const ASKING_PER_UID: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A uid's place among the requests being answered; freed on drop.
struct Asking<'a> {
    shared: &'a Shared,
    uid: u32,
}

impl<'a> Asking<'a> {
    fn take(shared: &'a Shared, uid: u32) -> Option<Self> {
        let mut asking = shared.asking.lock().unwrap_or_else(|e| e.into_inner());
        let n = asking.entry(uid).or_default();
        if *n >= ASKING_PER_UID {
            return None;
        }
        *n += 1;
        Some(Self { shared, uid })
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut asking = self.shared.asking.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = asking.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                asking.remove(&self.uid);
            }
        }
    }
}

/// One `enforcer exec` request.
pub async fn answer(stream: UnixStream, shared: Arc<Shared>, runs: Runs, directory: Directory) {
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(_) => return,
    };
    let who = peer::identify(&std_stream);
    let Ok(stream) = UnixStream::from_std(std_stream) else {
        return;
    };
    let uid = who.as_ref().map_or(u32::MAX, |p| p.uid);
    let Some(_slot) = Asking::take(&shared, uid) else {
        // Too many at once from this user: closed unanswered.
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let reply = match read.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Exec { label }) => match who {
                Ok(p) => Reply::Exec(start_for(&shared, &runs, &directory, p, label).await),
                Err(e) => Reply::Exec(refused(e.to_string())),
            },
            Ok(Request::Reload) => Reply::Reload(match who {
                Ok(p) if p.uid == 0 => super::reload_and_tell(&shared, &runs, &directory).await,
                _ => reload::refused("only root may reload the daemon"),
            }),
            Err(e) => Reply::Exec(refused(format!("not a request: {e}"))),
        },
        Err(e) => Reply::Exec(refused(format!("cannot read the request: {e}"))),
    };
    let mut text = match reply {
        Reply::Exec(r) => serde_json::to_string(&r),
        Reply::Reload(r) => serde_json::to_string(&r),
    }
    .unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// What goes back on the daemon's socket.
enum Reply {
    Exec(ExecReply),
    Reload(protocol::ReloadReply),
}

fn refused(reason: String) -> ExecReply {
    // The reason may quote what the caller sent: never raw in the log.
    crate::say!(
        Warn,
        "enforcer: exec refused: {}",
        crate::approval::printable(&reason)
    );
    ExecReply::Refused { reason }
}

async fn start_for(
    shared: &Shared,
    runs: &Runs,
    directory: &Directory,
    p: peer::Peer,
    label: Option<String>,
) -> ExecReply {
    if let Some(why) = p.privilege.rootlike() {
        return refused(format!(
            "process {} {why}: agent units must not run as root or with capabilities (they could \
             detach the programs or leave the slice); set User= or DynamicUser=yes and no \
             AmbientCapabilities=",
            p.pid
        ));
    }
    // The programs cover the cgroup they were attached to; a slice removed
    // and made again is another cgroup, which nothing covers.
    let slice_now = std::fs::metadata(shared.cgroup_root.join(&shared.slice)).map(|m| m.ino());
    if slice_now.ok() != Some(shared.slice_id) {
        crate::say!(
            Error,
            "enforcer: the slice {} was removed or made again: its processes are not covered; \
             restart the daemon",
            shared.slice.display()
        );
        return refused(format!(
            "the slice {} is not the one the daemon governs (it was made again)",
            shared.slice.display()
        ));
    }
    let unit = match peer::unit_of(&p.cgroup, &shared.slice) {
        Ok(u) => u,
        Err(e) => return refused(e.to_string()),
    };
    let cgroup_dir = shared.cgroup_root.join(&p.cgroup);
    let cgroup_id = match std::fs::metadata(&cgroup_dir) {
        Ok(m) => m.ino(),
        Err(e) => return refused(format!("cannot read the cgroup of {unit}: {e}")),
    };
    let label = match label.as_deref().map(str::parse).transpose() {
        Ok(l) => l.or_else(|| peer::invocation_id(&cgroup_dir)),
        Err(e) => return refused(format!("--label: {e}")),
    };
    let mut live = runs.lock().await;
    if let Some(r) = live.get(&cgroup_id) {
        if !r.agent_exited() {
            return refused(format!("{unit} already has run {}", r.run.id));
        }
        // Restarted before the reaper saw the cgroup empty: the old run is
        // over.
        directory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cgroup_id);
        if let Some(old) = live.remove(&cgroup_id) {
            unit_run::end(shared, old, 0).await;
        }
    }
    match unit_run::start(shared, &p, &unit, cgroup_id, label).await {
        Ok((r, started)) => {
            crate::say!(
                Info,
                "enforcer: run {} started for {unit} (uid {}), policy {}",
                started.run_id,
                p.uid,
                r.run.policy().source.display()
            );
            directory
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cgroup_id, Arc::clone(&r.run));
            live.insert(cgroup_id, r);
            ExecReply::Started(started)
        }
        Err(e) => refused(format!("{unit}: {e}")),
    }
}
