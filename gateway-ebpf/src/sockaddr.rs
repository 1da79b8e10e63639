//! Typed access to the `bpf_sock_addr` context of the connect, sendmsg, getpeername and bind
//! hooks, so the hooks read the same whichever family they serve.
//!
//! The family is a type parameter, not a runtime value: the verifier only accepts context
//! reads at constant offsets, and a runtime choice lets LLVM compute the offset.

use core::{
    marker::PhantomData,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use gateway_common::{AF_INET, AF_INET6, Addr, v4_mapped};

pub trait Family {
    const AF: u16;
    fn addr(ctx: *mut bpf_sock_addr) -> Addr;
    fn set_addr(ctx: *mut bpf_sock_addr, addr: &Addr);
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    const AF: u16 = AF_INET;

    #[inline(always)]
    fn addr(ctx: *mut bpf_sock_addr) -> Addr {
        v4_mapped(unsafe { read_volatile(addr_of!((*ctx).user_ip4)) })
    }

    #[inline(always)]
    fn set_addr(ctx: *mut bpf_sock_addr, addr: &Addr) {
        unsafe { write_volatile(addr_of_mut!((*ctx).user_ip4), addr[3]) }
    }
}

impl Family for V6 {
    const AF: u16 = AF_INET6;

    #[inline(always)]
    fn addr(ctx: *mut bpf_sock_addr) -> Addr {
        read_words(unsafe { addr_of!((*ctx).user_ip6) })
    }

    #[inline(always)]
    fn set_addr(ctx: *mut bpf_sock_addr, addr: &Addr) {
        let w = unsafe { addr_of_mut!((*ctx).user_ip6) }.cast::<u32>();
        unsafe {
            write_volatile(w, addr[0]);
            write_volatile(w.add(1), addr[1]);
            write_volatile(w.add(2), addr[2]);
            write_volatile(w.add(3), addr[3]);
        }
    }
}

/// Reads an IPv6 address word by word: the verifier refuses a whole-array read of the
/// context ("dereference of modified ctx ptr"), and volatile keeps LLVM from merging loads.
#[inline(always)]
pub fn read_words(words: *const [u32; 4]) -> Addr {
    let w = words.cast::<u32>();
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
        unsafe { read_volatile(addr_of!((*self.ctx.sock_addr).type_)) }
    }

    /// The destination (or bound) address, IPv4 as mapped IPv6.
    #[inline(always)]
    pub fn addr(&self) -> Addr {
        F::addr(self.ctx.sock_addr)
    }

    #[inline(always)]
    pub fn set_addr(&self, addr: &Addr) {
        F::set_addr(self.ctx.sock_addr, addr)
    }

    /// Host order. The context keeps the big-endian port in the low bytes of a u32.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        let raw = unsafe { read_volatile(addr_of!((*self.ctx.sock_addr).user_port)) };
        u16::from_be(raw as u16)
    }

    #[inline(always)]
    pub fn set_port(&self, port: u16) {
        unsafe {
            write_volatile(
                addr_of_mut!((*self.ctx.sock_addr).user_port),
                u32::from(port.to_be()),
            )
        }
    }
}
