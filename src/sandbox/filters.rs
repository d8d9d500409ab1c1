//! The seccomp allow-lists, one per thread role.
//!
//! Every thread gets `BASE`: memory, futexes, time, its own signals, reads
//! and writes on descriptors it already holds. Each role adds what its loop
//! calls. Only the control thread opens files (`openat` for anchored
//! re-reads, see [`super::Anchor`]); in every other role `openat` fails with
//! EACCES instead of killing the process, because the C library opens files
//! behind our back where it can do without them (malloc reads the CPU count
//! from /sys when a thread needs a new arena, and falls back). Nothing
//! executes a program,
//! traces, mounts, loads modules or BPF, or changes identity. Arguments are
//! checked where a call is wanted for one purpose only: `tgkill` on our own
//! process, `prctl` for thread names, `ioctl` for the few requests a socket
//! loop makes, `rt_sigaction` for SIGSYS (the log mode's handler).

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which loop a thread runs, for its allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main thread once the frontend is up: signals, stats, the control
    /// and API sockets (which bind published ports), resolv.conf, the
    /// spawned command.
    Control,
    /// A stack worker: io_uring (or epoll) socket I/O and its frame port.
    Worker,
    /// The stream frontend's reader (accepts the next QEMU connection).
    Stream,
    /// The vhost-user server and the daemon threads it starts.
    Vhost,
    /// The VMM: vCPUs, device threads, virtio queues.
    Vmm,
    /// The pcap writer.
    Pcap,
    /// `-net tap`'s queue threads.
    TapNet,
    /// pasta's `-T`/`-U` relay: sockets only (its listeners were made in
    /// the namespace before the sandbox).
    NsFwd,
    /// `-T auto`'s binder, a process of its own in the namespace: it
    /// makes loopback listeners and sends them back, nothing else.
    NsBind,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Control => "control",
            Role::Worker => "worker",
            Role::Stream => "stream",
            Role::Vhost => "vhost",
            Role::Vmm => "vmm",
            Role::Pcap => "pcap",
            Role::TapNet => "tapnet",
            Role::NsFwd => "nsfwd",
            Role::NsBind => "nsbind",
        })
    }
}

/// Calls every thread may make.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
    libc::SYS_dup,
];

/// Socket calls on descriptors and addresses (no path is opened through
/// them: AF_UNIX sockets are bound before the sandbox, or abstract).
const SOCKETS: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
];

/// Readiness and wake-ups.
const EVENTS: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// Starting threads (std's spawn: clone3, falling back to clone).
const THREADS: &[i64] = &[libc::SYS_clone3, libc::SYS_clone];

/// What each role adds to [`BASE`], and whether it may use any ioctl (the
/// VMM's KVM calls) instead of [`SOCKET_IOCTLS`] (and, for `-net tap`'s
/// queues, `TUNSETOFFLOAD` as the guest's driver changes its offloads).
fn extra(role: Role) -> (Vec<i64>, bool) {
    let mut v = Vec::new();
    let mut any_ioctl = false;
    match role {
        Role::Control => {
            v.extend_from_slice(SOCKETS);
            v.extend_from_slice(EVENTS);
            v.extend_from_slice(&[
                libc::SYS_openat,
                libc::SYS_unlinkat,
                libc::SYS_wait4,
                libc::SYS_waitid,
                libc::SYS_kill,
                libc::SYS_pipe2,
            ]);
        }
        Role::Worker => {
            v.extend_from_slice(SOCKETS);
            v.extend_from_slice(EVENTS);
            v.extend_from_slice(&[
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_enter,
                libc::SYS_io_uring_register,
                libc::SYS_sched_setaffinity,
            ]);
        }
        Role::Stream => {
            v.extend_from_slice(SOCKETS);
            v.extend_from_slice(EVENTS);
        }
        Role::Vhost => {
            v.extend_from_slice(SOCKETS);
            v.extend_from_slice(EVENTS);
            v.extend_from_slice(THREADS);
        }
        Role::Vmm => {
            v.extend_from_slice(EVENTS);
            v.extend_from_slice(THREADS);
            v.extend_from_slice(&[libc::SYS_sched_setaffinity, libc::SYS_rt_sigaction]);
            any_ioctl = true;
        }
        Role::Pcap => {}
        Role::TapNet => {
            v.extend_from_slice(EVENTS);
        }
        Role::NsFwd => {
            v.extend_from_slice(SOCKETS);
        }
        Role::NsBind => {
            // No connect, accept or plain send/receive: it binds,
            // listens, and passes descriptors over its socketpair.
            v.extend_from_slice(&[
                libc::SYS_socket,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_setsockopt,
                libc::SYS_getsockname,
                libc::SYS_sendmsg,
                libc::SYS_recvmsg,
            ]);
        }
    }
    (v, any_ioctl)
}

/// The ioctls a socket loop makes: non-blocking mode, queue sizes.
const SOCKET_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIONREAD, libc::TIOCOUTQ];

fn eq(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// The rule map of `role`: syscall number to the rules of which one must
/// match (an empty list matches always).
fn rules(
    role: Role,
    pid: libc::pid_t,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let (extra, any_ioctl) = extra(role);
    for &nr in BASE.iter().chain(extra.iter()) {
        m.insert(nr, Vec::new());
    }
    let pid = u64::try_from(pid).unwrap_or(0);
    m.insert(libc::SYS_tgkill, vec![eq(0, pid)?]);
    m.insert(
        libc::SYS_prctl,
        vec![
            eq(0, libc::PR_SET_NAME as u64)?,
            eq(0, libc::PR_GET_NAME as u64)?,
        ],
    );
    m.entry(libc::SYS_rt_sigaction)
        .or_insert(vec![eq(0, libc::SIGSYS as u64)?]);
    if any_ioctl {
        m.insert(libc::SYS_ioctl, Vec::new());
    } else {
        let tun: &[u64] = if role == Role::TapNet {
            &[libc::TUNSETOFFLOAD]
        } else {
            &[]
        };
        m.insert(
            libc::SYS_ioctl,
            SOCKET_IOCTLS
                .iter()
                .chain(tun)
                .map(|&r| eq(1, r))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(m)
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        TargetArch::x86_64
    }
}

/// The compiled filters of `role`, to be installed in order. `trap`: a
/// forbidden call raises SIGSYS (for the log line) instead of killing the
/// process at once.
///
/// The first filter, in every role but the control thread's, answers
/// `openat` with EACCES; the second is the allow-list, which lets `openat`
/// through. The kernel runs every installed filter and keeps the strictest
/// answer, so the EACCES stands.
pub fn build(
    role: Role,
    pid: libc::pid_t,
    trap: bool,
) -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let backend = seccompiler::Error::Backend;
    let mut out = Vec::new();
    if role != Role::Control {
        let deny = SeccompFilter::new(
            [(libc::SYS_openat, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(u32::try_from(libc::EACCES).unwrap_or(13)),
            arch(),
        )
        .map_err(backend)?;
        out.push(BpfProgram::try_from(deny).map_err(backend)?);
    }
    let mismatch = if trap {
        SeccompAction::Trap
    } else {
        SeccompAction::KillProcess
    };
    let mut allowed = rules(role, pid).map_err(backend)?;
    allowed.entry(libc::SYS_openat).or_default();
    let filter =
        SeccompFilter::new(allowed, mismatch, SeccompAction::Allow, arch()).map_err(backend)?;
    out.push(BpfProgram::try_from(filter).map_err(backend)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 9] = [
        Role::Control,
        Role::Worker,
        Role::Stream,
        Role::Vhost,
        Role::Vmm,
        Role::Pcap,
        Role::TapNet,
        Role::NsFwd,
        Role::NsBind,
    ];

    #[test]
    fn every_role_compiles() {
        for r in ROLES {
            for trap in [false, true] {
                let p = build(r, 1234, trap).unwrap();
                assert_eq!(p.len(), if r == Role::Control { 1 } else { 2 }, "{r}");
                assert!(p.iter().all(|f| !f.is_empty()), "{r}");
            }
        }
    }

    #[test]
    fn no_role_may_execute_trace_mount_or_change_identity() {
        let never = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_bpf,
            libc::SYS_setuid,
            libc::SYS_setgid,
            libc::SYS_capset,
            libc::SYS_process_vm_writev,
            libc::SYS_open,
            libc::SYS_keyctl,
            libc::SYS_syslog,
        ];
        for r in ROLES {
            let m = rules(r, 1).unwrap();
            for nr in never {
                assert!(
                    !m.contains_key(&nr),
                    "{r} allows {}",
                    super::super::syscall_name(nr)
                );
            }
        }
    }

    #[test]
    fn only_the_control_thread_opens_files_and_only_workers_set_up_rings() {
        for r in ROLES {
            let m = rules(r, 1).unwrap();
            assert_eq!(m.contains_key(&libc::SYS_openat), r == Role::Control, "{r}");
            assert_eq!(
                m.contains_key(&libc::SYS_io_uring_setup),
                r == Role::Worker,
                "{r}"
            );
        }
    }

    #[test]
    fn the_binder_makes_listeners_and_nothing_else() {
        let m = rules(Role::NsBind, 1).unwrap();
        for nr in [
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_sendmsg,
        ] {
            assert!(m.contains_key(&nr), "{}", super::super::syscall_name(nr));
        }
        for nr in [
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_sendto,
            libc::SYS_clone3,
            libc::SYS_kill,
        ] {
            assert!(!m.contains_key(&nr), "{}", super::super::syscall_name(nr));
        }
    }

    /// Run `body` in a forked child held to `role`'s filters (killing, not
    /// trapping); return how the child ended.
    fn in_child(role: Role, body: fn() -> i32) -> (Option<i32>, Option<i32>) {
        // Built before the fork: the child only makes system calls.
        // SAFETY: getpid has no preconditions.
        let progs = build(role, unsafe { libc::getpid() }, false).unwrap();
        // SAFETY: the child runs only async-signal-safe code (prctl,
        // seccomp, raw system calls, _exit) on memory prepared before.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            for p in &progs {
                if seccompiler::apply_filter(p).is_err() {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(99) };
                }
            }
            // SAFETY: ends the child with the body's code.
            unsafe { libc::_exit(body()) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child into a live int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let sig = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
        (code, sig)
    }

    #[test]
    fn a_worker_may_not_open_files_and_dies_of_a_forbidden_call() {
        // openat: EACCES, the process goes on.
        let (code, sig) = in_child(Role::Worker, || {
            // SAFETY: a NUL-terminated literal path.
            let fd = unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
            let e = std::io::Error::last_os_error().raw_os_error();
            if fd < 0 && e == Some(libc::EACCES) {
                0
            } else {
                1
            }
        });
        assert_eq!((code, sig), (Some(0), None));
        // A call on no list: killed by SIGSYS.
        let (code, sig) = in_child(Role::Worker, || {
            // SAFETY: SYSLOG_ACTION_SIZE_BUFFER reads and writes nothing.
            unsafe { libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0) };
            0
        });
        assert_eq!((code, sig), (None, Some(libc::SIGSYS)));
        // What a worker does: sockets.
        let (code, sig) = in_child(Role::Worker, || {
            // SAFETY: socket takes integers only.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            // SAFETY: closes the socket just made, ours alone.
            i32::from(fd < 0 || unsafe { libc::close(fd) } != 0)
        });
        assert_eq!((code, sig), (Some(0), None));
    }

    #[test]
    fn the_binder_listens_but_dies_connecting() {
        let (code, sig) = in_child(Role::NsBind, || {
            // SAFETY: socket takes integers only.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: listen on the socket just made (an ephemeral port).
            i32::from(fd < 0 || unsafe { libc::listen(fd, 1) } != 0)
        });
        assert_eq!((code, sig), (Some(0), None));
        let (code, sig) = in_child(Role::NsBind, || {
            // SAFETY: socket takes integers only.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: a null address of length 0: EFAULT/EINVAL if the
            // filter let it through; it does not.
            unsafe { libc::connect(fd, std::ptr::null(), 0) };
            0
        });
        assert_eq!((code, sig), (None, Some(libc::SIGSYS)));
    }

    #[test]
    fn the_control_thread_opens_but_cannot_set_up_a_ring() {
        let (code, sig) = in_child(Role::Control, || {
            // SAFETY: a NUL-terminated literal path.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
            // SAFETY: closes the fd just opened, ours alone.
            i32::from(fd < 0 || unsafe { libc::close(fd) } != 0)
        });
        assert_eq!((code, sig), (Some(0), None));
        let (code, sig) = in_child(Role::Control, || {
            // SAFETY: io_uring_setup with a null params pointer fails with
            // EFAULT if the filter lets it through; it does not.
            unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null_mut::<u8>()) };
            0
        });
        assert_eq!((code, sig), (None, Some(libc::SIGSYS)));
    }
}
