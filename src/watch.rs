//! What the control thread watches to know when to quit, from inside the
//! sandbox: a file (an [`Anchor`]) or a process (a pidfd).
//!
//! pasta quits when the namespace it serves goes away. A namespace given
//! as a path (a bind mount under /run/netns) is watched through its
//! directory; one given as a PID (`/proc/PID/ns/net`) through a pidfd of
//! the process, opened at start: once uipd has no capabilities it may not
//! look into the namespaces of a process that has some, so the file would
//! seem gone at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sandbox::Anchor;

/// Something whose end ends uipd.
#[derive(Debug)]
pub enum Gone {
    /// A file: gone when it no longer exists.
    File(Anchor),
    /// A process: gone when its pidfd is readable (it exited).
    Process {
        /// The pidfd.
        fd: OwnedFd,
        /// `/proc/PID/ns/net`, for messages.
        path: PathBuf,
    },
}

/// The PID of a `/proc/PID/ns/net` path.
fn proc_pid(path: &Path) -> Option<libc::pid_t> {
    let s = path.to_str()?;
    let pid = s.strip_prefix("/proc/")?.strip_suffix("/ns/net")?;
    pid.parse().ok().filter(|&p| p > 0)
}

impl Gone {
    /// Watch `path`: its process when it is `/proc/PID/ns/net` (and the
    /// kernel has pidfds, 5.3 and later), else the file.
    pub fn new(path: &Path) -> io::Result<Gone> {
        if let Some(pid) = proc_pid(path) {
            // SAFETY: pidfd_open takes a PID and flags; the fd returned is
            // ours alone.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if let Ok(fd) = i32::try_from(fd)
                && fd >= 0
            {
                return Ok(Gone::Process {
                    // SAFETY: `fd` was just opened and is owned by nobody
                    // else.
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    path: path.to_path_buf(),
                });
            }
            log::debug!(
                "pidfd_open({pid}): {}; watching {} instead",
                io::Error::last_os_error(),
                path.display()
            );
        }
        Anchor::new(path).map(Gone::File)
    }

    /// Whether it is gone now (never blocks).
    pub fn gone(&self) -> bool {
        match self {
            Gone::File(a) => !a.exists(),
            Gone::Process { fd, .. } => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd, a zero timeout.
                unsafe { libc::poll(&mut p, 1, 0) > 0 }
            }
        }
    }

    /// What is watched, for messages.
    pub fn path(&self) -> &Path {
        match self {
            Gone::File(a) => a.path(),
            Gone::Process { path, .. } => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_name_their_pid() {
        assert_eq!(proc_pid(Path::new("/proc/42/ns/net")), Some(42));
        assert_eq!(proc_pid(Path::new("/proc/self/ns/net")), None);
        assert_eq!(proc_pid(Path::new("/proc/0/ns/net")), None);
        assert_eq!(proc_pid(Path::new("/run/netns/x")), None);
    }

    #[test]
    fn a_process_is_gone_once_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        let g = Gone::new(&path).unwrap();
        assert!(matches!(g, Gone::Process { .. }));
        assert!(!g.gone());
        child.wait().unwrap();
        assert!(g.gone());
    }

    #[test]
    fn a_file_is_gone_once_removed() {
        let p = std::env::temp_dir().join(format!("uipd-gone-{}", std::process::id()));
        std::fs::write(&p, "").unwrap();
        let g = Gone::new(&p).unwrap();
        assert!(!g.gone());
        std::fs::remove_file(&p).unwrap();
        assert!(g.gone());
    }
}
