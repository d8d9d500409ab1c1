//! The namespace frontend: run a command in new namespaces, or attach to an
//! existing network namespace, with a TAP device whose fd uipd holds.
//!
//! # Theory of Operation
//!
//! `uipd -- COMMAND` (what slirp4netns and pasta do): the command gets its own
//! network namespace whose only interfaces are `lo` and a TAP; uipd holds the
//! TAP's fd and is the whole outside world for that namespace.
//!
//! `unshare(CLONE_NEWUSER)` fails with `EINVAL` in a multi-threaded process, and
//! uipd has threads, so [`spawn`] re-executes the current binary as a
//! single-threaded helper (`/proc/self/exe __uipd-netns-child ...`, dispatched by
//! `main` to [`child_main`]) with one end of a `SOCK_SEQPACKET` socketpair
//! inherited. The helper's PID is the command's PID: it sets up the namespaces in
//! place and finally `exec`s the command.
//!
//! ```text
//!  uipd (parent)                          helper (child, single-threaded)
//!  ─────────────                          ───────────────────────────────
//!  socketpair, fork+exec /proc/self/exe ─▶ PR_SET_PDEATHSIG(SIGKILL)
//!                                         [not root] unshare(USER), uid/gid map 0 → outer
//!                                         unshare(NET | NS), mount / rprivate
//!                                         fresh sysfs on /sys (old submounts bound back)
//!                                         open TAP (cfg.queues queues); MAC, MTU;
//!                                         lo and TAP up
//!                                         [configure] IPv4 addr, default route,
//!                                                     bind resolv.conf
//!                                   ◀────── one queue record per queue, each with
//!                                           SCM_RIGHTS(that queue's fd)
//!  spawn() returns                          (or one error record, no fd)
//!    Spawned { tap, taps }
//!  ... dataplane comes up ...
//!  Spawned::start() ────── go byte ─────▶ PR_SET_PDEATHSIG(SIGKILL), exec COMMAND
//!  Spawned::wait() ◀────── exit status ── (127: command not found)
//! ```
//!
//! Invariants:
//! - Only the helper's end of the socketpair is inherited: it is created
//!   close-on-exec and the flag is cleared in the forked child only (`pre_exec`),
//!   so other threads spawning processes never leak it.
//! - The command never starts before [`Spawned::start`]; if uipd dies or drops
//!   the [`Spawned`] first, the helper reads EOF and exits. After the exec, the
//!   parent-death signal kills the command when the thread that called [`spawn`]
//!   exits (Linux ties `PR_SET_PDEATHSIG` to the parent *thread*): call [`spawn`]
//!   from a thread that lives as long as the command should.
//! - The helper's mount namespace is private (`/` is `MS_REC | MS_PRIVATE`), so
//!   the `/etc/resolv.conf` bind mount is seen by the command only.
//!
//! `/etc/resolv.conf`: the helper writes `nameserver <dns>` to a fresh file
//! (`$XDG_RUNTIME_DIR`, else the temp dir), bind-mounts it over
//! `/etc/resolv.conf` and unlinks the file (the mount keeps it alive).
//! `mount(2)` follows symlinks in the target path, so a symlinked resolv.conf
//! (systemd-resolved's `/run/systemd/resolve/stub-resolv.conf`) is covered at its
//! target. A missing file or a dangling symlink cannot be bound over without
//! writing to the host's `/etc`; the helper then warns and goes on.
//!
//! `/sys`: sysfs shows the network devices of the namespace that mounted it, so
//! the helper mounts a fresh sysfs on `/sys` (read-only if the old one was) and
//! binds the old `/sys` submounts (cgroups, ...) back on top through `O_PATH` fds
//! opened before. If the kernel refuses, a warning says `/sys/class/net` shows
//! the host's devices, and setup goes on.
//!
//! Helper exit codes before the exec: 1 = setup failed (reported to the parent
//! as an error record) or the go channel closed without a go byte; 2 = bad
//! helper arguments. After a failed exec: 127 = not found, 126 = other errors.
//!
//! Queues: [`NetConfig::queues`] > 1 makes the TAP multiqueue (`IFF_MULTI_QUEUE`,
//! one fd per queue, see [`crate::dataplane::tap`]); [`NetConfig::vnet_hdr`] adds
//! `IFF_VNET_HDR` to every queue. [`Spawned::taps`] and [`attach_queues`] return
//! all queues, queue 0 first.
//!
//! [`attach`] (`--netns PATH|PID`) joins the target network namespace on the
//! calling thread only (`setns` affects one thread's `nsproxy`), opens the TAP
//! there, configures it, and returns to the namespace it came from through an fd
//! opened before. The TAP stays in the target namespace: a tun device belongs to
//! the namespace that was current when `/dev/net/tun` was opened.
//!
//! IPv6: the TAP's address and default route come from uipd's router
//! advertisements (SLAAC in the stack's `fd00:33::/64`, via `fe80::1`);
//! [`configure_link`] only turns off duplicate address detection and the
//! router solicitation delay on the TAP, so both are usable at once rather
//! than after a second or two (nothing else is on that link to clash with).
//!
//! Limits: `attach` joins only the
//! network namespace, so entering a namespace owned by another user namespace
//! needs `CAP_SYS_ADMIN` over that user namespace (run uipd inside it).

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::dataplane::tap::{
    MAX_TAP_QUEUES, Tap, TapError, TapFlags, fill_ifr_name, ifname_cstring,
};

/// The hidden first argument that makes the uipd binary run [`child_main`].
pub const CHILD_ARG: &str = "__uipd-netns-child";

/// How long [`spawn`] waits for the helper to report the TAP (or an error).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Smallest IPv4 MTU (RFC 791: every host must accept 68-byte datagrams).
const MIN_MTU: u16 = 68;

/// How the namespace's network is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of the TAP inside the namespace.
    pub ifname: String,
    /// MTU of the TAP.
    pub mtu: u16,
    /// Assign the address, default route and resolv.conf; `false` is `--no-config-net`
    /// (the TAP is still created, given its MTU/MAC and brought up).
    pub configure: bool,
    /// The namespace's IPv4 address.
    pub guest_ip: Ipv4Addr,
    /// Prefix length of `guest_ip`'s subnet.
    pub prefix_len: u8,
    /// Default gateway (uipd's address).
    pub gateway: Ipv4Addr,
    /// The nameserver written to the namespace's `/etc/resolv.conf`.
    pub dns: Ipv4Addr,
    /// MAC address of the TAP; `None` keeps the kernel's random one.
    pub guest_mac: Option<[u8; 6]>,
    /// Number of TAP queues, 1 to [`MAX_TAP_QUEUES`]; more than 1 makes the TAP
    /// multiqueue (`IFF_MULTI_QUEUE`), one fd per queue.
    pub queues: usize,
    /// Open every queue with `IFF_VNET_HDR`: frames on the fds carry a virtio-net
    /// header (10 bytes, the kernel's default size) before the Ethernet header.
    pub vnet_hdr: bool,
    /// [`attach`]: bring the target's `lo` up as well (slirp4netns `-c`
    /// does, and podman relies on it: nothing else brings a container's
    /// `lo` up). [`spawn`] always does: its namespace is new.
    pub loopback: bool,
}

impl Default for NetConfig {
    /// The kvmtool-compatible defaults of DESIGN.md: 192.168.33.15/24 via 192.168.33.1.
    fn default() -> Self {
        NetConfig {
            ifname: "eth0".to_owned(),
            mtu: 1500,
            configure: true,
            guest_ip: Ipv4Addr::new(192, 168, 33, 15),
            prefix_len: 24,
            gateway: Ipv4Addr::new(192, 168, 33, 1),
            dns: Ipv4Addr::new(192, 168, 33, 1),
            guest_mac: None,
            queues: 1,
            vnet_hdr: false,
            loopback: false,
        }
    }
}

/// Errors from the namespace frontend.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// No command was given.
    #[error("no command given to run in the namespace")]
    EmptyCommand,
    /// The command is not an executable file, neither as a path nor in `$PATH`.
    #[error("command not found: {0}")]
    CommandNotFound(String),
    /// A [`NetConfig`] field is out of range.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The kernel refused to create namespaces.
    #[error(
        "no permission to create {what}: unprivileged user namespaces may be disabled \
         (sysctl kernel.unprivileged_userns_clone=1 where it exists, user.max_user_namespaces > 0, \
         and no AppArmor/SELinux rule against them), or run uipd as root"
    )]
    NoPermission {
        /// Which namespaces.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The TAP device could not be created.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A step of the namespace setup failed.
    #[error("namespace setup failed: cannot {step}")]
    Setup {
        /// What was being done.
        step: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The helper process could not be started or talked to.
    #[error("namespace helper: cannot {what}")]
    Helper {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper exited before it reported the TAP.
    #[error("namespace helper exited before the TAP was ready ({0})")]
    HelperExited(String),
    /// The helper did not report within 30 s.
    #[error("namespace helper did not report within {} s", HELPER_TIMEOUT.as_secs())]
    HelperTimeout,
    /// The helper sent something that is not a valid report.
    #[error("namespace helper sent a malformed report: {0}")]
    Protocol(String),
    /// [`Spawned::start`] was called twice, or after [`Spawned::wait`].
    #[error("the command was already started or waited for")]
    AlreadyStarted,
    /// The `--netns` target does not exist.
    #[error("network namespace {target:?} does not exist")]
    TargetNotFound {
        /// The target as given.
        target: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The `--netns` target exists but could not be opened or entered.
    #[error("cannot enter network namespace {target:?}: {hint}")]
    Target {
        /// The target as given.
        target: String,
        /// What to check.
        hint: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The calling thread could not return to its own network namespace after [`attach`].
    #[error(
        "cannot return to the original network namespace: this thread is left in the target one"
    )]
    Restore(#[source] io::Error),
}

impl NetConfig {
    fn validate(&self) -> Result<(), NetnsError> {
        ifname_cstring(&self.ifname)?;
        if self.mtu < MIN_MTU {
            return Err(NetnsError::InvalidConfig(format!(
                "MTU {} is below the IPv4 minimum of {MIN_MTU}",
                self.mtu
            )));
        }
        if self.prefix_len > 32 {
            return Err(NetnsError::InvalidConfig(format!(
                "IPv4 prefix length {} is over 32",
                self.prefix_len
            )));
        }
        if self.queues == 0 || self.queues > MAX_TAP_QUEUES {
            return Err(NetnsError::InvalidConfig(format!(
                "{} TAP queues: it must be 1 to {MAX_TAP_QUEUES}",
                self.queues
            )));
        }
        Ok(())
    }

    /// The TAP flags for these settings (multiqueue exactly when `queues > 1`).
    fn tap_flags(&self) -> TapFlags {
        TapFlags {
            multi_queue: self.queues > 1,
            vnet_hdr: self.vnet_hdr,
        }
    }

    /// Opens every queue of the TAP in the calling thread's network namespace.
    fn open_taps(&self) -> Result<Vec<Tap>, TapError> {
        Tap::open_queues(&self.ifname, self.queues, self.tap_flags())
    }

    /// The netmask of `prefix_len` (validated to be at most 32).
    fn netmask(&self) -> Ipv4Addr {
        let shift = 32 - u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(shift).unwrap_or(0))
    }

    /// Serialises the config for the helper's command line (see [`NetConfig::from_args`]).
    fn to_args(&self) -> Vec<OsString> {
        let mac = self.guest_mac.map_or_else(|| "-".to_owned(), format_mac);
        [
            self.ifname.clone(),
            self.mtu.to_string(),
            u8::from(self.configure).to_string(),
            self.guest_ip.to_string(),
            self.prefix_len.to_string(),
            self.gateway.to_string(),
            self.dns.to_string(),
            mac,
            self.queues.to_string(),
            u8::from(self.vnet_hdr).to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }

    const ARGS: usize = 10;

    fn from_args(args: &[OsString]) -> Result<NetConfig, String> {
        let s: Vec<&str> = args
            .iter()
            .map(|a| {
                a.to_str()
                    .ok_or_else(|| format!("non-UTF-8 argument {a:?}"))
            })
            .collect::<Result<_, _>>()?;
        let [
            ifname,
            mtu,
            configure,
            ip,
            prefix,
            gw,
            dns,
            mac,
            queues,
            vnet_hdr,
        ] = s[..]
        else {
            return Err(format!("expected {} config arguments", Self::ARGS));
        };
        let err = |what: &str, v: &str| format!("bad {what} {v:?}");
        let cfg = NetConfig {
            ifname: ifname.to_owned(),
            mtu: mtu.parse().map_err(|_| err("MTU", mtu))?,
            configure: match configure {
                "1" => true,
                "0" => false,
                v => return Err(err("configure flag", v)),
            },
            guest_ip: ip.parse().map_err(|_| err("address", ip))?,
            prefix_len: prefix.parse().map_err(|_| err("prefix", prefix))?,
            gateway: gw.parse().map_err(|_| err("gateway", gw))?,
            dns: dns.parse().map_err(|_| err("DNS address", dns))?,
            guest_mac: match mac {
                "-" => None,
                m => Some(parse_mac(m).ok_or_else(|| err("MAC", m))?),
            },
            queues: queues
                .parse()
                .ok()
                .filter(|q| (1..=MAX_TAP_QUEUES).contains(q))
                .ok_or_else(|| err("queue count", queues))?,
            vnet_hdr: match vnet_hdr {
                "1" => true,
                "0" => false,
                v => return Err(err("vnet_hdr flag", v)),
            },
            // Only `attach` reads it: the helper's namespace is new, and it
            // always brings `lo` up.
            loopback: false,
        };
        Ok(cfg)
    }
}

fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether `cmd` names an executable file, directly (with a `/`) or through `$PATH`.
fn command_exists(cmd: &OsStr) -> bool {
    let is_exec = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.as_bytes().contains(&b'/') {
        return is_exec(Path::new(cmd));
    }
    // execvp's default search path when PATH is unset.
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
    std::env::split_paths(&path).any(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        is_exec(&dir.join(cmd))
    })
}

// ---------------------------------------------------------------------------
// Interface configuration through ioctls on an AF_INET socket. The socket
// belongs to the network namespace that was current for the calling thread when
// it was created, so each helper creates its own after switching namespaces.
// ---------------------------------------------------------------------------

/// An `AF_INET` datagram socket used only as a handle for interface ioctls.
struct IfSock(OwnedFd);

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY:
    // - `sockaddr_in` and `sockaddr` are both 16-byte plain C structs with no
    //   padding-sensitive invariants; every bit pattern is a valid `sockaddr`.
    // - This is exactly the reinterpretation the socket ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn zeroed_ifreq(name: &str) -> io::Result<libc::ifreq> {
    let cname = ifname_cstring(name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY:
    // - `ifreq` is a plain C struct (arrays, integers, a union of those and
    //   pointers); all-zero bytes are a valid value for every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    fill_ifr_name(&mut ifr, &cname);
    Ok(ifr)
}

impl IfSock {
    fn new() -> io::Result<IfSock> {
        // SAFETY:
        // - Plain syscall with constant arguments; no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY:
        // - `fd` was just returned by socket(2), is open, and is owned by nobody else.
        Ok(IfSock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ifreq_ioctl(&self, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY:
        // - `self.0` is an open socket owned by `self`.
        // - `req` is one of the SIOC*IF* requests, each of which reads and/or
        //   writes exactly one `struct ifreq`; `ifr` is a live, aligned,
        //   exclusively borrowed `ifreq` for the duration of the call.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), req, std::ptr::from_mut(ifr)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mut ifr = zeroed_ifreq(name)?;
        ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ifreq_ioctl(libc::SIOCSIFMTU, &mut ifr)
    }

    fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut ifr = zeroed_ifreq(name)?;
        // SAFETY:
        // - `sockaddr` is a plain C struct; all-zero bytes are valid.
        let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        ifr.ifr_ifru.ifru_hwaddr = sa;
        self.ifreq_ioctl(libc::SIOCSIFHWADDR, &mut ifr)
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut ifr = zeroed_ifreq(name)?;
        self.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr)?;
        let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        // SAFETY:
        // - SIOCGIFFLAGS just filled the `ifru_flags` member of the union, and
        //   any bit pattern is a valid `c_short`.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | up;
        self.ifreq_ioctl(libc::SIOCSIFFLAGS, &mut ifr)
    }

    fn set_ipv4(&self, name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
        let mut ifr = zeroed_ifreq(name)?;
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        self.ifreq_ioctl(libc::SIOCSIFADDR, &mut ifr)?;
        // SIOCSIFADDR set the classful mask and its broadcast; the netmask ioctl
        // narrows or widens it and the kernel recomputes that broadcast.
        let mut ifr = zeroed_ifreq(name)?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
        self.ifreq_ioctl(libc::SIOCSIFNETMASK, &mut ifr)
    }

    fn add_default_route(&self, name: &str, gateway: Ipv4Addr) -> io::Result<()> {
        let cname = ifname_cstring(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY:
        // - `rtentry` is a plain C struct of integers, sockaddrs and one pointer;
        //   all-zero bytes are valid (a null `rt_dev` means "any device").
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = cname.as_ptr().cast_mut();
        // SAFETY:
        // - `self.0` is an open socket owned by `self`.
        // - SIOCADDRT reads one `struct rtentry`; `rt` is live and aligned for
        //   the call, and `rt.rt_dev` points to `cname`, a NUL-terminated string
        //   that outlives the call and that the kernel only reads.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCADDRT, &raw mut rt) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Gives the TAP its MAC and MTU and brings it up (and `lo`, if `with_lo`); then,
/// if `cfg.configure`, its IPv4 address and the default route. Runs in the calling
/// thread's network namespace.
fn configure_link(cfg: &NetConfig, tap: &Tap, with_lo: bool) -> Result<(), NetnsError> {
    let step = |step: String| move |source| NetnsError::Setup { step, source };
    let name = tap.name();
    let sock = IfSock::new().map_err(step("create an AF_INET socket".into()))?;
    if let Some(mac) = cfg.guest_mac {
        sock.set_mac(name, mac)
            .map_err(step(format!("set MAC {} on {name}", format_mac(mac))))?;
    }
    sock.set_mtu(name, cfg.mtu)
        .map_err(step(format!("set MTU {} on {name}", cfg.mtu)))?;
    if with_lo {
        sock.set_up("lo").map_err(step("bring lo up".into()))?;
    }
    if cfg.configure {
        quick_ipv6(name);
    }
    sock.set_up(name)
        .map_err(step(format!("bring {name} up")))?;
    if cfg.configure {
        sock.set_ipv4(name, cfg.guest_ip, cfg.netmask())
            .map_err(step(format!(
                "assign {}/{} to {name}",
                cfg.guest_ip, cfg.prefix_len
            )))?;
        sock.add_default_route(name, cfg.gateway)
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

// ---------------------------------------------------------------------------
// The parent <-> helper protocol over a SOCK_SEQPACKET socketpair (message
// boundaries kept). The helper reports first, either
//   - one queue record per TAP queue, in queue order, each with exactly that
//     queue's fd attached as SCM_RIGHTS (see `encode_queue`), or
//   - one error record and no fd (see `encode_error`),
// and the parent then sends the go byte. One fd per message keeps every
// message far below SCM_MAX_FD (253) for any queue count up to 256. The parent
// checks every record against what it asked for; anything else (a missing or
// extra fd, an index out of order, a count or name that changes) is a
// `NetnsError::Protocol`, and EOF before the last queue means the helper exited.
// ---------------------------------------------------------------------------

const REPORT_OK: u8 = 0;
const REPORT_NO_PERMISSION: u8 = 1;
const REPORT_NO_TUN: u8 = 2;
const REPORT_TUN_PERMISSION: u8 = 3;
const REPORT_OPEN_TUN: u8 = 4;
const REPORT_SET_IFF: u8 = 5;
const REPORT_INVALID_NAME: u8 = 6;
const REPORT_SETUP: u8 = 7;
const REPORT_QUEUE_COUNT: u8 = 8;
const GO_BYTE: u8 = 1;
const MAX_REPORT: usize = 1024;

/// An error record: a code, an errno and a detail string.
///
/// ```text
///   [code u8][errno i32 LE][detail UTF-8 ...]
/// ```
fn encode_error(err: &NetnsError) -> Vec<u8> {
    let (code, errno, detail): (u8, i32, String) = match err {
        NetnsError::NoPermission { what, source } => (
            REPORT_NO_PERMISSION,
            source.raw_os_error().unwrap_or(0),
            what.clone(),
        ),
        NetnsError::Tap(TapError::NoTunDevice(e)) => {
            (REPORT_NO_TUN, e.raw_os_error().unwrap_or(0), String::new())
        }
        NetnsError::Tap(TapError::TunPermission(e)) => (
            REPORT_TUN_PERMISSION,
            e.raw_os_error().unwrap_or(0),
            String::new(),
        ),
        NetnsError::Tap(TapError::OpenTun(e)) => (
            REPORT_OPEN_TUN,
            e.raw_os_error().unwrap_or(0),
            String::new(),
        ),
        NetnsError::Tap(TapError::SetIff { name, source }) => (
            REPORT_SET_IFF,
            source.raw_os_error().unwrap_or(0),
            name.clone(),
        ),
        NetnsError::Tap(TapError::InvalidName(name)) => (REPORT_INVALID_NAME, 0, name.clone()),
        NetnsError::Tap(TapError::QueueCount(n)) => (REPORT_QUEUE_COUNT, 0, n.to_string()),
        NetnsError::Setup { step, source } => (
            REPORT_SETUP,
            source.raw_os_error().unwrap_or(0),
            step.clone(),
        ),
        other => (REPORT_SETUP, 0, other.to_string()),
    };
    let mut out = vec![code];
    out.extend_from_slice(&errno.to_le_bytes());
    let mut detail = detail.into_bytes();
    detail.truncate(MAX_REPORT - 5);
    out.extend_from_slice(&detail);
    out
}

fn decode_error(msg: &[u8]) -> NetnsError {
    let Some((&code, rest)) = msg.split_first() else {
        return NetnsError::Protocol("empty report".into());
    };
    let Some((errno, detail)) = rest.split_first_chunk::<4>() else {
        return NetnsError::Protocol(format!("short error record ({} bytes)", msg.len()));
    };
    let source = io::Error::from_raw_os_error(i32::from_le_bytes(*errno));
    let detail = String::from_utf8_lossy(detail).into_owned();
    match code {
        REPORT_NO_PERMISSION => NetnsError::NoPermission {
            what: detail,
            source,
        },
        REPORT_NO_TUN => TapError::NoTunDevice(source).into(),
        REPORT_TUN_PERMISSION => TapError::TunPermission(source).into(),
        REPORT_OPEN_TUN => TapError::OpenTun(source).into(),
        REPORT_SET_IFF => TapError::SetIff {
            name: detail,
            source,
        }
        .into(),
        REPORT_INVALID_NAME => TapError::InvalidName(detail).into(),
        REPORT_QUEUE_COUNT => match detail.parse() {
            Ok(n) => TapError::QueueCount(n).into(),
            Err(_) => {
                NetnsError::Protocol(format!("bad queue count {detail:?} in an error record"))
            }
        },
        REPORT_SETUP => NetnsError::Setup {
            step: detail,
            source,
        },
        c => NetnsError::Protocol(format!("unknown report code {c}")),
    }
}

/// A queue record: queue `index` of `count`, of TAP `name`; its fd goes with it.
///
/// ```text
///   [REPORT_OK u8][index u16 LE][count u16 LE][TAP name UTF-8 ...]
/// ```
fn encode_queue(index: usize, count: usize, name: &str) -> io::Result<Vec<u8>> {
    let field = |v: usize| {
        u16::try_from(v).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue number {v} out of range"),
            )
        })
    };
    let mut out = vec![REPORT_OK];
    out.extend_from_slice(&field(index)?.to_le_bytes());
    out.extend_from_slice(&field(count)?.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    if out.len() > MAX_REPORT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TAP name too long",
        ));
    }
    Ok(out)
}

/// The helper's report on success: one queue record per TAP, each with its fd.
fn send_taps(sock: BorrowedFd<'_>, taps: &[Tap]) -> io::Result<()> {
    for (index, tap) in taps.iter().enumerate() {
        let record = encode_queue(index, taps.len(), tap.name())?;
        send_msg(sock, &record, Some(tap.as_fd()))?;
    }
    Ok(())
}

/// Receives the helper's report: `queues` queue records, or an error record.
///
/// `Ok(None)`: the helper closed its end first (it exited). The whole report must
/// arrive before `deadline` ([`NetnsError::HelperTimeout`] otherwise).
fn recv_taps(
    sock: BorrowedFd<'_>,
    queues: usize,
    deadline: std::time::Instant,
) -> Result<Option<Vec<Tap>>, NetnsError> {
    let helper_err = |what| move |source| NetnsError::Helper { what, source };
    let mut taps: Vec<Tap> = Vec::with_capacity(queues);
    let mut buf = [0u8; MAX_REPORT];
    while taps.len() < queues {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SO_RCVTIMEO rounds to microseconds, and zero would mean "no timeout".
        if left < Duration::from_millis(1) {
            return Err(NetnsError::HelperTimeout);
        }
        set_recv_timeout(sock, left).map_err(helper_err("set a receive timeout"))?;
        let (n, fd) = match recv_msg(sock, &mut buf) {
            Ok(r) => r,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(NetnsError::HelperTimeout);
            }
            Err(e) => return Err(helper_err("receive its report")(e)),
        };
        let index = taps.len();
        let msg = &buf[..n];
        let fd = match (msg.first(), fd) {
            (None, _) => return Ok(None),
            (Some(&REPORT_OK), Some(fd)) => fd,
            (Some(&REPORT_OK), None) => {
                return Err(NetnsError::Protocol(format!(
                    "queue record {index} of {n} bytes without its fd"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(NetnsError::Protocol(
                    "an fd came with an error record".into(),
                ));
            }
            (Some(_), None) if index == 0 => return Err(decode_error(msg)),
            (Some(_), None) => {
                return Err(NetnsError::Protocol(format!(
                    "error record after {index} queue records"
                )));
            }
        };
        let Some((head, name)) = msg[1..].split_first_chunk::<4>() else {
            return Err(NetnsError::Protocol(format!(
                "short queue record ({n} bytes)"
            )));
        };
        let got = usize::from(u16::from_le_bytes([head[0], head[1]]));
        let count = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if got != index {
            return Err(NetnsError::Protocol(format!(
                "queue record {got} where {index} was expected"
            )));
        }
        if count != queues {
            return Err(NetnsError::Protocol(format!(
                "{count} queues reported, {queues} asked for"
            )));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(first) = taps.first()
            && first.name() != name
        {
            return Err(NetnsError::Protocol(format!(
                "queue {index} is on {name:?}, queue 0 on {:?}",
                first.name()
            )));
        }
        taps.push(Tap::from_fd(fd, name));
    }
    Ok(Some(taps))
}

/// Sends one message, with `fd` attached as `SCM_RIGHTS` if given.
pub(crate) fn send_msg(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    // u64 elements give the control buffer the alignment of `cmsghdr`.
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY:
    // - `msghdr` is a plain C struct; all-zero bytes are valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let fd_len = libc::c_uint::try_from(size_of::<RawFd>()).unwrap_or(4);
        // SAFETY:
        // - CMSG_SPACE/CMSG_LEN only compute sizes from their argument.
        let (space, len) = unsafe { (libc::CMSG_SPACE(fd_len), libc::CMSG_LEN(fd_len)) };
        let space = usize::try_from(space).unwrap_or(usize::MAX);
        assert!(space <= size_of_val(&cbuf), "control buffer too small");
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY:
        // - `msg.msg_control` points to `cbuf`, which is 8-byte aligned, zeroed,
        //   and at least CMSG_SPACE(sizeof(int)) bytes long (asserted above), so
        //   CMSG_FIRSTHDR returns a non-null header inside it and CMSG_DATA
        //   points to `sizeof(int)` writable bytes inside it.
        // - The data pointer may be unaligned for `i32`; `write_unaligned` is used.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = usize::try_from(len).unwrap_or(usize::MAX);
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY:
        // - `sock` is an open socket borrowed for the call.
        // - `msg` points to `iov` (over `data`) and, if set, to `cbuf`, all live
        //   for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one message into `buf`; returns its length (0 = peer closed) and the
/// fd that came with it, if any (received close-on-exec).
pub(crate) fn recv_msg(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY:
    // - `msghdr` is a plain C struct; all-zero bytes are valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    let n = loop {
        // SAFETY:
        // - `sock` is an open socket borrowed for the call.
        // - `msg` points to `iov` (over `buf`, exclusively borrowed) and `cbuf`,
        //   both live and writable for the call with the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY:
    // - `msg` was filled by a successful recvmsg: `msg_control`/`msg_controllen`
    //   describe the valid part of `cbuf`, so CMSG_FIRSTHDR/CMSG_NXTHDR walk only
    //   headers inside it and return null at its end.
    // - For an SCM_RIGHTS header, the kernel wrote `(cmsg_len - CMSG_LEN(0)) / 4`
    //   fds after CMSG_DATA; they are read unaligned and each is a new fd that
    //   this process now owns exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = usize::try_from(libc::CMSG_LEN(0)).unwrap_or(usize::MAX);
                let count = (*cmsg).cmsg_len.saturating_sub(header) / size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control data truncated",
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message truncated",
        ));
    }
    // More than one fd is a protocol error; the extra OwnedFds are closed on drop.
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than one fd received",
        ));
    }
    Ok((n, fds.pop()))
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// A command prepared in new namespaces, held before its `exec` until [`Spawned::start`].
///
/// Dropping it before the command was reaped kills the command (`SIGKILL`) and reaps it.
#[derive(Debug)]
pub struct Spawned {
    /// Queue 0 of the TAP in the command's namespace (uipd's end of its link): a
    /// duplicate of `taps[0]`'s fd (same open file, same queue), kept for callers
    /// that use one queue.
    pub tap: Tap,
    /// Every queue of the TAP ([`NetConfig::queues`] of them), queue 0 first.
    pub taps: Vec<Tap>,
    /// The command's PID (the helper execs the command in place).
    pub pid: i32,
    child: Child,
    /// The go channel; `None` once the go byte was sent or the helper was told to quit.
    sock: Option<OwnedFd>,
    /// The exit code, once reaped.
    exit: Option<i32>,
}

/// `code` for a normal exit, `128 + signal` for a death by signal (as shells report).
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl Spawned {
    /// Lets the command run: sends the go byte, on which the helper execs it.
    pub fn start(&mut self) -> Result<(), NetnsError> {
        let sock = self.sock.take().ok_or(NetnsError::AlreadyStarted)?;
        send_msg(sock.as_fd(), &[GO_BYTE], None).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPIPE) || e.raw_os_error() == Some(libc::ECONNRESET) {
                NetnsError::HelperExited("it closed the go channel".into())
            } else {
                NetnsError::Helper {
                    what: "send the go byte",
                    source: e,
                }
            }
        })
    }

    /// Tells the helper to exit (code 1) without running the command, by closing the
    /// go channel. Does nothing after [`Spawned::start`].
    pub fn cancel(&mut self) {
        self.sock = None;
    }

    /// Waits for the command to exit; returns its exit code (`128 + signal` if killed).
    ///
    /// If [`Spawned::start`] was not called, this [cancels](Spawned::cancel) first, so
    /// it does not block forever.
    pub fn wait(&mut self) -> Result<i32, NetnsError> {
        if let Some(code) = self.exit {
            return Ok(code);
        }
        self.cancel();
        let status = self.child.wait().map_err(|source| NetnsError::Helper {
            what: "wait for the command",
            source,
        })?;
        let code = exit_code(status);
        self.exit = Some(code);
        Ok(code)
    }

    /// Returns the exit code if the command has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<i32>, NetnsError> {
        if let Some(code) = self.exit {
            return Ok(Some(code));
        }
        let status = self.child.try_wait().map_err(|source| NetnsError::Helper {
            what: "poll the command",
            source,
        })?;
        self.exit = status.map(exit_code);
        Ok(self.exit)
    }

    /// Sends signal `sig` to the command. Does nothing once the command was reaped
    /// (its PID may belong to someone else by then).
    pub fn kill(&mut self, sig: i32) -> Result<(), NetnsError> {
        if self.exit.is_some() {
            return Ok(());
        }
        // SAFETY:
        // - Plain syscall, no pointers. `self.pid` is our unreaped child, so the
        //   PID cannot have been reused by another process.
        if unsafe { libc::kill(self.pid, sig) } < 0 {
            return Err(NetnsError::Helper {
                what: "signal the command",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A close-on-exec `SOCK_SEQPACKET` UNIX socket pair.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY:
    // - `fds` is a live, writable array of two ints, as socketpair(2) requires.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY:
    // - socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_recv_timeout(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    let len = libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16);
    // SAFETY:
    // - `sock` is an open socket; SO_RCVTIMEO reads one `timeval` of `len`
    //   bytes from `tv`, which is live for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `argv` in new network and mount namespaces (and a new user namespace
/// when not root), re-executing `/proc/self/exe` as the helper.
///
/// Returns once the TAP exists, with its fd; the command is not exec'd until
/// [`Spawned::start`]. The binary must dispatch [`CHILD_ARG`] to [`child_main`].
pub fn spawn(cfg: &NetConfig, argv: &[OsString]) -> Result<Spawned, NetnsError> {
    spawn_with_helper(cfg, argv, Path::new("/proc/self/exe"))
}

/// [`spawn`] with an explicit helper binary (one whose `main` dispatches
/// [`CHILD_ARG`] to [`child_main`]); for tests and embedders whose own binary does not.
pub fn spawn_with_helper(
    cfg: &NetConfig,
    argv: &[OsString],
    helper: &Path,
) -> Result<Spawned, NetnsError> {
    cfg.validate()?;
    let cmd = argv.first().ok_or(NetnsError::EmptyCommand)?;
    if !command_exists(cmd) {
        return Err(NetnsError::CommandNotFound(
            cmd.to_string_lossy().into_owned(),
        ));
    }
    let helper_err = |what| move |source| NetnsError::Helper { what, source };
    let (parent_sock, child_sock) = socketpair().map_err(helper_err("create a socketpair"))?;
    let child_raw = child_sock.as_raw_fd();

    let mut command = Command::new(helper);
    command
        .arg(CHILD_ARG)
        .arg(child_raw.to_string())
        .args(cfg.to_args())
        .arg("--")
        .args(argv);
    // SAFETY:
    // - The closure runs in the forked child between fork and exec, where only
    //   async-signal-safe calls are allowed; it calls only fcntl(2) and reads
    //   errno, and allocates nothing.
    // - `child_raw` is open in the child (fork copies the fd table), and clearing
    //   FD_CLOEXEC there lets exactly this one fd cross the exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(child_raw, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(helper_err("start the helper process"))?;
    // Only the helper may hold its end, or EOF never comes if it dies.
    drop(child_sock);

    let fail = |child: &mut Child, err: NetnsError| {
        // Our own, unreaped child: its PID cannot have been reused.
        let _ = child.kill();
        let _ = child.wait();
        err
    };
    let pid = match i32::try_from(child.id()) {
        Ok(pid) => pid,
        Err(_) => {
            let e = NetnsError::Protocol(format!("PID {} out of range", child.id()));
            return Err(fail(&mut child, e));
        }
    };
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    match recv_taps(parent_sock.as_fd(), cfg.queues, deadline) {
        Ok(None) => {
            // The helper closed its end: it exited (its own stderr says why).
            let status = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| format!("wait failed: {e}"));
            Err(NetnsError::HelperExited(status))
        }
        Ok(Some(taps)) => {
            let tap = match taps.first().map(Tap::try_clone) {
                Some(Ok(tap)) => tap,
                Some(Err(e)) => {
                    return Err(fail(&mut child, helper_err("duplicate the TAP fd")(e)));
                }
                None => {
                    let e = NetnsError::Protocol("no queue reported".into());
                    return Err(fail(&mut child, e));
                }
            };
            log::debug!(
                "netns: helper {pid} created TAP {} with {} queue(s)",
                tap.name(),
                taps.len()
            );
            Ok(Spawned {
                tap,
                taps,
                pid,
                child,
                sock: Some(parent_sock),
                exit: None,
            })
        }
        Err(e) => Err(fail(&mut child, e)),
    }
}

// ---------------------------------------------------------------------------
// Helper (child) side
// ---------------------------------------------------------------------------

fn write_proc(path: &str, contents: &str) -> Result<(), NetnsError> {
    fs::write(path, contents).map_err(|source| NetnsError::Setup {
        step: format!("write {contents:?} to {path}"),
        source,
    })
}

fn unshare(flags: libc::c_int, what: &str) -> Result<(), NetnsError> {
    // SAFETY:
    // - Plain syscall, no pointers. The helper is single-threaded (it is a
    //   fresh exec and has started no threads), as CLONE_NEWUSER requires.
    if unsafe { libc::unshare(flags) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        // EPERM: not allowed (sysctl, LSM, no CAP_SYS_ADMIN); ENOSPC/EUSERS: the
        // user.max_user_namespaces limit (0 = disabled) was reached.
        Some(libc::EPERM | libc::ENOSPC | libc::EUSERS | libc::EACCES) => {
            Err(NetnsError::NoPermission {
                what: what.to_owned(),
                source,
            })
        }
        _ => Err(NetnsError::Setup {
            step: format!("create {what}"),
            source,
        }),
    }
}

/// Enters new namespaces and builds the TAP (all its queues, queue 0 first); runs in
/// the single-threaded helper.
fn helper_setup(cfg: &NetConfig) -> Result<Vec<Tap>, NetnsError> {
    // SAFETY:
    // - geteuid/getegid cannot fail and take no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        unshare(libc::CLONE_NEWUSER, "a user namespace")?;
        // user_namespaces(7): an unprivileged process must deny setgroups before
        // it may write gid_map; each map may name only its own outer ID.
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
        write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    }
    unshare(
        libc::CLONE_NEWNET | libc::CLONE_NEWNS,
        "network and mount namespaces",
    )?;
    // Keep our mounts (resolv.conf) from propagating back to the host's namespace.
    // SAFETY:
    // - All pointers are null or NUL-terminated literals; with MS_REC|MS_PRIVATE
    //   mount(2) only changes propagation and reads no source, type or data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(NetnsError::Setup {
            step: "make / a private mount (MS_REC | MS_PRIVATE)".into(),
            source: io::Error::last_os_error(),
        });
    }
    remount_sysfs();
    let taps = cfg.open_taps()?;
    if let Some(tap) = taps.first() {
        configure_link(cfg, tap, true)?;
    }
    if cfg.configure {
        bind_resolv_conf(cfg.dns)?;
    }
    Ok(taps)
}

/// The mounts stacked directly on the topmost `/sys` mount, and whether that mount
/// is read-only, from `/proc/self/mountinfo` (proc(5)). Mount points that need
/// escapes (spaces and the like) are skipped.
fn sys_submounts() -> io::Result<(Vec<PathBuf>, bool)> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let rows: Vec<Vec<&str>> = info.lines().map(|l| l.split(' ').collect()).collect();
    // Fields: id parent major:minor root mount-point options ...
    let sys = rows.iter().rev().find(|f| f.len() > 5 && f[4] == "/sys");
    let Some(sys) = sys else {
        return Ok((Vec::new(), false));
    };
    let read_only = sys[5].split(',').any(|o| o == "ro");
    let children = rows
        .iter()
        .filter(|f| {
            f.len() > 5 && f[1] == sys[0] && f[4].starts_with("/sys/") && !f[4].contains('\\')
        })
        .map(|f| PathBuf::from(f[4]))
        .collect();
    Ok((children, read_only))
}

/// Mounts a fresh sysfs on `/sys`, so that `/sys/class/net` lists the new
/// namespace's devices (sysfs shows the network namespace of whoever mounted it),
/// then binds the old `/sys` submounts (cgroups and the like) back on top of it.
///
/// Failure is not fatal: the command then sees the host's `/sys/class/net`, which
/// only tools that read sysfs notice; a warning says so.
fn remount_sysfs() {
    let warn = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("uipd: warning: {what}: {e}");
    };
    let (children, read_only) = sys_submounts().unwrap_or_else(|e| {
        warn("cannot read /proc/self/mountinfo", &e);
        (Vec::new(), false)
    });
    // O_PATH fds keep the old submount trees reachable once the new sysfs hides them.
    let saved: Vec<(PathBuf, OwnedFd)> = children
        .into_iter()
        .filter_map(|path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY)
                .open(&path)
                .map(|f| (path, OwnedFd::from(f)))
                .ok()
        })
        .collect();
    // A user namespace may mount sysfs only with flags at least as strict as the
    // visible /sys (mount_too_revealing in fs/namespace.c), hence MS_RDONLY if ro.
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY:
    // - All pointers are NUL-terminated literals or null (no data); they outlive the call.
    let rc = unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        warn(
            "cannot mount a sysfs for the new namespace; /sys/class/net shows the host's devices",
            &io::Error::last_os_error(),
        );
        return;
    }
    for (path, fd) in saved {
        let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let (Ok(cfrom), Ok(cto)) = (
            std::ffi::CString::new(from),
            std::ffi::CString::new(path.as_os_str().as_bytes()),
        ) else {
            continue;
        };
        // SAFETY:
        // - `cfrom` and `cto` are NUL-terminated strings that outlive the call;
        //   fstype and data are null, which MS_BIND allows. `fd` is open, so the
        //   /proc/self/fd link resolves to the saved mount tree.
        let rc = unsafe {
            libc::mount(
                cfrom.as_ptr(),
                cto.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            warn(
                &format!("cannot bind {} back over the new sysfs", path.display()),
                &io::Error::last_os_error(),
            );
        }
    }
}

/// Bind-mounts a fresh `nameserver <dns>` file over `/etc/resolv.conf` in the
/// helper's private mount namespace (see the module docs for the symlink case).
fn bind_resolv_conf(dns: Ipv4Addr) -> Result<(), NetnsError> {
    let target = Path::new("/etc/resolv.conf");
    // metadata() follows symlinks: this fails for a missing file and a dangling link.
    if fs::metadata(target).is_err() {
        eprintln!(
            "uipd: warning: {} is missing or a dangling symlink; the namespace keeps no resolver configuration",
            target.display()
        );
        return Ok(());
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let src = dir.join(format!("uipd-resolv.{}.{nanos}", std::process::id()));
    let step = |what: String| move |source| NetnsError::Setup { step: what, source };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&src)
        .map_err(step(format!("create {}", src.display())))?;
    let result = (|| {
        file.write_all(format!("# Generated by uipd\nnameserver {dns}\n").as_bytes())
            .map_err(step(format!("write {}", src.display())))?;
        drop(file);
        let csrc = std::ffi::CString::new(src.as_os_str().as_bytes())
            .map_err(|_| NetnsError::InvalidConfig(format!("NUL in path {}", src.display())))?;
        // SAFETY:
        // - `csrc` and the target literal are NUL-terminated strings that outlive
        //   the call; fstype and data are null, which MS_BIND allows.
        let rc = unsafe {
            libc::mount(
                csrc.as_ptr(),
                c"/etc/resolv.conf".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(NetnsError::Setup {
                step: format!("bind-mount {} over /etc/resolv.conf", src.display()),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    })();
    // The bind mount holds the inode; the name is no longer needed either way.
    let _ = fs::remove_file(&src);
    result
}

/// Sets the parent-death signal to SIGKILL and checks the parent is still `ppid`.
fn die_with_parent(ppid: libc::pid_t) {
    let sig = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
    // SAFETY:
    // - PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig);
    }
    // The parent may have died before prctl: then we were reparented.
    // SAFETY:
    // - getppid cannot fail and takes no arguments.
    if unsafe { libc::getppid() } != ppid {
        std::process::exit(1);
    }
}

/// The helper's entry point: `args` are the arguments after [`CHILD_ARG`].
///
/// Must run before the process starts any thread. Never returns: it execs the
/// command, or exits (1: setup failed, reported to the parent; 2: bad arguments;
/// 126/127: the command could not be executed / was not found).
pub fn child_main(args: &[OsString]) -> ! {
    // SAFETY:
    // - getppid cannot fail and takes no arguments.
    let ppid = unsafe { libc::getppid() };
    die_with_parent(ppid);

    let usage = |msg: &str| -> ! {
        eprintln!("uipd: {CHILD_ARG}: {msg} (this mode is internal to uipd)");
        std::process::exit(2);
    };
    let Some(fd) = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
    else {
        usage("missing socket fd");
    };
    // SAFETY:
    // - F_GETFD only queries the fd table; no pointers.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        usage("socket fd is not open");
    }
    // SAFETY:
    // - `fd` is open (checked above), was passed to us by the parent for this
    //   purpose, and nothing else in this fresh process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close it on exec again, so the command does not inherit it.
    // SAFETY:
    // - Plain fcntl on an fd we own; no pointers.
    unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };

    let rest = &args[1..];
    let Some(sep) = rest.iter().position(|a| a == "--") else {
        usage("missing '--' before the command");
    };
    let cfg = NetConfig::from_args(&rest[..sep]).unwrap_or_else(|e| usage(&e));
    let argv = &rest[sep + 1..];
    if argv.is_empty() {
        usage("missing command");
    }

    match helper_setup(&cfg) {
        Ok(taps) => {
            if let Err(e) = send_taps(sock.as_fd(), &taps) {
                eprintln!("uipd: namespace helper: cannot send the TAP fds: {e}");
                std::process::exit(1);
            }
            // The parent has its own copies now; the command must not hold one.
            drop(taps);
        }
        Err(err) => {
            if send_msg(sock.as_fd(), &encode_error(&err), None).is_err() {
                eprintln!("uipd: {err}");
            }
            std::process::exit(1);
        }
    }

    // Wait for the go byte; EOF or an error means uipd is gone or gave up.
    let mut go = [0u8; 1];
    match recv_msg(sock.as_fd(), &mut go) {
        Ok((1, None)) if go[0] == GO_BYTE => {}
        _ => std::process::exit(1),
    }
    drop(sock);
    die_with_parent(ppid);

    let err = Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("uipd: cannot run {}: {err}", Path::new(&argv[0]).display());
    std::process::exit(if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

// ---------------------------------------------------------------------------
// --netns: attach to an existing namespace
// ---------------------------------------------------------------------------

pub(crate) fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY:
    // - `fd` is an open fd borrowed for the call; CLONE_NEWNET makes the kernel
    //   check it is a network namespace. setns(2) with CLONE_NEWNET changes only
    //   the calling thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Join the user namespace at `path` (slirp4netns's `--userns-path`), so
/// that entering a rootless container's network namespace is allowed.
/// Only a single-threaded process may do this: call it before any thread
/// starts.
pub fn join_userns(path: &Path) -> Result<(), NetnsError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Setup {
            step: format!("open the user namespace {}", path.display()),
            source,
        })?;
    // SAFETY: `file` is an open fd for the call; CLONE_NEWUSER makes the
    // kernel check it is a user namespace. It changes this (single-
    // threaded) process's user namespace and nothing else.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWUSER) } < 0 {
        return Err(NetnsError::Setup {
            step: format!("join the user namespace {}", path.display()),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The path of a `--netns` target: a bare PID means `/proc/PID/ns/net`.
pub fn netns_path(target: &str) -> PathBuf {
    if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{target}/ns/net"))
    } else {
        PathBuf::from(target)
    }
}

/// Creates the TAP in an existing network namespace (`--netns PATH|PID`: a path such
/// as `/run/netns/NAME` or `/proc/PID/ns/net`, or a bare PID).
///
/// Only the calling thread enters the target (`setns`), creates the TAP, gives it its
/// MAC and MTU, brings it up and, if `cfg.configure`, assigns the address and default
/// route, and brings `lo` up if `cfg.loopback`; it then returns to its own
/// namespace. The target's `/etc/resolv.conf` is left alone (and `lo` unless
/// asked). Other threads are never affected.
///
/// Returns queue 0 only: with `cfg.queues > 1` the TAP is created multiqueue and the
/// other queues are closed again (use [`attach_queues`] to keep them).
pub fn attach(target: &str, cfg: &NetConfig) -> Result<Tap, NetnsError> {
    let mut taps = attach_queues(target, cfg)?;
    if taps.is_empty() {
        return Err(NetnsError::Protocol("no TAP queue was opened".into()));
    }
    Ok(taps.swap_remove(0))
}

/// [`attach`] returning every queue: `cfg.queues` fds of the TAP (multiqueue when
/// more than one, `IFF_VNET_HDR` if `cfg.vnet_hdr`), queue 0 first, all created in the
/// target namespace on the calling thread.
pub fn attach_queues(target: &str, cfg: &NetConfig) -> Result<Vec<Tap>, NetnsError> {
    cfg.validate()?;
    let path = netns_path(target);
    let target_file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::TargetNotFound {
                target: target.to_owned(),
                source,
            },
            _ => NetnsError::Target {
                target: target.to_owned(),
                hint: "cannot open it",
                source,
            },
        })?;
    let target_fd = OwnedFd::from(target_file);
    let home = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|source| NetnsError::Setup {
            step: "open /proc/thread-self/ns/net".into(),
            source,
        })?;
    setns(target_fd.as_fd()).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::EINVAL) => "it is not a network namespace",
            Some(libc::EPERM) => {
                "no permission: entering it needs CAP_SYS_ADMIN over the user namespace that owns it \
                 (for a rootless container, run uipd inside its user namespace)"
            }
            _ => "setns failed",
        };
        NetnsError::Target {
            target: target.to_owned(),
            hint,
            source,
        }
    })?;
    // A TAP that exists already (rootlesskit makes `tap0` with `ip tuntap
    // add` before it starts slirp4netns) is attached; when it is not
    // multiqueue, tun refuses IFF_MULTI_QUEUE with EINVAL: one queue then.
    let opened = match cfg.open_taps() {
        Err(TapError::SetIff { source, .. })
            if cfg.queues > 1 && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            log::info!(
                "netns: TAP {} exists without multiqueue: serving it with one queue",
                cfg.ifname
            );
            NetConfig {
                queues: 1,
                ..cfg.clone()
            }
            .open_taps()
        }
        r => r,
    };
    let result = opened.map_err(NetnsError::from).and_then(|taps| {
        if let Some(tap) = taps.first() {
            configure_link(cfg, tap, cfg.loopback)?;
        }
        Ok(taps)
    });
    setns(home.as_fd()).map_err(NetnsError::Restore)?;
    if let Some(tap) = result.as_ref().ok().and_then(|t| t.first()) {
        log::info!(
            "netns: created TAP {} ({} queue(s)) in {}",
            tap.name(),
            cfg.queues,
            path.display()
        );
    }
    result
}

/// Run `f` on the calling thread inside the network namespace `target`
/// (as [`attach`] names it), then return to the thread's own namespace.
/// What `f` creates there stays there: sockets it makes belong to the
/// target, procfs net files it opens keep showing it. Other threads are
/// never affected.
pub fn in_netns<T>(target: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let path = netns_path(target);
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(p)
            .map(OwnedFd::from)
    };
    let target_fd = open(&path).map_err(|source| NetnsError::Target {
        target: target.to_owned(),
        hint: "cannot open it",
        source,
    })?;
    let home = open(Path::new("/proc/thread-self/ns/net")).map_err(|source| NetnsError::Setup {
        step: "open /proc/thread-self/ns/net".into(),
        source,
    })?;
    setns(target_fd.as_fd()).map_err(|source| NetnsError::Target {
        target: target.to_owned(),
        hint: "setns failed",
        source,
    })?;
    let out = f();
    setns(home.as_fd()).map_err(NetnsError::Restore)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_args() {
        let mut cfg = NetConfig::default();
        assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
        cfg.guest_mac = Some([0x00, 0x15, 0x15, 0x15, 0x15, 0xab]);
        cfg.configure = false;
        cfg.mtu = 65520;
        assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
        cfg.queues = MAX_TAP_QUEUES;
        cfg.vnet_hdr = true;
        assert_eq!(NetConfig::from_args(&cfg.to_args()), Ok(cfg.clone()));
        assert!(NetConfig::from_args(&[]).is_err());
        // Queue counts and the vnet_hdr flag are checked on the helper's side too.
        for (field, bad) in [(8, "0"), (8, "257"), (8, "x"), (9, "2")] {
            let mut args = cfg.to_args();
            args[field] = bad.into();
            assert!(NetConfig::from_args(&args).is_err(), "{field}: {bad}");
        }
    }

    #[test]
    fn defaults_are_one_queue_without_vnet_hdr() {
        let cfg = NetConfig::default();
        assert_eq!((cfg.queues, cfg.vnet_hdr), (1, false));
        assert_eq!(cfg.tap_flags(), TapFlags::default());
        let cfg = NetConfig {
            queues: 2,
            vnet_hdr: true,
            ..NetConfig::default()
        };
        assert_eq!(
            cfg.tap_flags(),
            TapFlags {
                multi_queue: true,
                vnet_hdr: true
            }
        );
    }

    #[test]
    fn netmask_from_prefix() {
        let mut cfg = NetConfig::default();
        for (p, m) in [
            (24, [255, 255, 255, 0]),
            (0, [0; 4]),
            (32, [255; 4]),
            (17, [255, 255, 128, 0]),
        ] {
            cfg.prefix_len = p;
            assert_eq!(cfg.netmask(), Ipv4Addr::from(m));
        }
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            NetConfig {
                mtu: 67,
                ..NetConfig::default()
            },
            NetConfig {
                prefix_len: 33,
                ..NetConfig::default()
            },
            NetConfig {
                ifname: "a/b".into(),
                ..NetConfig::default()
            },
            NetConfig {
                queues: 0,
                ..NetConfig::default()
            },
            NetConfig {
                queues: MAX_TAP_QUEUES + 1,
                ..NetConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn error_records_round_trip() {
        let err = NetnsError::NoPermission {
            what: "a user namespace".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        match decode_error(&encode_error(&err)) {
            NetnsError::NoPermission { what, source } => {
                assert_eq!(what, "a user namespace");
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            e => panic!("{e:?}"),
        }
        let err = NetnsError::Tap(TapError::NoTunDevice(io::Error::from_raw_os_error(
            libc::ENOENT,
        )));
        assert!(matches!(
            decode_error(&encode_error(&err)),
            NetnsError::Tap(TapError::NoTunDevice(_))
        ));
        let err = NetnsError::Tap(TapError::QueueCount(300));
        assert!(matches!(
            decode_error(&encode_error(&err)),
            NetnsError::Tap(TapError::QueueCount(300))
        ));
        assert!(matches!(decode_error(&[]), NetnsError::Protocol(_)));
        assert!(matches!(decode_error(&[7, 0]), NetnsError::Protocol(_)));
    }

    #[test]
    fn fd_passing_over_a_socketpair() {
        let (a, b) = socketpair().unwrap();
        let (x, _y) = socketpair().unwrap();
        send_msg(a.as_fd(), b"hi", Some(x.as_fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_msg(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert!(fd.is_some());
        drop(a);
        assert_eq!(recv_msg(b.as_fd(), &mut buf).unwrap().0, 0);
    }

    /// Stand-in TAPs: any fd will do for the protocol.
    fn fake_taps(n: usize, name: &str) -> Vec<Tap> {
        (0..n)
            .map(|_| Tap::from_fd(socketpair().unwrap().0, name.to_owned()))
            .collect()
    }

    fn soon() -> std::time::Instant {
        std::time::Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn every_queue_crosses_the_socketpair() {
        for queues in [1, 4, MAX_TAP_QUEUES] {
            let (a, b) = socketpair().unwrap();
            let taps = fake_taps(queues, "eth0");
            // The sender blocks once the socket buffer fills; the receiver drains it.
            let sender = std::thread::spawn(move || send_taps(a.as_fd(), &taps));
            let got = recv_taps(b.as_fd(), queues, soon()).unwrap().unwrap();
            sender.join().unwrap().unwrap();
            assert_eq!(got.len(), queues);
            assert!(got.iter().all(|t| t.name() == "eth0"));
        }
    }

    #[test]
    fn malformed_queue_reports_are_protocol_errors() {
        let bad = |script: &dyn Fn(BorrowedFd<'_>), queues: usize| {
            let (a, b) = socketpair().unwrap();
            script(a.as_fd());
            drop(a);
            recv_taps(b.as_fd(), queues, soon())
        };
        let (_x, y) = socketpair().unwrap();
        let fd = Some(y.as_fd());
        let rec = |i, n| encode_queue(i, n, "eth0").unwrap();
        type Script<'a> = Box<dyn Fn(BorrowedFd<'_>) + 'a>;
        let cases: Vec<(Script, &str)> = vec![
            (
                Box::new(|s| send_msg(s, &rec(0, 2), None).unwrap()),
                "without its fd",
            ),
            (
                Box::new(|s| send_msg(s, &rec(1, 2), fd).unwrap()),
                "where 0 was expected",
            ),
            (
                Box::new(|s| send_msg(s, &rec(0, 3), fd).unwrap()),
                "3 queues reported, 2",
            ),
            (
                Box::new(|s| send_msg(s, &[REPORT_OK, 0], fd).unwrap()),
                "short queue record",
            ),
            (
                Box::new(|s| {
                    send_msg(s, &rec(0, 2), fd).unwrap();
                    send_msg(s, &encode_queue(1, 2, "eth1").unwrap(), fd).unwrap();
                }),
                "queue 1 is on \"eth1\"",
            ),
            (
                Box::new(|s| {
                    let err = NetnsError::Setup {
                        step: "x".into(),
                        source: io::Error::from_raw_os_error(libc::EIO),
                    };
                    send_msg(s, &encode_error(&err), fd).unwrap();
                }),
                "an fd came with an error record",
            ),
            (
                Box::new(|s| {
                    send_msg(s, &rec(0, 2), fd).unwrap();
                    send_msg(s, &encode_error(&NetnsError::EmptyCommand), None).unwrap();
                }),
                "error record after 1 queue records",
            ),
        ];
        for (script, want) in &cases {
            match bad(script.as_ref(), 2) {
                Err(NetnsError::Protocol(m)) => assert!(m.contains(want), "{m} vs {want}"),
                r => panic!("{want}: {r:?}"),
            }
        }
        // An error record first is the helper's typed error.
        let r = bad(
            &|s| {
                let err = NetnsError::Tap(TapError::InvalidName("x/y".into()));
                send_msg(s, &encode_error(&err), None).unwrap();
            },
            2,
        );
        assert!(matches!(r, Err(NetnsError::Tap(TapError::InvalidName(n))) if n == "x/y"));
        // EOF part-way: the helper exited.
        let r = bad(&|s| send_msg(s, &rec(0, 2), fd).unwrap(), 2);
        assert!(matches!(r, Ok(None)), "{r:?}");
        // Silence: bounded by the deadline.
        let (_a, b) = socketpair().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            recv_taps(b.as_fd(), 1, deadline),
            Err(NetnsError::HelperTimeout)
        ));
        assert!(encode_queue(MAX_TAP_QUEUES, 70_000, "eth0").is_err());
    }

    #[test]
    fn bare_pids_name_proc_paths() {
        assert_eq!(netns_path("123"), PathBuf::from("/proc/123/ns/net"));
        assert_eq!(netns_path("/run/netns/x"), PathBuf::from("/run/netns/x"));
    }

    #[test]
    fn commands_are_looked_up_in_path() {
        assert!(command_exists(OsStr::new("sh")));
        assert!(command_exists(OsStr::new("/bin/sh")));
        assert!(!command_exists(OsStr::new("uipd-no-such-command")));
        assert!(!command_exists(OsStr::new("/nonexistent/sh")));
    }
}
