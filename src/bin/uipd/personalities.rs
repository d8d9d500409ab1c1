//! `uipd ctl` and uipd's personalities (slirp4netns, passt, pasta: see
//! [`uipd::compat`]): each parses its own command line into a
//! [`daemon::Config`] and runs the daemon its way ([`serve_daemon`]).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use uipd::daemon;

use crate::{error_chain, parse_publish};

/// Talk to a running uipd through its control socket.
///
/// Examples:
///   uipd ctl --control /run/uipd.sock list
///   uipd ctl --control /run/uipd.sock add 127.0.0.1:8080:80
///   uipd ctl --control /run/uipd.sock remove 8080:80
#[derive(Debug, Parser)]
#[command(name = "uipd ctl", verbatim_doc_comment)]
struct CtlCli {
    /// The daemon's control socket (its --control).
    #[arg(long, value_name = "SOCKET")]
    control: std::path::PathBuf,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCmd {
    /// Published ports, flows per worker, counters.
    List,
    /// Publish a port (SPEC as for --publish).
    Add {
        /// [ADDR:]HOSTPORT[-HOSTPORT2]:GUESTPORT[-GUESTPORT2][/tcp|/udp]
        #[arg(value_parser = parse_publish)]
        spec: uipd::publish::PublishSpec,
    },
    /// Stop publishing a port added before.
    Remove {
        /// The spec as added (any spelling of it).
        #[arg(value_parser = parse_publish)]
        spec: uipd::publish::PublishSpec,
    },
}

pub(crate) fn ctl_main(args: &[OsString]) -> ExitCode {
    let cli = CtlCli::parse_from(args);
    let line = match &cli.cmd {
        CtlCmd::List => "list".to_string(),
        CtlCmd::Add { spec } => format!("add {spec}"),
        CtlCmd::Remove { spec } => format!("remove {spec}"),
    };
    match uipd::control::request(&cli.control, &line) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uipd ctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// uipd as slirp4netns (see [`uipd::compat::slirp4netns`]).
pub(crate) fn slirp4netns_main(args: &[OsString]) -> ExitCode {
    use uipd::compat::slirp4netns::{self, Args};
    let argv = std::iter::once(OsString::from("slirp4netns")).chain(args.iter().cloned());
    let a = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if a.version {
        print!("{}", slirp4netns::version());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let workers = uipd::dataplane::cpus::usable_cpus().len();
    let inv = match a.invocation(workers) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("slirp4netns (uipd): {e}");
            return ExitCode::from(1);
        }
    };
    // Before any thread: setns(CLONE_NEWUSER) needs a single-threaded process.
    if let Some(path) = &inv.userns
        && let Err(e) = uipd::dataplane::netns::join_userns(path)
    {
        eprintln!("slirp4netns (uipd): {}", error_chain(&e));
        return ExitCode::from(1);
    }
    match daemon::run(inv.config) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("slirp4netns (uipd): {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// uipd as passt (see [`uipd::compat::passt`]).
pub(crate) fn passt_main(args: &[OsString]) -> ExitCode {
    use uipd::compat::passt::{self, Args};
    let argv = std::iter::once(OsString::from("passt")).chain(args.iter().cloned());
    let a = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if a.version {
        println!(
            "passt (uipd {}): user-mode networking",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if a.print_capabilities {
        print!("{}", passt::CAPABILITIES);
        return ExitCode::SUCCESS;
    }
    let workers = uipd::dataplane::cpus::usable_cpus().len();
    let inv = match a.invocation(workers) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("passt (uipd): {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &inv.socket {
        println!("UNIX domain socket bound at {}", path.display());
    }
    serve_daemon("passt", inv.config, inv.background, inv.pid_file.as_deref())
}

/// uipd as pasta (see [`uipd::compat::pasta`]).
pub(crate) fn pasta_main(args: &[OsString]) -> ExitCode {
    use uipd::compat::pasta::Args;
    let argv = std::iter::once(OsString::from("pasta")).chain(args.iter().cloned());
    let a = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if a.version {
        println!(
            "pasta (uipd {}): user-mode networking",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let workers = uipd::dataplane::cpus::usable_cpus().len();
    let inv = match a.invocation(workers) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pasta (uipd): {e}");
            return ExitCode::from(1);
        }
    };
    // Before any thread: setns(CLONE_NEWUSER) needs a single-threaded process.
    if let Some(path) = &inv.userns
        && let Err(e) = uipd::dataplane::netns::join_userns(path)
    {
        eprintln!("pasta (uipd): {}", error_chain(&e));
        return ExitCode::from(1);
    }
    serve_daemon("pasta", inv.config, inv.background, inv.pid_file.as_deref())
}

/// Run a personality's daemon, in the background passt's way when asked:
/// the parent forks before any thread and exits 0 only once the child
/// serves, the child's PID in `pid_file` by then; else in the foreground,
/// our own PID in `pid_file`.
fn serve_daemon(
    name: &str,
    mut config: daemon::Config,
    background: bool,
    pid_file: Option<&std::path::Path>,
) -> ExitCode {
    let write_pid = |pid: String| match pid_file {
        Some(p) => std::fs::write(p, format!("{pid}\n")).map_err(|e| {
            eprintln!("{name} (uipd): writing the PID file {}: {e}", p.display());
        }),
        None => Ok(()),
    };
    if background {
        // Before any thread: fork(2) copies only the calling thread.
        match uipd::compat::background() {
            Ok(uipd::compat::Forked::Parent { child, ready }) => {
                // The child says "1" once it serves; until then its errors
                // reach our stderr. The PID file exists before we exit.
                if !ready {
                    eprintln!("{name} (uipd): the background process did not start");
                    return ExitCode::from(1);
                }
                return match write_pid(child.to_string()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(()) => ExitCode::from(1),
                };
            }
            Ok(uipd::compat::Forked::Child { ready_fd }) => config.ready_fd = Some(ready_fd),
            Err(e) => {
                eprintln!("{name} (uipd): going to the background: {e}");
                return ExitCode::from(1);
            }
        }
    } else if write_pid(std::process::id().to_string()).is_err() {
        return ExitCode::from(1);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match daemon::run(config) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("{name} (uipd): {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
