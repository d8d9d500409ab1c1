//! eventfds: one type for the whole crate, vmm-sys-util's [`EventFd`].
//!
//! kvm-ioctls (`register_irqfd`, `register_ioevent`) and vhost-user-backend
//! take vmm-sys-util's type, so the rings' wake-ups use it too rather than a
//! second wrapper around `eventfd(2)`. [`Wake`] adds the fire-and-forget
//! calls of a wake-up: [`Wake::signal`] and [`Wake::clear`] never block
//! (the fd is `EFD_NONBLOCK`) and treat `EAGAIN` as done — a saturated
//! counter already has a wake-up pending, and a zero counter has nothing
//! to clear.

use std::io;

pub use vmm_sys_util::eventfd::EventFd;

/// A new non-blocking, close-on-exec eventfd with a zero counter.
pub fn nonblocking() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

/// Wake-up calls on a non-blocking eventfd.
pub trait Wake {
    /// Adds 1 to the counter, waking a reader; `EAGAIN` (counter saturated)
    /// is fine: a wake-up is pending.
    fn signal(&self);
    /// Resets the counter to 0 (a reader that polls the fd itself, rather
    /// than reading it through io_uring, does this after waking); `EAGAIN`
    /// (already 0) needs nothing done.
    fn clear(&self);
}

impl Wake for EventFd {
    fn signal(&self) {
        let _ = self.write(1);
    }

    fn clear(&self) {
        let _ = self.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_never_block() {
        let e = nonblocking().unwrap();
        e.clear();
        e.signal();
        e.signal();
        assert_eq!(e.read().unwrap(), 2);
        assert_eq!(
            e.read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "clear/read leave the counter at 0"
        );
        e.write(u64::MAX - 1).unwrap();
        e.signal(); // saturated: EAGAIN, ignored
        e.clear();
        assert_eq!(e.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
