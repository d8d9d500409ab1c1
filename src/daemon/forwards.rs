//! What the daemon opens for every frontend before anything else runs:
//! the published ports (`--publish`, passt's `all`), the control socket,
//! slirp4netns's API socket, and the files written or watched later
//! (opened before the sandbox). [`Publish`] carries them from
//! [`super::run`] through the frontend to [`super::control_loop`].

use super::workers::Workers;
use super::{Config, Error, io_err};
use crate::sandbox::Anchor;

/// Bind every free non-ephemeral port of each set (passt's `all`): ports
/// in use or privileged are skipped, as passt does, and counted in a debug
/// line; a set of which nothing could be bound is an error, and running
/// out of file descriptors is said once.
fn publish_every(
    sets: &[crate::publish::PortSet],
    forwards: &mut crate::control::Forwards,
) -> Result<(), Error> {
    use crate::publish;
    if sets.is_empty() {
        return Ok(());
    }
    let eph = publish::ephemeral_range();
    let ports: u64 = sets
        .iter()
        .map(|s| {
            let n = (1..=u16::MAX)
                .filter(|&p| !s.excludes(p) && !(eph.0..=eph.1).contains(&p))
                .count();
            (n * s.addrs().len()) as u64
        })
        .sum();
    // Each port is one descriptor; keep room for the flows, the frontend
    // and the rest (a quarter of the limit, at least 1024).
    let limit = publish::raise_nofile(ports + 4096);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let reserve = (limit / 4).max(1024);
    let mut budget = limit.saturating_sub(publish::open_fds().unwrap_or(64) + reserve);
    let started = std::time::Instant::now();
    let mut total = 0;
    for set in sets {
        let what = match set.addr {
            Some(a) => format!("{a}/all/{}", set.proto),
            None => format!("all/{}", set.proto),
        };
        let every = publish::bind_every(set, eph, &mut budget);
        let bound: usize = every.runs.iter().map(|(_, b)| b.len()).sum();
        log::debug!(
            "{what}: {bound} ports bound in {} runs, {} skipped (in use or privileged), \
             ephemeral {}-{} left out",
            every.runs.len(),
            every.skipped,
            eph.0,
            eph.1
        );
        if every.no_fd > 0 {
            log::warn!(
                "{what}: {bound} sockets bound, then out of file descriptors: {} more \
                 (the highest ports) are not forwarded; RLIMIT_NOFILE is {limit} (with \
                 {reserve} kept for flows), {} would be needed: raise the hard limit \
                 (ulimit -Hn) or exclude ports (~P-Q)",
                every.no_fd,
                ports.saturating_add(reserve as u64)
            );
        }
        if bound == 0 {
            return Err(Error::Publish(format!(
                "{what}: no port could be bound (all in use, privileged or out of descriptors)"
            )));
        }
        total += bound;
        for (spec, b) in every.runs {
            forwards.insert(spec, b);
        }
    }
    log::info!(
        "all: {total} ports bound in {} ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Published ports and the control socket, handed from [`super::run`] to the
/// frontend and on to [`super::control_loop`]. Worker 0 serves every published
/// port, in every frontend (see [`Workers::start`] for why its flows stay
/// on it).
pub(super) struct Publish {
    pub(super) forwards: crate::control::Forwards,
    pub(super) control: Option<crate::control::Control>,
    /// slirp4netns's API socket.
    pub(super) api: Option<crate::compat::slirp4netns::Api>,
    /// Exit when this fd is readable or closed (slirp4netns's `-e`).
    pub(super) exit_fd: Option<std::os::fd::RawFd>,
    /// Exit when this file is gone (pasta's namespace file).
    pub(super) watch_netns: Option<crate::watch::Gone>,
    /// Where the standard descriptors go once uipd serves.
    pub(super) detached: Option<crate::compat::Detached>,
    /// `--stats-json`, written at the end.
    pub(super) stats_file: Option<std::fs::File>,
    /// The host's resolv.conf, re-read when it changes (none when the
    /// resolvers were given).
    pub(super) resolv: Option<Anchor>,
    /// pasta's `auto`: the namespace's ports, followed (namespace mode).
    pub(super) auto: Option<crate::autoports::AutoPorts>,
    /// pasta's `-T auto`: the host's ports, followed (namespace mode).
    pub(super) ns_auto: Option<crate::nsauto::NsAuto>,
}

impl Publish {
    /// Binds the published ports and the control and API sockets, and opens
    /// the files written or watched later, in that order: a port in use is
    /// an error before any namespace or thread exists.
    pub(super) fn open(cfg: &Config, resolv: Option<Anchor>) -> Result<Publish, Error> {
        let mut forwards = crate::control::Forwards::new();
        for spec in &cfg.publish {
            forwards.add(spec).map_err(Error::Publish)?;
        }
        publish_every(&cfg.publish_every, &mut forwards)?;
        let control = match &cfg.control {
            Some(path) => Some(crate::control::Control::bind(path)?),
            None => None,
        };
        let api = match &cfg.api_socket {
            Some(path) => Some(
                crate::compat::slirp4netns::Api::bind(path, cfg.stack.guest_ip).map_err(io_err(
                    &format!("listening on the API socket {}", path.display()),
                ))?,
            ),
            None => None,
        };
        // Files written or watched later are opened now, before the sandbox.
        let watch_netns = match &cfg.watch_netns {
            Some(p) => Some(
                crate::watch::Gone::new(p).map_err(io_err(&format!("watching {}", p.display())))?,
            ),
            None => None,
        };
        let detached = match &cfg.detach_stdio {
            Some(log) => Some(
                crate::compat::open_detached(log.as_deref())
                    .map_err(io_err("opening /dev/null and the log file"))?,
            ),
            None => None,
        };
        let stats_file = match &cfg.stats_json {
            Some(p) => Some(
                std::fs::File::create(p).map_err(io_err(&format!("creating {}", p.display())))?,
            ),
            None => None,
        };
        Ok(Publish {
            forwards,
            control,
            api,
            exit_fd: cfg.exit_fd,
            watch_netns,
            detached,
            stats_file,
            resolv,
            auto: None,
            ns_auto: None,
        })
    }

    /// Hand the bound ports to worker 0.
    pub(super) fn start(&mut self, workers: &Workers) {
        self.forwards.flush(&workers.shared[0], &workers.inboxes[0]);
    }
}
