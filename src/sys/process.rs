//! Namespaces and the parent-death signal of the calling process or thread.
//!
//! `unshare(CLONE_NEWUSER)` needs a single-threaded process and `setns`
//! changes only the calling thread, so the callers (the namespace helper, the
//! `-T/-U auto` binder, `--netns`, the sandbox) decide where these run; the
//! wrappers only make the calls and return `errno`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// `unshare(flags)`: new namespaces for the calling process (`CLONE_NEWUSER`
/// needs it to be single-threaded; the kernel says `EINVAL` otherwise).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY:
    // - Plain syscall with integer flags, no pointers; the kernel checks the
    //   thread count itself.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// `setns(fd, nstype)`: move the calling thread into the namespace `fd`
/// (a `/proc/PID/ns/*` or bind-mounted namespace file). `nstype`
/// (`CLONE_NEWNET`, `CLONE_NEWUSER`, ...) makes the kernel check the kind.
/// `CLONE_NEWNET` changes only the calling thread; `CLONE_NEWUSER` needs a
/// single-threaded process.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY:
    // - `fd` is an open fd borrowed for the call; no pointers are passed.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// Makes every mount of this mount namespace private (`/` with
/// `MS_REC | MS_PRIVATE`), so mounts made from now on do not propagate back
/// to the namespace it was copied from.
pub fn make_mounts_private() -> io::Result<()> {
    // SAFETY:
    // - All pointers are null or NUL-terminated literals; with
    //   MS_REC | MS_PRIVATE mount(2) only changes propagation and reads no
    //   source, type or data.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then a check that the parent is still
/// `parent` (it may have died before the signal was armed; the process was
/// then reparented): `ESRCH` if not. Linux ties the signal to the parent
/// *thread*.
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    let sig = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
    // SAFETY:
    // - PR_SET_PDEATHSIG takes a signal number and no pointers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) })?;
    // SAFETY:
    // - getppid cannot fail and takes no arguments.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}
