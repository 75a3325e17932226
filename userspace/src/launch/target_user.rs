//! Who the agent runs as: the user who invoked sudo (SUDO_UID/SUDO_GID), or
//! `--user`, with their supplementary groups. Root only with `--allow-root`.

use std::{ffi::CString, path::PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("cannot look up user {0}: {1}")]
    Lookup(String, nix::Error),
    #[error("SUDO_UID/SUDO_GID is not a number: {0:?}")]
    BadSudoId(String),
    #[error(
        "refusing to run the agent as root: a root agent could detach the kernel programs or leave \
         its cgroup. Run enforcer through sudo (the agent runs as you), pass --user USER, or pass \
         --allow-root if you really mean it"
    )]
    RootRefused,
}

/// The identity the child takes before exec.
#[derive(Debug, Clone)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl TargetUser {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Resolves the target from `--user` (name or numeric uid) or the sudo environment.
pub fn resolve(user_flag: Option<&str>, allow_root: bool) -> Result<TargetUser, UserError> {
    let (user, gid_override) = match user_flag {
        Some(spec) => (lookup(spec)?, None),
        None => match std::env::var("SUDO_UID") {
            Ok(uid) => {
                let uid: u32 = uid
                    .trim()
                    .parse()
                    .map_err(|_| UserError::BadSudoId(uid.clone()))?;
                let gid = match std::env::var("SUDO_GID") {
                    Ok(g) => Some(
                        g.trim()
                            .parse::<u32>()
                            .map_err(|_| UserError::BadSudoId(g.clone()))?,
                    ),
                    Err(_) => None,
                };
                let user = User::from_uid(Uid::from_raw(uid))
                    .map_err(|e| UserError::Lookup(uid.to_string(), e))?
                    .ok_or_else(|| UserError::NoSuchUser(uid.to_string()))?;
                (user, gid)
            }
            Err(_) => {
                let uid = nix::unistd::getuid();
                let user = User::from_uid(uid)
                    .map_err(|e| UserError::Lookup(uid.to_string(), e))?
                    .ok_or_else(|| UserError::NoSuchUser(uid.to_string()))?;
                (user, None)
            }
        },
    };
    if user.uid.is_root() && !allow_root {
        return Err(UserError::RootRefused);
    }
    let gid = gid_override.unwrap_or(user.gid.as_raw());
    let groups = supplementary_groups(&user.name, gid);
    Ok(TargetUser {
        uid: user.uid.as_raw(),
        gid,
        groups,
        name: user.name,
        home: user.dir,
        shell: user.shell,
    })
}

fn lookup(spec: &str) -> Result<User, UserError> {
    let found = if let Ok(uid) = spec.parse::<u32>() {
        User::from_uid(Uid::from_raw(uid))
    } else {
        User::from_name(spec)
    };
    found
        .map_err(|e| UserError::Lookup(spec.to_string(), e))?
        .ok_or_else(|| UserError::NoSuchUser(spec.to_string()))
}

/// The user's groups from the group database, always including `gid`.
fn supplementary_groups(name: &str, gid: u32) -> Vec<u32> {
    let mut groups = CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
        .map(|v| v.into_iter().map(Gid::as_raw).collect::<Vec<_>>())
        .unwrap_or_default();
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// A readable name for a gid (for messages).
pub fn group_name(gid: u32) -> String {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_without_allow_root() {
        assert!(matches!(
            resolve(Some("root"), false),
            Err(UserError::RootRefused)
        ));
        let root = resolve(Some("0"), true).unwrap();
        assert!(root.is_root());
    }

    #[test]
    fn unknown_users_are_reported_by_name() {
        let err = resolve(Some("no-such-user-enforcer-test"), false).unwrap_err();
        assert!(err.to_string().contains("no-such-user-enforcer-test"));
    }

    #[test]
    fn nobody_resolves_with_its_group() {
        let u = resolve(Some("nobody"), false).unwrap();
        assert_eq!(u.uid, 65534);
        assert!(u.groups.contains(&u.gid));
    }
}
