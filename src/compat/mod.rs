//! Personalities: uipd started under another backend's name, with that
//! backend's command line, fd handshakes and API, so that the programs
//! that launch it (podman, rootlesskit, libvirt, QEMU) need no change.
//!
//! ```text
//!  argv[0] = slirp4netns, or `uipd slirp4netns ARGS` ─► slirp4netns::Args
//!      ─► daemon::Config (Frontend::Attach, slirp4netns's addressing) + ready/exit fds + API socket
//!  argv[0] = pasta, or `uipd pasta ARGS` ─► pasta::Args
//!      ─► daemon::Config (Frontend::Attach or Spawn) + fork/pid file, quits with the namespace
//!  argv[0] = passt, or `uipd passt ARGS` ─► passt::Args
//!      ─► daemon::Config (Frontend::Stream, StreamFd or VhostUser) + fork/pid file/one-off
//! ```
//!
//! Each personality parses exactly the options its integrators pass and
//! refuses an unknown one with an error naming it; options uipd accepts
//! without acting on are listed as such in its `--help`.
//! passt and pasta share their daemon flags ([`DaemonArgs`]: `-f`, `-P`,
//! `-l`, `-q`, `-d`) and what `main` does with them ([`Invocation`]).

pub mod passt;
pub mod pasta;
pub mod slirp4netns;

use std::path::PathBuf;

use crate::daemon::Config;

/// How the daemon runs, as passt and pasta share it: where it goes, where
/// its PID and log go, and the verbosity flags uipd accepts.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Write the PID (of the process that serves) to FILE.
    #[arg(short = 'P', long = "pid", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Log to FILE once in the background.
    #[arg(short = 'l', long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Accepted; uipd logs warnings only unless RUST_LOG says more.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Accepted; use RUST_LOG=debug.
    #[arg(short = 'd', long)]
    pub debug: bool,
}

impl DaemonArgs {
    /// `config` run in the `background` or not, with these flags: once in
    /// the background, the standard descriptors go to /dev/null and stderr
    /// to the log file ([`Config::detach_stdio`]).
    pub fn invocation(&self, config: Config, background: bool) -> Invocation {
        Invocation {
            config: Config {
                detach_stdio: background.then(|| self.log_file.clone()),
                ..config
            },
            background,
            pid_file: self.pid_file.clone(),
            socket: None,
            userns: None,
        }
    }
}

/// What `main` does with the parsed command line (passt's or pasta's).
#[derive(Debug)]
pub struct Invocation {
    /// The daemon's configuration.
    pub config: Config,
    /// Go to the background (fork) before serving.
    pub background: bool,
    /// Where to write the serving process's PID.
    pub pid_file: Option<PathBuf>,
    /// passt: the socket path, when listening (for the start-up message).
    pub socket: Option<PathBuf>,
    /// pasta: the user namespace to join first.
    pub userns: Option<PathBuf>,
}

/// Open what [`detach_stdio`] points the standard descriptors at:
/// /dev/null, and `log` (appended) or /dev/null for stderr. Opened at
/// start, before the sandbox hides the file system.
pub fn open_detached(log: Option<&std::path::Path>) -> std::io::Result<Detached> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?,
        None => null.try_clone()?,
    };
    Ok(Detached { null, err })
}

/// What the standard descriptors become once uipd serves: opened by
/// [`open_detached`] before the sandbox, applied by [`detach_stdio`].
#[derive(Debug)]
pub struct Detached {
    null: std::fs::File,
    err: std::fs::File,
}

/// Point stdin and stdout at /dev/null and stderr at the log (or
/// /dev/null), as [`open_detached`] prepared them: what a daemon does once
/// it is set up, so that a parent that reads our output (libvirt, a
/// shell's `$(...)`) sees it end.
pub fn detach_stdio(d: &Detached) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for (from, to) in [(&d.null, 0), (&d.null, 1), (&d.err, 2)] {
        // SAFETY: dup2(2) on two open descriptors: `from` lives across the
        // call and `to` is one of the standard ones, which it replaces.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Which side of [`background`] we are on.
#[derive(Debug)]
pub enum Forked {
    /// The original process: `child` is the background process's PID;
    /// `ready` says whether it reported that it serves.
    Parent {
        /// The background process.
        child: libc::pid_t,
        /// It wrote "1" to the readiness pipe.
        ready: bool,
    },
    /// The background process (a new session): write "1" to `ready_fd`
    /// once serving (the daemon's `ready_fd`).
    Child {
        /// The pipe's write end.
        ready_fd: std::os::fd::RawFd,
    },
}

/// Fork into the background, passt's way: the parent waits until the
/// child reports (through a pipe) that it serves, or dies. Call it before
/// any thread starts: fork(2) copies only the calling thread.
pub fn background() -> std::io::Result<Forked> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the process has one thread here (the caller's contract), so
    // the child's copy of the address space has no lock held by a thread
    // that does not exist in it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        // SAFETY: fds[1] is the write end made above; we close our copy so
        // that EOF arrives when the child's copy closes.
        unsafe { libc::close(fds[1]) };
        // SAFETY: fds[0] is the read end made above, owned only here.
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut b = [0u8; 1];
        let ready = matches!(r.read(&mut b), Ok(1)) && b[0] == b'1';
        if !ready {
            let mut status = 0;
            // SAFETY: reaps our own child; `status` is a live c_int.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        return Ok(Forked::Parent { child: pid, ready });
    }
    // SAFETY: the child closes its copy of the read end, which it never uses.
    unsafe { libc::close(fds[0]) };
    // SAFETY: setsid(2) takes no arguments; in a fresh child it cannot be a
    // process group leader, so it succeeds.
    unsafe { libc::setsid() };
    Ok(Forked::Child { ready_fd: fds[1] })
}
