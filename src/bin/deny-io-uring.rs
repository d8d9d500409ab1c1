//! `deny-io-uring COMMAND [ARGS...]`: run COMMAND the way a container's
//! default seccomp profile (Docker >= 25, containerd 2.0) would: with
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register` refused with
//! `EPERM`. Test support for uipd's epoll fallback (tests/io_engines.rs),
//! and a way to try `uipd --io auto` as it runs in such a container.
//!
//! It sets `PR_SET_NO_NEW_PRIVS` (seccompiler's `apply_filter` does, which
//! an unprivileged filter needs), installs the filter, and execs COMMAND,
//! which keeps the filter, as do its children.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn arch() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Some(TargetArch::riscv64)
    } else {
        None
    }
}

fn filter() -> Result<BpfProgram, String> {
    let arch = arch().ok_or("unsupported architecture")?;
    // Unconditional rules (no argument conditions): each listed syscall
    // matches, and matching is refused.
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    let eperm = u32::try_from(libc::EPERM).map_err(|e| e.to_string())?;
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,        // mismatch: everything else runs
        SeccompAction::Errno(eperm), // match: refused like Docker's profile
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(f).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("usage: deny-io-uring COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let prog = match filter() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("deny-io-uring: cannot build the seccomp filter: {e}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = seccompiler::apply_filter(&prog) {
        eprintln!("deny-io-uring: cannot install the seccomp filter: {e}");
        return ExitCode::from(125);
    }
    let err = std::process::Command::new(&cmd).args(args).exec();
    eprintln!("deny-io-uring: cannot run {}: {err}", cmd.to_string_lossy());
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
