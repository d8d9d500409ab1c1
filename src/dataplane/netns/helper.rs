//! The helper process: [`spawn`] starts it and reads its report on uipd's
//! side ([`Spawned`] then holds the command until [`Spawned::start`]);
//! [`child_main`] is the helper itself, from its arguments to the `exec` of
//! the command (see the [module docs](super) for the sequence).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::link::configure_link;
use super::mounts::{bind_resolv_conf, remount_sysfs};
use super::protocol::{GO_BYTE, encode_error, recv_taps, send_taps};
use super::{NetConfig, NetnsError};
use crate::dataplane::tap::Tap;
use crate::sys;
use crate::sys::fd::{recv_msg, send_msg, socketpair};

/// The hidden first argument that makes the uipd binary run [`child_main`].
pub const CHILD_ARG: &str = "__uipd-netns-child";

/// How long [`spawn`] waits for the helper to report the TAP (or an error).
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `cmd` names an executable file, directly (with a `/`) or through `$PATH`.
pub(super) fn command_exists(cmd: &OsStr) -> bool {
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

fn write_proc(path: &str, contents: &str) -> Result<(), NetnsError> {
    fs::write(path, contents).map_err(|source| NetnsError::Setup {
        step: format!("write {contents:?} to {path}"),
        source,
    })
}

fn unshare(flags: libc::c_int, what: &str) -> Result<(), NetnsError> {
    // The helper is single-threaded (a fresh exec that has started no
    // threads), as CLONE_NEWUSER requires.
    let Err(source) = sys::process::unshare(flags) else {
        return Ok(());
    };
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
    sys::process::make_mounts_private().map_err(|source| NetnsError::Setup {
        step: "make / a private mount (MS_REC | MS_PRIVATE)".into(),
        source,
    })?;
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

/// Sets the parent-death signal to SIGKILL and checks the parent is still
/// `ppid`; exits (1) if it is not.
fn die_with_parent(ppid: libc::pid_t) {
    if sys::process::die_with_parent(ppid).is_err() {
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
