//! The helper's mounts, in its private mount namespace: a fresh sysfs on
//! `/sys` with the old submounts bound back ([`remount_sysfs`]), and a
//! `nameserver` file bound over `/etc/resolv.conf` ([`bind_resolv_conf`]).
//! See the [module docs](super) for why each is needed and what happens when
//! the kernel refuses.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::NetnsError;

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
pub(super) fn remount_sysfs() {
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
pub(super) fn bind_resolv_conf(dns: Ipv4Addr) -> Result<(), NetnsError> {
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
