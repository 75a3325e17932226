//! The client side of the daemon's socket: one request line, one reply
//! line (`enforcer exec`, `enforcer reload`).

use std::{path::Path, time::Duration};

use serde::de::DeserializeOwned;

use super::protocol::{ReloadReply, Request};
use crate::jsonline::LineError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the enforcer daemon at {path}: {source} (is enforcer.service running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the enforcer daemon failed: {0}")]
    Protocol(String),
    /// The daemon closed the connection without an answer: it has as many
    /// requests of this user in hand as it takes at once.
    #[error("the enforcer daemon is busy with this user's other requests")]
    Busy,
    #[error("reload refused, the configuration in force stays: {0}")]
    ReloadRefused(String),
}

/// Sends `req` to the daemon at `socket` and reads its reply. `wait` bounds
/// the wait for the reply (`None`: as long as it takes).
pub fn call<R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    wait: Option<Duration>,
) -> Result<R, ClientError> {
    crate::jsonline::exchange(socket, req, wait).map_err(|e| match e {
        LineError::Connect(source) => ClientError::Connect {
            path: socket.display().to_string(),
            source,
        },
        // Closed unanswered: the daemon has as many of this user's
        // requests in hand as it takes at once.
        LineError::Closed => ClientError::Busy,
        other => ClientError::Protocol(other.to_string()),
    })
}

/// `enforcer reload`: asks the daemon to read its configuration again and
/// prints what happened to each live run.
pub fn reload(socket: &Path, json: bool) -> Result<(), ClientError> {
    let reply: ReloadReply = call(socket, &Request::Reload, Some(Duration::from_secs(60)))?;
    if json {
        crate::outln!("{}", serde_json::to_string(&reply).unwrap_or_default());
    }
    match reply {
        ReloadReply::Reloaded { units, runs } => {
            if !json {
                crate::outln!(
                    "reloaded: {units} unit mapping(s) in force, {} live run(s)",
                    runs.len()
                );
                for r in runs {
                    crate::outln!(
                        "  {} ({}): {}",
                        r.unit,
                        r.run_id,
                        r.policy.as_deref().unwrap_or("ended")
                    );
                    for n in r.notes {
                        crate::outln!("    {n}");
                    }
                }
            }
            Ok(())
        }
        ReloadReply::Refused { reason } => Err(ClientError::ReloadRefused(reason)),
    }
}
