//! The sandbox: what uipd gives up once it is set up.
//!
//! # Theory of operation
//!
//! uipd parses every byte an untrusted guest sends. Once set-up is done
//! (namespaces joined, TAP queues open, listeners and sockets bound, KVM
//! open, every file it writes later opened), the daemon calls [`enter`] once,
//! in the main thread, while that is the only thread:
//!
//! 1. **File system.** It unshares the mount namespace (inside a new user
//!    namespace first when uipd has no `CAP_SYS_ADMIN`, mapping its own uid
//!    and gid), makes every mount private, mounts an empty read-only tmpfs,
//!    pivots into it and detaches the old root. No path resolves to a host
//!    file any more; the few files needed later are reached through
//!    [`Anchor`]s, `O_PATH` descriptors of their directories opened before.
//! 2. **Privileges.** `PR_SET_NO_NEW_PRIVS`; the bounding and ambient
//!    capability sets are cleared (where uipd may), then the effective,
//!    permitted and inheritable ones.
//!
//! Namespaces and capabilities are per thread in Linux and are inherited by
//! the threads created afterwards, which is why [`enter`] runs before any
//! thread starts (it refuses to run otherwise). Then each thread calls
//! [`confine`] with its [`Role`] when its own set-up is done: that installs
//! the role's seccomp allow-list ([`filters`]), built with `seccompiler`.
//! Filters stack: a thread started by a confined thread is held to both
//! lists, so the list of a role that starts threads covers its children's
//! (the vhost-user server's daemon threads, the VMM's vCPUs).
//!
//! A system call outside the list kills the process. In debug builds and
//! with `--seccomp-log` the filter traps instead and `on_sigsys` writes
//! one line naming the call and the thread before ending the process with
//! SIGSYS; release builds let the kernel kill at once.
//!
//! # Degraded set-ups
//! Where no mount namespace can be made (inside a container without
//! `CAP_SYS_ADMIN` whose seccomp profile refuses `unshare(CLONE_NEWUSER)`,
//! or with unprivileged user namespaces disabled), uipd says so once and
//! goes on with seccomp and without capabilities: the file system stays
//! visible, but the allow-lists leave only `openat` (control thread) to
//! reach it. The seccomp filter itself is required: a kernel that refuses
//! it is a start-up error (`--no-sandbox` runs without).
//!
//! # Limits
//! io_uring operations run in the kernel without passing through seccomp;
//! the worker's allow-list covers what it calls directly. Its rings are
//! restricted to the operations uipd issues (see `dataplane::uring`), and
//! `--io epoll` keeps every socket call under the filter.

pub mod filters;
#[cfg(target_arch = "x86_64")]
mod names_x86_64;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::sys;

pub use filters::Role;

/// How the sandbox is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// On by default; `--no-sandbox` turns it off.
    pub enabled: bool,
    /// Trap forbidden calls and log them before dying (always on in debug
    /// builds).
    pub log: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            enabled: true,
            log: false,
        }
    }
}

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed.
    #[error("sandbox: {step}: {source} (run with --no-sandbox to run without it)")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The system's answer.
        source: io::Error,
    },
    /// Threads were running already: they would escape the sandbox.
    #[error("sandbox: {0} threads were running when it was entered (a uipd bug)")]
    Threads(usize),
    /// The seccomp filter could not be built or installed.
    #[error("sandbox: seccomp filter for the {role} thread: {msg}")]
    Seccomp {
        /// The role whose filter failed.
        role: Role,
        /// seccompiler's message.
        msg: String,
    },
}

/// What [`enter`] decided, for [`confine`] and the stats.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Trap (and log) rather than kill.
    trap: bool,
    /// Our process id when the filters were built (`tgkill` is allowed on
    /// it only).
    pid: libc::pid_t,
}

static STATE: OnceLock<State> = OnceLock::new();

/// What [`enter`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entered {
    /// The root is an empty read-only directory.
    pub mount_ns: bool,
    /// Effective, permitted and inheritable capabilities are empty.
    pub caps_dropped: bool,
}

impl fmt::Display for Entered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sandbox: {}, {}, seccomp per thread",
            if self.mount_ns {
                "empty read-only root"
            } else {
                "file system visible (no mount namespace)"
            },
            if self.caps_dropped {
                "no capabilities"
            } else {
                "capabilities kept"
            },
        )
    }
}

/// Enter the sandbox for the whole process; see the module comment. Does
/// nothing when `opts.enabled` is false. Call once, from the main thread,
/// before any other thread exists.
pub fn enter(opts: Options) -> Result<Option<Entered>, Error> {
    if !opts.enabled {
        return Ok(None);
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(Error::Threads(threads));
    }
    let mount_ns = match empty_root() {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "sandbox: no private mount namespace ({e}); the file system stays visible, \
                 seccomp and capabilities still apply"
            );
            false
        }
    };
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(step("set no_new_privs")(io::Error::last_os_error()));
    }
    drop_capabilities()?;
    let state = State {
        trap: opts.log || cfg!(debug_assertions),
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
    };
    let _ = STATE.set(state);
    if state.trap {
        install_sigsys_handler();
    }
    let entered = Entered {
        mount_ns,
        caps_dropped: true,
    };
    log::info!("{entered}");
    Ok(Some(entered))
}

/// Hold the calling thread to `role`'s allow-list. Does nothing when the
/// sandbox was not entered ([`enter`] with it off, or never called: unit
/// tests).
pub fn confine(role: Role) -> Result<(), Error> {
    let Some(state) = STATE.get() else {
        return Ok(());
    };
    let progs = filters::build(role, state.pid, state.trap).map_err(|msg| Error::Seccomp {
        role,
        msg: msg.to_string(),
    })?;
    for prog in &progs {
        seccompiler::apply_filter(prog).map_err(|e| Error::Seccomp {
            role,
            msg: e.to_string(),
        })?;
    }
    test_hooks(role);
    Ok(())
}

/// Whether [`enter`] ran (with the sandbox on).
pub fn active() -> bool {
    STATE.get().is_some()
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Step { step, source }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// `rc < 0` as the call's `errno`.
fn check(rc: libc::c_int) -> io::Result<()> {
    sys::cvt(rc).map(drop)
}

/// Steps 1 of the module comment: a private mount namespace whose root is
/// an empty read-only tmpfs.
fn empty_root() -> io::Result<()> {
    // The caller made sure this process is single-threaded, which
    // CLONE_NEWUSER needs.
    if let Err(first) = sys::process::unshare(libc::CLONE_NEWNS) {
        if first.raw_os_error() != Some(libc::EPERM) {
            return Err(first);
        }
        // No CAP_SYS_ADMIN here: a user namespace of our own gives it.
        // SAFETY: geteuid/getegid take no arguments and cannot fail; they
        // are read before, since the new namespace shows them unmapped
        // until the maps are written.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        sys::process::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)?;
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    let none = c"none";
    sys::process::make_mounts_private()?;
    // Any directory will do as the mount point: it is covered only in our
    // namespace, and left behind with the old root.
    let at = [c"/tmp", c"/proc", c"/"]
        .into_iter()
        .find(|p| Path::new(p.to_str().unwrap_or("/")).is_dir())
        .unwrap_or(c"/");
    // SAFETY: NUL-terminated literals; the data argument is a literal too.
    check(unsafe {
        libc::mount(
            none.as_ptr(),
            at.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=4k,mode=0555".as_ptr().cast(),
        )
    })?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(at.as_ptr()) })?;
    // pivot_root(".", "."): the old root ends up mounted on top of the new
    // one, where detaching it leaves the empty tmpfs as `/`.
    // SAFETY: two NUL-terminated paths; the syscall takes nothing else.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: NUL-terminated path, flags only.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) })?;
    Ok(())
}

/// `capset(2)`'s header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Step 2: no capability left, in any set we may clear.
fn drop_capabilities() -> Result<(), Error> {
    // The bounding set needs CAP_SETPCAP: without it (an unprivileged
    // start) it stays, but there is nothing effective or permitted to gain
    // from it once no_new_privs is set.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL) => break,
                _ => continue,
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        log::debug!(
            "sandbox: clearing ambient capabilities: {}",
            io::Error::last_os_error()
        );
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are live, correctly laid out for version
    // 3 (two data elements) and only read by the kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(step("drop capabilities (capset)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn install_sigsys_handler() {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); we set a
    // handler of the SA_SIGINFO signature, which `on_sigsys` has.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

/// The name of system call `nr` on this architecture, or "".
pub fn syscall_name(nr: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        usize::try_from(nr)
            .ok()
            .and_then(|i| names_x86_64::NAMES.get(i))
            .copied()
            .unwrap_or("")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        ""
    }
}

/// A small formatter into a stack buffer: the SIGSYS handler may not
/// allocate.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// SIGSYS from a trapping filter: name the call and the thread on stderr,
/// then die of SIGSYS. Async-signal-safe: only write, prctl, sigaction,
/// sigprocmask and tgkill, all on every role's list.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The kernel's `_sigsys` member: the call's address (a pointer) at
    // offset 16, then the number (`int`) at 24 on 64-bit targets.
    // SAFETY: `info` points at the full siginfo_t (128 bytes) the kernel
    // wrote for this SA_SIGINFO handler; offset 24 is inside it and
    // 4-byte aligned.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<libc::c_int>().read() };
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `comm`.
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"uipd: seccomp: thread ");
    line.push(&comm[..comm_len]);
    line.push(b" made forbidden system call ");
    line.push(syscall_name(i64::from(nr)).as_bytes());
    line.push(b" (");
    line.push_num(u64::try_from(nr).unwrap_or(0));
    line.push(b"); ending the process\n");
    // SAFETY: write of `line.len` initialised bytes of a live buffer to
    // stderr; then the default action for SIGSYS, unblocked, sent to this
    // thread: the process ends as a plain seccomp kill would end it.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Test-only behaviour after a thread is confined, from the environment
/// (debug builds only): `UIPD_TEST_FORBIDDEN_SYSCALL=ROLE` makes the first
/// thread of that role call `syslog(SIZE_BUFFER)`, which no list allows;
/// `UIPD_TEST_OPEN=PATH` makes the control thread try to open PATH and log
/// the outcome.
#[cfg(debug_assertions)]
fn test_hooks(role: Role) {
    if std::env::var("UIPD_TEST_FORBIDDEN_SYSCALL").is_ok_and(|r| r == role.to_string()) {
        log::warn!("test hook: {role} thread makes a forbidden system call");
        // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) reads nothing and writes
        // nothing; the filter stops the call anyway.
        unsafe { libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0) };
    }
    if role == Role::Control
        && let Ok(path) = std::env::var("UIPD_TEST_OPEN")
    {
        match std::fs::File::open(&path) {
            Ok(_) => log::warn!("test hook: opened {path}"),
            Err(e) => log::warn!("test hook: open {path}: {e}"),
        }
    }
}

#[cfg(not(debug_assertions))]
fn test_hooks(_role: Role) {}

/// A file reached after the sandbox is entered: an `O_PATH` descriptor of
/// its directory (opened before) and its name there. Renames inside that
/// directory are seen (a resolv.conf replaced by a new file), and the file
/// may come and go; nothing else of the file system is reachable through it
/// but that directory's entries.
#[derive(Debug)]
pub struct Anchor {
    dir: OwnedFd,
    name: CString,
    path: PathBuf,
}

impl Anchor {
    /// Anchor `path`, following symlinks of the file itself first (a
    /// resolv.conf that links to a resolver's file is watched where it
    /// lives). The directory must exist; the file need not.
    pub fn new(path: &Path) -> io::Result<Anchor> {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = match real.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = real
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
        let cdir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
        // SAFETY: NUL-terminated path; the fd returned is ours alone.
        let fd = unsafe {
            libc::open(
                cdir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Anchor {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            name,
            path: path.to_path_buf(),
        })
    }

    /// The path it was made from, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `stat` of the file, or None when it does not exist.
    fn stat(&self) -> Option<libc::stat> {
        // SAFETY: a zeroed stat is a valid buffer for fstatat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a live directory fd, a NUL-terminated name and a live
        // buffer of the right type.
        let rc = unsafe { libc::fstatat(self.dir.as_raw_fd(), self.name.as_ptr(), &mut st, 0) };
        (rc == 0).then_some(st)
    }

    /// Whether the file exists.
    pub fn exists(&self) -> bool {
        self.stat().is_some()
    }

    /// Modification time and inode, to see a change (a rename-replace
    /// changes the inode even within one mtime tick).
    pub fn version(&self) -> Option<(i64, i64, u64)> {
        self.stat()
            .map(|st| (st.st_mtime, st.st_mtime_nsec, st.st_ino))
    }

    /// The file's contents.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        use std::io::Read;
        // SAFETY: a live directory fd and a NUL-terminated name; the fd
        // returned is ours alone.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut out = Vec::new();
        f.by_ref().take(1 << 20).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Remove the file (a socket uipd bound).
    pub fn remove(&self) -> io::Result<()> {
        // SAFETY: a live directory fd and a NUL-terminated name.
        check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_see_files_come_go_and_change() {
        let dir = std::env::temp_dir().join(format!("uipd-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("resolv.conf");
        let a = Anchor::new(&f).unwrap();
        assert!(!a.exists());
        std::fs::write(&f, "nameserver 10.0.0.1\n").unwrap();
        assert!(a.exists());
        let v1 = a.version();
        assert_eq!(a.read().unwrap(), b"nameserver 10.0.0.1\n");
        // Replaced by rename, as resolver managers do.
        let tmp = dir.join("resolv.conf.new");
        std::fs::write(&tmp, "nameserver 10.0.0.2\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_ne!(a.version(), v1);
        assert_eq!(a.read().unwrap(), b"nameserver 10.0.0.2\n");
        a.remove().unwrap();
        assert!(!a.exists());
        assert!(a.read().is_err());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn anchors_follow_a_symlinked_file() {
        let dir = std::env::temp_dir().join(format!("uipd-anchor-l-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/stub"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("real/stub"), dir.join("link")).unwrap();
        let a = Anchor::new(&dir.join("link")).unwrap();
        assert_eq!(a.read().unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syscall_names_come_from_the_kernel_table() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(syscall_name(libc::SYS_read), "read");
            assert_eq!(syscall_name(libc::SYS_syslog), "syslog");
            assert_eq!(syscall_name(libc::SYS_io_uring_setup), "io_uring_setup");
        }
        assert_eq!(syscall_name(-1), "");
        assert_eq!(syscall_name(100_000), "");
    }

    #[test]
    fn the_sigsys_line_formats_numbers() {
        let mut l = Line {
            buf: [0; 192],
            len: 0,
        };
        l.push(b"n=");
        l.push_num(0);
        l.push(b",");
        l.push_num(103);
        assert_eq!(&l.buf[..l.len], b"n=0,103");
    }
}
