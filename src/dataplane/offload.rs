//! Offloads on a TAP: the virtio-net header and `TUNSETOFFLOAD`.
//!
//! # Theory of operation
//!
//! A TAP opened with `IFF_VNET_HDR` puts a `struct virtio_net_hdr` in front
//! of every frame, in both directions ([`crate::stack::wire::vnet_hdr`]).
//! `TUNSETVNETHDRSZ` 12 makes it the 12-byte `virtio_net_hdr_v1` (the
//! kernel's default is the 10-byte legacy header), so the stack builds the
//! same bytes for a TAP as for a virtio-net queue.
//!
//! ```text
//!  namespace TCP ── 64 KiB GSO skb ──▶ tap ──read()──▶ | vnet hdr | frame ≤ 64 KiB |  (TUN_F_TSO4)
//!  namespace TCP ◀── GRO-like skb ─── tap ◀─write()── | vnet hdr | TSO super-frame |  (always accepted)
//! ```
//!
//! The two directions are configured differently:
//! - TAP → uipd (what the namespace may send): `TUNSETOFFLOAD` sets the
//!   device's features. `TUN_F_CSUM` lets the kernel hand over partial
//!   checksums (`NEEDS_CSUM`); `TUN_F_TSO4`/`TSO6` (only honoured together
//!   with `TUN_F_CSUM`) let it hand over TCP super-frames instead of cutting
//!   them at the MTU. Without them every frame is ≤ MTU with a full checksum.
//! - uipd → TAP (what we may send): with `IFF_VNET_HDR` the kernel accepts
//!   `NEEDS_CSUM` and GSO headers on write whatever `TUNSETOFFLOAD` says
//!   (`tun_get_user` → `virtio_net_hdr_to_skb`); a bad header fails the
//!   write with `EINVAL`.
//!
//! Endianness: a TAP reads and writes the header in the host's byte order
//! unless `TUNSETVNETLE` is set; virtio 1.x is little-endian. On
//! little-endian hosts (x86_64, aarch64) they agree; on a big-endian host
//! [`Tap::open_vnet`] sets `TUNSETVNETLE` so the header is always
//! little-endian, as the stack writes it.

use std::io;
use std::os::fd::RawFd;

use crate::dataplane::tap::{Tap, TapError};
use crate::stack::wire::vnet_hdr;

/// Errors from opening a TAP with a virtio-net header.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// Opening the device failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// `TUNSETVNETHDRSZ` (or `TUNSETVNETLE`) failed.
    #[error("cannot set the virtio-net header of TAP {name:?} to 12 bytes")]
    VnetHdr {
        /// The interface.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

/// Set the virtio-net header of a TAP opened with `IFF_VNET_HDR` to the
/// 12-byte `virtio_net_hdr_v1` (`TUNSETVNETHDRSZ`).
pub fn enable_vnet_hdr(fd: RawFd) -> io::Result<()> {
    let size: libc::c_int = 12;
    const _: () = assert!(vnet_hdr::HEADER_LEN == 12);
    // SAFETY:
    // - TUNSETVNETHDRSZ reads one `int` through the pointer; `size` is a live,
    //   aligned `c_int` that outlives the call.
    // - `fd` is the caller's open fd; an fd that is not a TAP fails with an
    //   error (ENOTTY/EBADFD), nothing else.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &raw const size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tell the TAP what the namespace may send us (`TUNSETOFFLOAD`): partial
/// checksums with `csum`, TCP super-frames (IPv4 and IPv6) with `tso`. `tso`
/// without `csum` is refused with `InvalidInput` (the kernel would silently
/// ignore it).
pub fn set_offload(fd: RawFd, csum: bool, tso: bool) -> io::Result<()> {
    if tso && !csum {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TSO needs checksum offload (TUN_F_CSUM)",
        ));
    }
    set_tun_offloads(
        fd,
        TunOffloads {
            csum,
            tso4: tso,
            tso6: tso,
            ecn: false,
        },
    )
}

/// The `TUNSETOFFLOAD` flags: what the kernel may hand over through a TAP
/// (partial checksums, TCP super-frames of each kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunOffloads {
    /// `TUN_F_CSUM`: partial checksums (`NEEDS_CSUM`).
    pub csum: bool,
    /// `TUN_F_TSO4`: TCP over IPv4 super-frames.
    pub tso4: bool,
    /// `TUN_F_TSO6`: TCP over IPv6 super-frames.
    pub tso6: bool,
    /// `TUN_F_TSO_ECN`: super-frames with ECN (CWR).
    pub ecn: bool,
}

impl TunOffloads {
    /// The flag word; TSO and ECN only with `csum` (the kernel honours
    /// them only together with `TUN_F_CSUM`), ECN only with some TSO.
    pub fn flags(self) -> libc::c_uint {
        let mut flags: libc::c_uint = 0;
        if !self.csum {
            return flags;
        }
        flags |= libc::TUN_F_CSUM;
        if self.tso4 {
            flags |= libc::TUN_F_TSO4;
        }
        if self.tso6 {
            flags |= libc::TUN_F_TSO6;
        }
        if self.ecn && (self.tso4 || self.tso6) {
            flags |= libc::TUN_F_TSO_ECN;
        }
        flags
    }
}

/// Set a TAP's `TUNSETOFFLOAD` flags from `o` (see [`TunOffloads::flags`]).
pub fn set_tun_offloads(fd: RawFd, o: TunOffloads) -> io::Result<()> {
    let flags = o.flags();
    // SAFETY:
    // - TUNSETOFFLOAD takes its argument by value (an unsigned long), not
    //   through a pointer: nothing is read or written in our memory.
    // - `fd` is the caller's open fd; an fd that is not a TAP fails with an
    //   error, nothing else.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TUNSETVNETLE` 1: header fields little-endian whatever the host's order.
#[cfg(target_endian = "big")]
fn set_vnet_le(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY:
    // - TUNSETVNETLE reads one `int` through the pointer; `on` is a live,
    //   aligned `c_int` that outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETLE, &raw const on) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// The `ifr_flags` used by [`Tap::open_vnet`].
    fn vnet_ifr_flags(multi_queue: bool) -> libc::c_short {
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // Cannot fail: 0x1002 | 0x4000 | 0x0100 fits in a c_short.
        libc::c_short::try_from(flags).unwrap_or(0x5102)
    }

    /// Like [`Tap::open`], with `IFF_VNET_HDR` (every frame read or written
    /// starts with a 12-byte virtio-net header, set by [`enable_vnet_hdr`])
    /// and, with `multi_queue`, `IFF_MULTI_QUEUE` (open the same name again
    /// for each further queue). Offloads stay off until [`set_offload`].
    pub fn open_vnet(name: &str, multi_queue: bool) -> Result<Tap, OffloadError> {
        let tap = Tap::open_ifr(name, Self::vnet_ifr_flags(multi_queue))?;
        let vnet_err = |source| OffloadError::VnetHdr {
            name: tap.name().to_owned(),
            source,
        };
        #[cfg(target_endian = "big")]
        set_vnet_le(tap.as_raw_fd()).map_err(vnet_err)?;
        enable_vnet_hdr(tap.as_raw_fd()).map_err(vnet_err)?;
        log::debug!(
            "tap: opened {} with a virtio-net header (fd {})",
            tap.name(),
            tap.as_raw_fd()
        );
        Ok(tap)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn vnet_flags() {
        let f = i32::from(Tap::vnet_ifr_flags(false));
        assert_eq!(
            f,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
            "TAP, no PI, vnet header"
        );
        let f = i32::from(Tap::vnet_ifr_flags(true));
        assert_eq!(f & libc::IFF_MULTI_QUEUE, libc::IFF_MULTI_QUEUE);
    }

    #[test]
    fn tso_without_csum_is_refused() {
        let e = set_offload(-1, false, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn ioctls_on_a_non_tap_fail_cleanly() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(enable_vnet_hdr(f.as_raw_fd()).is_err());
        assert!(set_offload(f.as_raw_fd(), true, true).is_err());
    }
}
