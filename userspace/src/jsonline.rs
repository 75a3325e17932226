//! One JSON request line to a unix socket, one JSON reply line back: how
//! the CLI talks to a run's control socket and to the daemon.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// Closed without an answer (reset, or end of stream before a line).
    #[error("closed without an answer")]
    Closed,
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("unreadable reply: {0}")]
    Json(String),
}

/// Sends `req` to `socket` and reads one reply line; `wait` bounds the wait
/// for it (`None`: as long as it takes).
pub fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    socket: &Path,
    req: &Req,
    wait: Option<Duration>,
) -> Result<Resp, LineError> {
    let mut stream = UnixStream::connect(socket).map_err(LineError::Connect)?;
    stream.set_read_timeout(wait).map_err(LineError::Io)?;
    let mut line = serde_json::to_string(req).map_err(|e| LineError::Json(e.to_string()))?;
    line.push('\n');
    let closed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => LineError::Closed,
        _ => LineError::Io(e),
    };
    stream.write_all(line.as_bytes()).map_err(closed)?;
    let mut reply = String::new();
    if BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(closed)?
        == 0
    {
        return Err(LineError::Closed);
    }
    serde_json::from_str(reply.trim())
        .map_err(|e| LineError::Json(format!("{e}: {}", reply.trim())))
}
