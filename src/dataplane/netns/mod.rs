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
//! `configure_link` only turns off duplicate address detection and the
//! router solicitation delay on the TAP, so both are usable at once rather
//! than after a second or two (nothing else is on that link to clash with).
//!
//! Limits: `attach` joins only the
//! network namespace, so entering a namespace owned by another user namespace
//! needs `CAP_SYS_ADMIN` over that user namespace (run uipd inside it).
//!
//! Layout: `config.rs` ([`NetConfig`] and its helper arguments), `helper.rs`
//! ([`spawn`], [`Spawned`], [`child_main`]), `protocol.rs` (the reports over
//! the socketpair), `link.rs` (interface ioctls), `mounts.rs` (sysfs and
//! resolv.conf); [`attach`], [`attach_queues`] and [`in_netns`] are here.
//! The raw system calls are [`crate::sys`]'s.

mod config;
mod helper;
mod link;
mod mounts;
mod protocol;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use self::config::NetConfig;
pub use self::helper::{CHILD_ARG, Spawned, child_main, spawn, spawn_with_helper};
use self::link::configure_link;
use crate::dataplane::tap::{Tap, TapError};
use crate::sys;

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
    #[error("namespace helper did not report within {} s", helper::HELPER_TIMEOUT.as_secs())]
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

/// `setns(fd, CLONE_NEWNET)`: only the calling thread changes namespace.
fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    sys::process::setns(fd, libc::CLONE_NEWNET)
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
    // Changes this (single-threaded) process's user namespace and nothing else.
    sys::process::setns(file.as_fd(), libc::CLONE_NEWUSER).map_err(|source| NetnsError::Setup {
        step: format!("join the user namespace {}", path.display()),
        source,
    })?;
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
    setns_net(target_fd.as_fd()).map_err(|source| {
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
    setns_net(home.as_fd()).map_err(NetnsError::Restore)?;
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
    setns_net(target_fd.as_fd()).map_err(|source| NetnsError::Target {
        target: target.to_owned(),
        hint: "setns failed",
        source,
    })?;
    let out = f();
    setns_net(home.as_fd()).map_err(NetnsError::Restore)?;
    Ok(out)
}
