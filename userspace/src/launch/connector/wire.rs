//! The connector's messages: a job (kind, socket address, the identities a
//! unix path may resolve to) and its reply, in a fixed little-endian
//! layout that is checked in full when decoded.

use crate::launch::unix_list::Identity;

/// Longest socket address a job carries (`sockaddr_storage`).
pub const ADDR_MAX: usize = 128;
/// Identities one job may carry.
pub const MAX_IDS: usize = 1024;

const MAGIC: [u8; 4] = *b"ENC1";
/// Bytes of a job before its identities.
pub const HEADER: usize = 4 + 1 + 1 + 2 + ADDR_MAX + 4;
/// Bytes of a reply.
pub const REPLY: usize = 24;

/// What the connector does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// connect() to the address as given (inet, abstract unix names, and
    /// unix addresses the kernel itself refuses or treats as a disconnect).
    Plain = 0,
    /// Resolve the `sun_path` as the agent, check its identity, connect
    /// through the pinned inode.
    UnixPath = 1,
}

/// What the connector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Connected,
    /// connect() failed with this errno.
    Failed(i32),
    /// The path resolved to a socket that is not among the allowed.
    NotListed(Identity),
    /// The path did not resolve (errno), as the agent.
    Unresolved(i32),
}

/// A job's bytes: magic, kind, address, allowed identities. None when the
/// address or the list is too long.
pub fn encode_request(kind: Kind, addr: &[u8], allowed: &[Identity]) -> Option<Vec<u8>> {
    if addr.len() > ADDR_MAX || allowed.len() > MAX_IDS {
        return None;
    }
    let mut v = Vec::with_capacity(HEADER + 16 * allowed.len());
    v.extend_from_slice(&MAGIC);
    v.push(kind as u8);
    v.push(0);
    v.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    let mut padded = [0u8; ADDR_MAX];
    padded[..addr.len()].copy_from_slice(addr);
    v.extend_from_slice(&padded);
    v.extend_from_slice(&(allowed.len() as u32).to_le_bytes());
    for id in allowed {
        v.extend_from_slice(&id.dev.to_le_bytes());
        v.extend_from_slice(&id.ino.to_le_bytes());
    }
    Some(v)
}

/// A decoded job (without its descriptors).
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub kind: Kind,
    pub addr: Vec<u8>,
    pub allowed: Vec<Identity>,
}

pub fn decode_request(b: &[u8]) -> Option<Decoded> {
    if b.len() < HEADER || b[..4] != MAGIC {
        return None;
    }
    let kind = match b[4] {
        0 => Kind::Plain,
        1 => Kind::UnixPath,
        _ => return None,
    };
    let addr_len = usize::from(u16::from_le_bytes([b[6], b[7]]));
    if addr_len > ADDR_MAX {
        return None;
    }
    let addr = b[8..8 + addr_len].to_vec();
    let n = u32::from_le_bytes(b[HEADER - 4..HEADER].try_into().ok()?) as usize;
    if n > MAX_IDS || b.len() != HEADER + 16 * n {
        return None;
    }
    let allowed = b[HEADER..]
        .chunks_exact(16)
        .map(|c| {
            let dev = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let ino = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            Identity { dev, ino }
        })
        .collect();
    Some(Decoded {
        kind,
        addr,
        allowed,
    })
}

pub fn encode_reply(r: Reply) -> [u8; REPLY] {
    let (status, errno, id) = match r {
        Reply::Connected => (0u8, 0, Identity { dev: 0, ino: 0 }),
        Reply::Failed(e) => (1, e, Identity { dev: 0, ino: 0 }),
        Reply::NotListed(id) => (2, 0, id),
        Reply::Unresolved(e) => (3, e, Identity { dev: 0, ino: 0 }),
    };
    let mut b = [0u8; REPLY];
    b[0] = status;
    b[4..8].copy_from_slice(&errno.to_le_bytes());
    b[8..16].copy_from_slice(&id.dev.to_le_bytes());
    b[16..24].copy_from_slice(&id.ino.to_le_bytes());
    b
}

pub fn decode_reply(b: &[u8]) -> Option<Reply> {
    if b.len() != REPLY {
        return None;
    }
    let errno = i32::from_le_bytes(b[4..8].try_into().ok()?);
    let id = Identity {
        dev: u64::from_le_bytes(b[8..16].try_into().ok()?),
        ino: u64::from_le_bytes(b[16..24].try_into().ok()?),
    };
    match b[0] {
        0 => Some(Reply::Connected),
        1 if errno > 0 => Some(Reply::Failed(errno)),
        2 => Some(Reply::NotListed(id)),
        3 if errno > 0 => Some(Reply::Unresolved(errno)),
        _ => None,
    }
}

/// The path name in a `sockaddr_un` (up to its NUL), unless it is abstract or empty.
pub fn path_name(addr: &[u8]) -> Option<&[u8]> {
    let p = addr.get(2..)?;
    if p.first().is_none_or(|&b| b == 0) {
        return None;
    }
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    Some(&p[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip() {
        let ids = [Identity { dev: 1, ino: 2 }, Identity { dev: 3, ino: 4 }];
        let addr = b"\x01\x00/run/x.sock\x00";
        let b = encode_request(Kind::UnixPath, addr, &ids).unwrap();
        let d = decode_request(&b).unwrap();
        assert_eq!(d.kind, Kind::UnixPath);
        assert_eq!(d.addr, addr);
        assert_eq!(d.allowed, ids);
        let b = encode_request(Kind::Plain, &[2, 0, 1, 2, 3, 4], &[]).unwrap();
        assert_eq!(decode_request(&b).unwrap().kind, Kind::Plain);
    }

    #[test]
    fn malformed_jobs_are_refused() {
        assert!(encode_request(Kind::Plain, &[0; ADDR_MAX + 1], &[]).is_none());
        let b = encode_request(Kind::Plain, b"ab", &[Identity { dev: 1, ino: 1 }]).unwrap();
        assert!(decode_request(&b[..b.len() - 1]).is_none(), "short");
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(decode_request(&bad).is_none(), "magic");
        let mut bad = b.clone();
        bad[4] = 7;
        assert!(decode_request(&bad).is_none(), "kind");
        let mut bad = b.clone();
        bad[6] = 200;
        assert!(decode_request(&bad).is_none(), "address length");
        let mut bad = b;
        bad.extend_from_slice(&[0; 16]);
        assert!(decode_request(&bad).is_none(), "count and length disagree");
        assert!(decode_request(&[]).is_none());
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Connected,
            Reply::Failed(libc::EACCES),
            Reply::NotListed(Identity { dev: 9, ino: 10 }),
            Reply::Unresolved(libc::ENOENT),
        ] {
            assert_eq!(decode_reply(&encode_reply(r)), Some(r));
        }
        let mut b = encode_reply(Reply::Failed(0));
        assert_eq!(decode_reply(&b), None, "a failure needs an errno");
        b[0] = 9;
        assert_eq!(decode_reply(&b), None);
        assert_eq!(decode_reply(&b[..3]), None);
    }

    #[test]
    fn path_names_stop_at_nul_and_abstract_names_have_none() {
        assert_eq!(path_name(b"\x01\x00/a.sock\x00junk"), Some(&b"/a.sock"[..]));
        assert_eq!(path_name(b"\x01\x00rel"), Some(&b"rel"[..]));
        assert_eq!(path_name(b"\x01\x00\x00name"), None);
        assert_eq!(path_name(b"\x01\x00"), None);
        assert_eq!(path_name(b"\x01"), None);
    }
}
