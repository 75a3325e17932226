//! systemd readiness (`sd_notify`): when started as a `Type=notify` service
//! the daemon tells its manager `READY=1` once its programs are attached and
//! its socket listens, and a status line (again after each reload), through the datagram socket in `$NOTIFY_SOCKET` (a
//! path, or an abstract name when it starts with '@').

use std::{
    ffi::OsStr,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("${NOTIFY_SOCKET} is {0:?}: neither a path nor an abstract name ('@...')")]
    NotASocket(String),
    #[error("cannot notify the service manager at {socket}: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Tells the service manager that the daemon is ready, with a status line.
/// Returns false when no manager asked to be told (no `$NOTIFY_SOCKET`).
pub fn ready(status: &str) -> Result<bool, NotifyError> {
    let status: String = status.chars().filter(|c| *c != '\n').collect();
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => send(&socket, &format!("READY=1\nSTATUS={status}\n")).map(|()| true),
        None => Ok(false),
    }
}

/// Tells the service manager a new status line (after a reload); false
/// when no manager asked to be told.
pub fn status(status: &str) -> Result<bool, NotifyError> {
    let status: String = status.chars().filter(|c| *c != '\n').collect();
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => send(&socket, &format!("STATUS={status}\n")).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `message` as one datagram to the manager's socket.
fn send(socket: &OsStr, message: &str) -> Result<(), NotifyError> {
    let shown = socket.to_string_lossy().into_owned();
    let addr = address(socket)?;
    let send_err = |source| NotifyError::Send {
        socket: shown.clone(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send_err)?;
    sock.send_to_addr(message.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(())
}

fn address(socket: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bytes = socket.as_bytes();
    let bad = || NotifyError::NotASocket(socket.to_string_lossy().into_owned());
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad()),
        Some(b'/') => SocketAddr::from_pathname(socket).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_socket_receives_ready_and_the_status() {
        let dir = std::env::temp_dir().join(format!("enforcer-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\nSTATUS=up\n").expect("send");
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_abstract_socket_is_named_with_an_at_sign() {
        let name = format!("enforcer-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(OsStr::new(&format!("@{name}")), "READY=1\n").expect("send");
        let mut buf = [0u8; 16];
        let n = manager.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn anything_else_is_refused_with_its_value() {
        let e = send(OsStr::new("relative/notify.sock"), "READY=1\n").expect_err("refused");
        assert!(e.to_string().contains("relative/notify.sock"), "{e}");
        assert!(send(OsStr::new(""), "READY=1\n").is_err());
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let e = send(OsStr::new("/nonexistent/enforcer-notify.sock"), "READY=1\n")
            .expect_err("no listener");
        assert!(
            e.to_string().contains("/nonexistent/enforcer-notify.sock"),
            "{e}"
        );
    }
}
