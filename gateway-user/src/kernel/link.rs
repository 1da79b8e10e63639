//! Links aya 0.14 cannot hand over as an `FdLink` (cgroup sockopt links have no conversion),
//! made and pinned with the bpf syscall directly, then adopted as a `PinnedLink` like the
//! others.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use aya::programs::links::PinnedLink;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`.
pub(super) const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// `union bpf_attr`, as large as any command here reads; the kernel wants the rest zero.
#[repr(C, align(8))]
struct Attr([u32; 32]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded bpf_attr of the size passed; the kernel reads
    // (and for these commands only reads) within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut Attr).cast::<libc::c_void>(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Attaches `prog` to `cgroup` as `attach_type` through a link pinned at `path`.
pub(super) fn create_pinned(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    path: &Path,
) -> std::io::Result<PinnedLink> {
    let mut attr = Attr([0; 32]);
    // link_create: prog_fd, target_fd, attach_type, flags.
    attr.0[0] = prog.as_raw_fd() as u32;
    attr.0[1] = cgroup.as_raw_fd() as u32;
    attr.0[2] = attach_type;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new link fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a pin path with a NUL byte"))?;
    let mut attr = Attr([0; 32]);
    // obj_pin: pathname (u64 pointer), bpf_fd.
    let ptr = name.as_ptr() as u64;
    attr.0[0] = ptr as u32;
    attr.0[1] = (ptr >> 32) as u32;
    attr.0[2] = link.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut attr)?;
    drop(link);
    PinnedLink::from_pin(path).map_err(|e| std::io::Error::other(e.to_string()))
}
