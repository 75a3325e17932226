//! The three bpf(2) commands aya 0.14 does not expose uniformly for every
//! cgroup program type: creating a link, pinning it, and detaching it.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` is 144 bytes on current kernels; unused fields must be zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised bpf_attr of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// BPF_LINK_CREATE: attaches `prog` to the cgroup `target` as `attach_type`.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32); // link_create.prog_fd
    attr.put_u32(4, target.as_raw_fd() as u32); // link_create.target_fd
    attr.put_u32(8, attach_type); // link_create.attach_type
    attr.put_u32(12, 0); // link_create.flags
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: pins `fd` at `path` (on bpffs).
pub fn obj_pin(fd: impl AsFd, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64); // pathname
    attr.put_u32(8, fd.as_fd().as_raw_fd() as u32); // bpf_fd
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}

/// BPF_LINK_DETACH: detaches a link now, even if it is still pinned elsewhere.
pub fn link_detach(fd: impl AsFd) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_fd().as_raw_fd() as u32); // link_detach.link_fd
    bpf(BPF_LINK_DETACH, &mut attr)?;
    Ok(())
}

/// BPF_OBJ_GET: opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
