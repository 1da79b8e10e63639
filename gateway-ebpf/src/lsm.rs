//! BPF LSM: what the cgroup hooks cannot see. Those follow the cgroup a *socket* was created
//! in, so a governed task could still use a socket made outside governed cgroups (before it
//! was moved in, or handed to it over SCM_RIGHTS or pidfd_getfd), or have a process outside
//! act for it. These hooks judge by the calling *task's* cgroup instead, and run for every
//! task on the host: each returns at once for tasks outside governed cgroups.
//!
//! Offsets into `struct socket` and `struct sock` are checked by the verifier against the
//! kernel's BTF: on a kernel where they differ the programs do not load, and the daemon says
//! it runs without these guarantees.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::lsm, programs::LsmContext};
use aya_log_ebpf::warn;
use gateway_common::{AF_INET, AF_INET6};

use crate::maps::{GOVERNED_SOCKS, governed_ancestor};

const ALLOW: i32 = 0;
const EPERM: i32 = 1;

/// `struct socket`: `sk`, the protocol's socket.
const SOCKET_SK: usize = 24;
/// `struct sock_common`: `skc_family`.
const SKC_FAMILY: usize = 16;
/// `PTRACE_MODE_ATTACH`: ptrace attach, pidfd_getfd, process_vm_writev, /proc/PID/mem.
const PTRACE_MODE_ATTACH: u32 = 0x02;

// Both hooks take the socket first and three arguments, so the verdict of earlier programs
// is the fourth:
//   LSM_HOOK(int, 0, socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
//   LSM_HOOK(int, 0, socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    judge_socket(&ctx)
}

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    judge_socket(&ctx)
}

/// A governed task may connect or send on an internet socket only if it was created in a
/// governed cgroup, where the cgroup hooks judge every connection and datagram of it.
fn judge_socket(ctx: &LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let sock: *const u8 = ctx.arg(0);
    let governed = governed_ancestor();
    if governed == 0 {
        return ALLOW;
    }
    // SAFETY: `sock` is the hook's `struct socket *`; the verifier types the load from BTF.
    let sk = unsafe { *sock.add(SOCKET_SK).cast::<*mut c_void>() };
    if sk.is_null() {
        return ALLOW;
    }
    // SAFETY: `sk` is the socket's `struct sock *`, typed by the verifier as above.
    let family = unsafe { *sk.cast::<u8>().add(SKC_FAMILY).cast::<u16>() };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    // SAFETY: the helper reads the cookie of the socket the verifier knows `sk` to be.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if GOVERNED_SOCKS.get_ptr(cookie).is_some() {
        return ALLOW;
    }
    warn!(
        ctx,
        "refused a socket made outside governed cgroups, used in cgroup {}", governed
    );
    -EPERM
}

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, ptrace_access_check, struct task_struct *child, unsigned int mode)
    let mode: u32 = ctx.arg(1);
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    // Attaching to another process (or taking its fds) would let a governed task act through
    // one that is not governed. Reading (ps, /proc) stays open.
    if mode & PTRACE_MODE_ATTACH != 0 {
        let governed = governed_ancestor();
        if governed != 0 {
            warn!(&ctx, "refused ptrace attach from cgroup {}", governed);
            return -EPERM;
        }
    }
    ALLOW
}
