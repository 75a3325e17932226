//! Serving the control socket inside the enforcer.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU32, atomic::Ordering},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{CapUse, Request, Response, Status};
use crate::{
    decision::{Cause, Decision, DecisionSink, Layer},
    secrets::{Access, Secrets},
};

/// What the control socket can see and do.
#[derive(Clone)]
pub struct ControlContext {
    pub run_id: String,
    pub name: String,
    pub secrets: Arc<Secrets>,
    pub sink: DecisionSink,
    pub agent_pid: Arc<AtomicU32>,
    /// The audit database, to mark the run revoked in it.
    pub audit_db: Option<std::path::PathBuf>,
    pub approvals: Arc<crate::approval::ApprovalHub>,
    /// The policy and spend state in force (a reload swaps them).
    pub rules: Arc<crate::run::live::LiveRules>,
}

/// The bound socket; removed on drop.
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (root-only: 0600).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener: Some(listener),
            path: path.to_path_buf(),
        })
    }

    /// Serves until the task is dropped.
    pub async fn serve(mut self, ctx: ControlContext) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move { handle(stream, ctx).await });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(stream: UnixStream, ctx: ControlContext) {
    let cred = stream.peer_cred().ok();
    let uid = cred.map_or(u32::MAX, |c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let response = if uid != 0 {
        // Only root can open this socket (0600, root's directory); anyone
        // else here got in some other way, and is treated as an attacker.
        let pid = cred
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let mut d = Decision::new(
            Layer::Control,
            Cause::ForgedApproval,
            format!(
                "the run's control socket was used by uid {uid}{}: only root may answer approvals or control a run",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
        );
        if let Some(p) = pid {
            d = d.process(p, comm_of(p));
        }
        ctx.sink.record(&d);
        Response::Error {
            message: String::from("only root may control a run"),
        }
    } else if tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_line(&mut line),
    )
    .await
    .is_err()
    {
        return;
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => respond(req, &ctx),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

fn usd(micros: i64) -> f64 {
    micros as f64 / crate::spend::MICROS_PER_USD as f64
}

fn respond(req: Request, ctx: &ControlContext) -> Response {
    match req {
        Request::Status => {
            let rules = ctx.rules.load();
            let spend = &rules.spend;
            let t = ctx.sink.tally();
            let pid = ctx.agent_pid.load(Ordering::SeqCst);
            Response::Status(Box::new(Status {
                run_id: ctx.run_id.clone(),
                name: ctx.name.clone(),
                enforcer_pid: std::process::id(),
                agent_pid: (pid != 0).then_some(pid),
                policy: rules.policy.source.display().to_string(),
                secrets: ctx.secrets.iter().map(|s| s.name.clone()).collect(),
                credentials: match ctx.secrets.access() {
                    Access::Live => "live",
                    Access::Expired => "expired",
                    Access::Revoked => "revoked",
                }
                .to_string(),
                ttl_left_secs: ctx.secrets.ttl_left().map(|d| d.as_secs()),
                allowed: t.counts.requests_allowed,
                denied: t.counts.refused(),
                asked: t.counts.requests_asked,
                spent_usd: usd(spend.ledger.run_spent()),
                caps: spend
                    .ledger
                    .snapshot()
                    .into_iter()
                    .filter(|a| a.cap_micros.is_some())
                    .map(|a| CapUse {
                        scope: a.scope,
                        cap_usd: a.cap_micros.map_or(0.0, usd),
                        spent_usd: usd(a.spent_micros),
                        in_flight_usd: usd(a.in_flight_micros),
                    })
                    .collect(),
                pending_approvals: ctx.approvals.pending().len(),
                unit: None,
                label: None,
                tripped: spend
                    .breaker
                    .as_ref()
                    .map(|b| {
                        b.tripped()
                            .into_iter()
                            .map(|k| {
                                format!("{} {} {} ({} calls)", k.key, k.method, k.path, k.count)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        }
        Request::Reset { key } => {
            let rules = ctx.rules.load();
            let Some(breaker) = rules.spend.breaker.as_ref() else {
                return Response::Error {
                    message: String::from("this run has no loop breaker (loop_breaker = false)"),
                };
            };
            let cleared = match key {
                Some(k) => usize::from(breaker.reset(&k)),
                None => breaker.reset_all(),
            };
            if cleared > 0 {
                ctx.sink.record(
                    &Decision::new(
                        Layer::Control,
                        Cause::Allowed,
                        format!("loop breaker reset by root ({cleared} call(s))"),
                    )
                    .host("run"),
                );
            }
            Response::Reset { cleared }
        }
        Request::Approvals => Response::Approvals {
            pending: ctx.approvals.pending(),
        },
        Request::Answer { id, answer, by } => match ctx.approvals.answer(id, answer, &by) {
            Ok(()) => Response::Answered { id },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Request::Revoke => {
            let first = ctx.secrets.revoke();
            if first && let Some(db) = ctx.audit_db.clone() {
                let run_id = ctx.run_id.clone();
                let at = ctx
                    .secrets
                    .revoked_at()
                    .unwrap_or_else(std::time::SystemTime::now);
                // A second connection: the run's writer keeps its own.
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = crate::audit::AuditStore::open(&db)
                        .and_then(|s| s.revoke_run(&run_id, "root", at))
                    {
                        tracing::warn!("cannot mark the run revoked in the audit log: {e}");
                    }
                });
            }
            if first {
                ctx.sink.record(
                    &Decision::new(
                        Layer::Control,
                        Cause::CredentialsRevoked,
                        "by root (enforcer revoke): placeholders no longer work",
                    )
                    .host("run"),
                );
            }
            Response::Revoked {
                run_id: ctx.run_id.clone(),
                already: !first,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::{
        approval::{ApprovalHub, ApproverMode},
        decision::LogMode,
        policy::Policy,
        spend::SpendControl,
    };

    /// Connects from a thread whose own credentials are `nobody`'s (when
    /// the tests run as root; otherwise they are already not root).
    fn connect_as_nobody(path: &Path) -> std::io::Result<String> {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            if nix::unistd::geteuid().is_root() {
                // SAFETY: raw setresuid changes this thread's credentials only.
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                assert_eq!(rc, 0, "setresuid");
            }
            let mut s = std::os::unix::net::UnixStream::connect(&path)?;
            // The server answers a peer that is not root without reading a
            // request (sending one would race its close into a reset).
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out)?;
            Ok(out)
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn anyone_but_root_at_the_control_socket_raises_a_forged_approval_alarm() {
        let dir = crate::audit::testutil::TempDir::new("control");
        let path = dir.path().join("control.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        // A hole that lets the agent's user reach the socket (what the
        // unix-socket supervisor used to be).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let policy = Policy::parse("", Path::new("p.toml")).unwrap();
        let secrets = Arc::new(Secrets::for_tests(&policy, &[]));
        let sink = DecisionSink::new("r1", LogMode::Quiet);
        let ctx = ControlContext {
            run_id: "r1".into(),
            name: "n".into(),
            secrets: Arc::clone(&secrets),
            sink: sink.clone(),
            agent_pid: Arc::new(AtomicU32::new(0)),
            audit_db: None,
            approvals: Arc::new(ApprovalHub::new(ApproverMode::None, Duration::from_secs(1))),
            rules: Arc::new(crate::run::live::LiveRules::new(
                Arc::new(Policy::parse("", Path::new("p.toml")).unwrap()),
                Arc::new(SpendControl::open(&policy, "r1", None).unwrap()),
            )),
        };
        let server = tokio::spawn(socket.serve(ctx));
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || connect_as_nobody(&p))
            .await
            .unwrap()
            .unwrap();
        server.abort();
        assert!(answer.contains("only root may control a run"), "{answer}");
        assert_eq!(secrets.access(), Access::Live, "nothing was done");
        assert_eq!(sink.tally().counts.forged_approvals, 1);
    }
}
