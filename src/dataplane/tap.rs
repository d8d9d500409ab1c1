//! A TAP device: the frame port behind the network-namespace frontend.
//!
//! # Theory of Operation
//!
//! A TAP is a virtual Ethernet interface whose "wire" is a file descriptor:
//! every frame the kernel transmits on the interface can be `read(2)` from the
//! fd, one frame per read, and every `write(2)` of one whole frame is received
//! by the interface as if it came in from a cable.
//!
//! ```text
//!   namespace's Linux stack ──tx──▶ [ tapN ] ──read()──▶ uipd
//!   namespace's Linux stack ◀──rx── [ tapN ] ◀─write()── uipd
//! ```
//!
//! Invariants and limits:
//! - The device is created by `TUNSETIFF` on a fresh `/dev/net/tun` fd. It lives
//!   in the network namespace that was current for the *calling thread* when
//!   `/dev/net/tun` was opened (the kernel records `current->nsproxy->net_ns`
//!   at `open`), which is what lets [`crate::dataplane::netns::attach`] create a
//!   TAP in another namespace by `setns` on one thread only.
//! - The device is non-persistent: it disappears when the last fd attached to it
//!   is closed.
//! - Flags are `IFF_TAP | IFF_NO_PI`: frames carry no packet-information prefix
//!   and no virtio-net header. [`TapFlags`] adds `IFF_VNET_HDR` (every frame
//!   read or written is prefixed by a virtio-net header, 10 bytes until
//!   `TUNSETVNETHDRSZ` changes it) and `IFF_MULTI_QUEUE`.
//! - Several queues ([`Tap::open_queues`]): with `IFF_MULTI_QUEUE`, each
//!   `TUNSETIFF` of the same name on a fresh `/dev/net/tun` fd attaches one more
//!   queue (one fd each, up to [`MAX_TAP_QUEUES`]). The kernel picks the queue a
//!   transmitted frame goes to (by flow hash); a frame written on any queue is
//!   received by the interface. Every queue must be opened with the same flags,
//!   and the interface lives until its last queue is closed.
//! - The fd is blocking and close-on-exec. [`Tap::try_clone`] duplicates it so
//!   that a reader thread and a writer thread can each own one.

use std::ffi::{CString, c_char};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Path of the TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Most queues one TAP may have (`MAX_TAP_QUEUES` in the kernel's `drivers/net/tun.c`).
pub const MAX_TAP_QUEUES: usize = 256;

/// Optional `TUNSETIFF` flags, on top of `IFF_TAP | IFF_NO_PI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapFlags {
    /// `IFF_MULTI_QUEUE`: the interface may have several queues, one fd each.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR`: every frame read or written starts with a virtio-net header
    /// (`struct virtio_net_hdr`, 10 bytes by default; `TUNSETVNETHDRSZ` changes it).
    pub vnet_hdr: bool,
}

impl TapFlags {
    /// The extra `ifr_flags` bits these options ask for.
    fn ifr_bits(self) -> libc::c_short {
        let mut bits = 0;
        if self.multi_queue {
            bits |= libc::IFF_MULTI_QUEUE;
        }
        if self.vnet_hdr {
            bits |= libc::IFF_VNET_HDR;
        }
        // Cannot fail: IFF_MULTI_QUEUE | IFF_VNET_HDR = 0x4100 fits in a c_short.
        libc::c_short::try_from(bits).unwrap_or(0)
    }
}

/// Errors from creating a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long, or has characters Linux rejects.
    #[error(
        "invalid interface name {0:?}: it must be 1 to 15 bytes, without '/', ':' or whitespace"
    )]
    InvalidName(String),
    /// `/dev/net/tun` does not exist (no tun module, or no device node).
    #[error(
        "{TUN_PATH} does not exist: load the tun module (modprobe tun) or create the node (mknod {TUN_PATH} c 10 200)"
    )]
    NoTunDevice(#[source] io::Error),
    /// `/dev/net/tun` exists but may not be opened by this process.
    #[error(
        "no permission to open {TUN_PATH}: it must be readable and writable by this user (usually mode 0666)"
    )]
    TunPermission(#[source] io::Error),
    /// `/dev/net/tun` could not be opened for another reason.
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed (EPERM: no CAP_NET_ADMIN in the namespace; EBUSY: the name is taken by a
    /// device that is not a TAP or is attached elsewhere).
    #[error("cannot create TAP device {name:?} (TUNSETIFF)")]
    SetIff {
        /// The requested name.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// [`Tap::open_queues`] was asked for no queue, or for more than the kernel allows.
    #[error("invalid TAP queue count {0}: it must be 1 to {MAX_TAP_QUEUES}")]
    QueueCount(usize),
}

/// A TAP device file descriptor and the name of its interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Checks `name` the way the kernel's `dev_valid_name` does and returns it as a C string.
pub(crate) fn ifname_cstring(name: &str) -> Result<CString, TapError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(TapError::InvalidName(name.to_owned()));
    }
    // Cannot fail: NUL bytes were rejected above.
    CString::new(name).map_err(|_| TapError::InvalidName(name.to_owned()))
}

/// Copies a checked interface name into an `ifreq` name field.
pub(crate) fn fill_ifr_name(ifr: &mut libc::ifreq, name: &std::ffi::CStr) {
    let bytes = name.to_bytes_with_nul();
    // `ifname_cstring` guarantees `bytes.len() <= IFNAMSIZ`.
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = c_char::from_ne_bytes([src]);
    }
}

/// Reads the NUL-terminated name the kernel wrote back into an `ifreq`.
fn ifr_name_string(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .map(|c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// The `ifr_flags` used by [`Tap::open`].
    ///
    /// `IFF_TAP`: Ethernet frames (not IP packets). `IFF_NO_PI`: no 4-byte
    /// packet-information prefix. To add offloads later, OR in `IFF_VNET_HDR`
    /// (and then `TUNSETVNETHDRSZ`/`TUNSETOFFLOAD`); for one queue per worker,
    /// OR in `IFF_MULTI_QUEUE` and open the same name once per queue.
    fn ifr_flags() -> libc::c_short {
        let flags = libc::IFF_TAP | libc::IFF_NO_PI;
        // Cannot fail: IFF_TAP | IFF_NO_PI = 0x1002 fits in a c_short.
        libc::c_short::try_from(flags).unwrap_or(0x1002)
    }

    /// Creates (or attaches to) TAP `name` in the calling thread's network namespace.
    ///
    /// `IFF_TAP | IFF_NO_PI`; the returned fd is blocking and close-on-exec. If a
    /// persistent TAP of that name exists and is free, it is attached instead of
    /// created. Needs `CAP_NET_ADMIN` over the namespace, and read/write access to
    /// `/dev/net/tun`. Same as [`Tap::open_with`] with default [`TapFlags`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Self::open_with(name, TapFlags::default())
    }

    /// Opens `name` `queues` times: one fd per queue of a multiqueue TAP, queue 0 first.
    ///
    /// `queues` must be 1 to [`MAX_TAP_QUEUES`] ([`TapError::QueueCount`] otherwise);
    /// with more than one, `flags.multi_queue` is forced on. Every queue gets the same
    /// flags, and queues after the first open the name the kernel gave the first.
    /// On an error, the queues opened so far are closed.
    pub fn open_queues(name: &str, queues: usize, flags: TapFlags) -> Result<Vec<Tap>, TapError> {
        if queues == 0 || queues > MAX_TAP_QUEUES {
            return Err(TapError::QueueCount(queues));
        }
        let flags = TapFlags {
            multi_queue: flags.multi_queue || queues > 1,
            ..flags
        };
        let first = Self::open_with(name, flags)?;
        let mut taps = Vec::with_capacity(queues);
        let name = first.name.clone();
        taps.push(first);
        for _ in 1..queues {
            taps.push(Self::open_with(&name, flags)?);
        }
        Ok(taps)
    }

    /// [`Tap::open`] with optional flags: `IFF_MULTI_QUEUE` (this fd is one queue; open
    /// the same name again, with the same flags, for the next) and `IFF_VNET_HDR`.
    pub fn open_with(name: &str, flags: TapFlags) -> Result<Tap, TapError> {
        Tap::open_ifr(name, Self::ifr_flags() | flags.ifr_bits())
    }

    /// Open `/dev/net/tun` and attach it to TAP `name` with `TUNSETIFF`
    /// and these `ifr_flags` (`IFF_TAP` and the rest, all given).
    pub(crate) fn open_ifr(name: &str, ifr_flags: libc::c_short) -> Result<Tap, TapError> {
        let cname = ifname_cstring(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice(e),
                io::ErrorKind::PermissionDenied => TapError::TunPermission(e),
                _ => TapError::OpenTun(e),
            })?;
        let fd = OwnedFd::from(file);

        // SAFETY:
        // - `ifreq` is a plain C struct (arrays, integers, a union of those and
        //   pointers); all-zero bytes are a valid value for every field.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        fill_ifr_name(&mut ifr, &cname);
        ifr.ifr_ifru.ifru_flags = ifr_flags;
        // SAFETY:
        // - `fd` is an open `/dev/net/tun` fd owned by this function.
        // - TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a live,
        //   properly aligned `ifreq` that outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut ifr) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let name = ifr_name_string(&ifr);
        log::debug!("tap: opened {name} (fd {})", fd.as_raw_fd());
        Ok(Tap { fd, name })
    }

    /// Wraps an fd that is already attached to TAP `name` (for example one received
    /// over `SCM_RIGHTS`). Takes ownership of `fd`.
    pub fn from_fd(fd: OwnedFd, name: String) -> Tap {
        Tap { fd, name }
    }

    /// Reads one frame into `buf`, blocking until one is available; returns its length.
    ///
    /// A frame longer than `buf` is truncated by the kernel: size `buf` for the MTU
    /// plus the 14-byte Ethernet header. Retries on `EINTR`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY:
            // - `self.fd` is an open fd owned by `self` for the whole call.
            // - `buf` is a valid writable region of `buf.len()` bytes, borrowed
            //   mutably, so nothing else aliases it during the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Writes one whole frame (Ethernet header first, no FCS); returns the bytes written.
    /// Retries on `EINTR`.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY:
            // - `self.fd` is an open fd owned by `self` for the whole call.
            // - `frame` is a valid readable region of `frame.len()` bytes.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Switches the fd between blocking and non-blocking mode (for io_uring or epoll users).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        // SAFETY:
        // - `self.fd` is an open fd owned by `self`; F_GETFL takes no pointer.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY:
        // - `self.fd` is an open fd owned by `self`; F_SETFL takes an int.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The raw fd, still owned by `self`.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The interface name, as the kernel reported it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Duplicates the fd (close-on-exec), so that a reader and a writer can each own one.
    /// Both refer to the same open file: the same queue, the same blocking mode.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Consumes the TAP and returns its fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel() {
        assert!(ifname_cstring("eth0").is_ok());
        assert!(ifname_cstring("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", "a:b", ".", ".."] {
            assert!(
                matches!(ifname_cstring(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn flags_are_tap_without_pi() {
        let f = i32::from(Tap::ifr_flags());
        assert_eq!(f & libc::IFF_TAP, libc::IFF_TAP);
        assert_eq!(f & libc::IFF_NO_PI, libc::IFF_NO_PI);
        assert_eq!(f & libc::IFF_VNET_HDR, 0);
    }

    #[test]
    fn optional_flags_add_their_bits() {
        let bits = |f: TapFlags| i32::from(f.ifr_bits());
        assert_eq!(bits(TapFlags::default()), 0);
        let mq = TapFlags {
            multi_queue: true,
            ..TapFlags::default()
        };
        assert_eq!(bits(mq), libc::IFF_MULTI_QUEUE);
        let vnet = TapFlags {
            vnet_hdr: true,
            ..TapFlags::default()
        };
        assert_eq!(bits(vnet), libc::IFF_VNET_HDR);
        let both = TapFlags {
            multi_queue: true,
            vnet_hdr: true,
        };
        assert_eq!(bits(both), libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR);
        // The extras never touch the base bits.
        assert_eq!(bits(both) & i32::from(Tap::ifr_flags()), 0);
    }

    #[test]
    fn queue_counts_are_checked_before_opening() {
        for bad in [0, MAX_TAP_QUEUES + 1] {
            assert!(matches!(
                Tap::open_queues("eth0", bad, TapFlags::default()),
                Err(TapError::QueueCount(n)) if n == bad
            ));
        }
        let err = Tap::open_queues("eth0", 0, TapFlags::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid TAP queue count 0: it must be 1 to 256"
        );
    }
}
