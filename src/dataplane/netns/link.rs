//! Link set-up in the calling thread's network namespace: the TAP's MAC,
//! MTU and up state, `lo` up, and (when configuring) the IPv4 address and
//! default route, through the interface ioctls of [`IfSock`]; IPv6 gets
//! its address from uipd's router advertisements, so only two of its
//! per-interface knobs are set here ([`quick_ipv6`]).
//!
//! An [`IfSock`] belongs to the namespace current when it was made, so each
//! call makes its own, after any namespace switch.

use std::fs;

use super::config::format_mac;
use super::{NetConfig, NetnsError};
use crate::dataplane::tap::{Tap, ifname_cstring};
use crate::sys::ioctl::IfSock;

/// Gives the TAP its MAC and MTU and brings it up (and `lo`, if `with_lo`); then,
/// if `cfg.configure`, its IPv4 address and the default route. Runs in the calling
/// thread's network namespace.
pub(super) fn configure_link(cfg: &NetConfig, tap: &Tap, with_lo: bool) -> Result<(), NetnsError> {
    let step = |step: String| move |source| NetnsError::Setup { step, source };
    let name = tap.name();
    let cname = ifname_cstring(name)?;
    let sock = IfSock::new().map_err(step("create an AF_INET socket".into()))?;
    if let Some(mac) = cfg.guest_mac {
        sock.set_mac(&cname, mac)
            .map_err(step(format!("set MAC {} on {name}", format_mac(mac))))?;
    }
    sock.set_mtu(&cname, cfg.mtu)
        .map_err(step(format!("set MTU {} on {name}", cfg.mtu)))?;
    if with_lo {
        sock.set_up(c"lo").map_err(step("bring lo up".into()))?;
    }
    if cfg.configure {
        quick_ipv6(name);
    }
    sock.set_up(&cname)
        .map_err(step(format!("bring {name} up")))?;
    if cfg.configure {
        sock.set_ipv4(&cname, cfg.guest_ip, cfg.netmask())
            .map_err(step(format!(
                "assign {}/{} to {name}",
                cfg.guest_ip, cfg.prefix_len
            )))?;
        sock.add_default_route(&cname, cfg.gateway)
            .map_err(step(format!(
                "add the default route via {} on {name}",
                cfg.gateway
            )))?;
    }
    Ok(())
}

/// Before `name` comes up: no duplicate address detection (uipd is the only
/// other node on the link and never claims the guest's addresses) and no
/// random delay before the first router solicitation (RFC 4861 §6.3.7 asks
/// for it against storms of hosts booting together, not an issue here).
/// Best effort: a kernel without IPv6 has no such files, and that is fine.
fn quick_ipv6(name: &str) {
    for (knob, value) in [("accept_dad", "0"), ("router_solicitation_delay", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/{knob}");
        if let Err(e) = fs::write(&path, value) {
            log::debug!("netns: cannot write {value} to {path}: {e}");
        }
    }
}
