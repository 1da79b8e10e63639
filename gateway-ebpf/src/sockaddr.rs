//! Typed access to the `bpf_sock_addr` context of the connect, sendmsg, getpeername and bind
//! hooks, so the hooks read the same whichever family they serve.
//!
//! The family is a type parameter, not a runtime value: the verifier only accepts context
//! reads at constant offsets, and a runtime choice lets LLVM compute the offset.
//!
//! Every access goes through a `&SockAddrContext`, which (as for aya's own context accessors)
//! stands for the `bpf_sock_addr` the kernel handed to this run of the program: valid, aligned
//! and live until the program returns. The verifier checks each access's offset and size
//! against the fields the hook may read or write, and refuses the program otherwise (as it
//! refuses any load through a pointer it cannot prove valid).

use core::{
    marker::PhantomData,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::programs::SockAddrContext;
use gateway_common::{AF_INET, AF_INET6, Addr, v4_mapped};

pub trait Family {
    const AF: u16;
    fn addr(ctx: &SockAddrContext) -> Addr;
    fn set_addr(ctx: &SockAddrContext, addr: &Addr);
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    const AF: u16 = AF_INET;

    #[inline(always)]
    fn addr(ctx: &SockAddrContext) -> Addr {
        let sa = ctx.sock_addr;
        // SAFETY: `sa` is this run's context (module docs); `user_ip4` is a u32 field of it.
        v4_mapped(unsafe { read_volatile(addr_of!((*sa).user_ip4)) })
    }

    #[inline(always)]
    fn set_addr(ctx: &SockAddrContext, addr: &Addr) {
        let sa = ctx.sock_addr;
        // SAFETY: as in `addr`; the hooks that call this (connect, getpeername) may write
        // `user_ip4`, which the verifier checks.
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), addr[3]) }
    }
}

impl Family for V6 {
    const AF: u16 = AF_INET6;

    #[inline(always)]
    fn addr(ctx: &SockAddrContext) -> Addr {
        let sa = ctx.sock_addr;
        // SAFETY: `sa` is this run's context (module docs), so `user_ip6` is four readable,
        // aligned u32 words of it.
        unsafe { read_words(addr_of!((*sa).user_ip6)) }
    }

    #[inline(always)]
    fn set_addr(ctx: &SockAddrContext, addr: &Addr) {
        let sa = ctx.sock_addr;
        // SAFETY: `sa` is this run's context (module docs); `w` and the three words after it
        // are its `[u32; 4]` field `user_ip6`, which the hooks that call this (connect,
        // getpeername) may write, as the verifier checks.
        unsafe {
            let w = addr_of_mut!((*sa).user_ip6).cast::<u32>();
            write_volatile(w, addr[0]);
            write_volatile(w.add(1), addr[1]);
            write_volatile(w.add(2), addr[2]);
            write_volatile(w.add(3), addr[3]);
        }
    }
}

/// Reads an IPv6 address word by word: the verifier refuses a whole-array read of the
/// context ("dereference of modified ctx ptr"), and volatile keeps LLVM from merging loads.
///
/// # Safety
///
/// `words` must be valid for reads of a `[u32; 4]` and aligned for it: a field of the
/// context the kernel handed to the running program (`bpf_sock_addr`, `bpf_sock_ops`).
#[inline(always)]
pub unsafe fn read_words(words: *const [u32; 4]) -> Addr {
    let w = words.cast::<u32>();
    // SAFETY: `w` and the three words after it are the caller's `[u32; 4]`, which the
    // contract above makes readable and aligned.
    unsafe {
        [
            read_volatile(w),
            read_volatile(w.add(1)),
            read_volatile(w.add(2)),
            read_volatile(w.add(3)),
        ]
    }
}

pub struct SockAddr<'a, F> {
    ctx: &'a SockAddrContext,
    _family: PhantomData<F>,
}

impl<'a, F: Family> SockAddr<'a, F> {
    #[inline(always)]
    pub fn new(ctx: &'a SockAddrContext) -> Self {
        SockAddr {
            ctx,
            _family: PhantomData,
        }
    }

    #[inline(always)]
    pub fn family(&self) -> u16 {
        F::AF
    }

    #[inline(always)]
    pub fn sock_type(&self) -> u32 {
        // SAFETY: `self.ctx` is this run's context (module docs); `type_` is a u32 field of it.
        unsafe { read_volatile(addr_of!((*self.ctx.sock_addr).type_)) }
    }

    /// The destination (or bound) address, IPv4 as mapped IPv6.
    #[inline(always)]
    pub fn addr(&self) -> Addr {
        F::addr(self.ctx)
    }

    #[inline(always)]
    pub fn set_addr(&self, addr: &Addr) {
        F::set_addr(self.ctx, addr)
    }

    /// Host order. The context keeps the big-endian port in the low bytes of a u32.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        // SAFETY: `self.ctx` is this run's context (module docs); `user_port` is a u32 field.
        let raw = unsafe { read_volatile(addr_of!((*self.ctx.sock_addr).user_port)) };
        u16::from_be(raw as u16)
    }

    #[inline(always)]
    pub fn set_port(&self, port: u16) {
        // SAFETY: `self.ctx` is this run's context (module docs); the hooks that call this
        // (connect, getpeername) may write the u32 field `user_port`, as the verifier checks.
        unsafe {
            write_volatile(
                addr_of_mut!((*self.ctx.sock_addr).user_port),
                u32::from(port.to_be()),
            )
        }
    }
}
