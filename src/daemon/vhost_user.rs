//! vhost-user mode (`--vhost-user PATH`): a VMM (QEMU, cloud-hypervisor)
//! hands uipd the guest's virtqueues; one worker per queue pair,
//! hash-steered, writing straight into the RX queues
//! ([`crate::vmm::vhost_user`]). The socket stays in place between VMMs
//! and is removed at the end.

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::forwards::Publish;
use super::workers::{Workers, start_virtio_workers};
use super::{Config, Error, Serving, inboxes, install_signals, io_err, serve};
use crate::sandbox::Anchor;
use crate::stack;
use crate::vmm::vhost_user::Device;

/// vhost-user mode: one worker per queue pair, hash-steered; see
/// [`crate::vmm::vhost_user`].
pub(super) fn run_vhost_user(
    cfg: &Config,
    path: &std::path::Path,
    publish: Publish,
) -> Result<i32, Error> {
    // Bound before anything starts, so a path in use is a start-up error.
    let listener = crate::dataplane::stream::bind(path).map_err(io_err(&format!(
        "listening on the vhost-user socket {}",
        path.display()
    )))?;
    // Removed at the end, from inside the sandbox.
    let socket_file =
        Anchor::new(path).map_err(io_err(&format!("anchoring {}", path.display())))?;
    install_signals(true);
    let n = cfg.workers.max(1);
    let inboxes = inboxes(n, stack::wire::vnet_hdr::HEADER_LEN + 14 + 65535)?;
    let dev = Device::new(inboxes.clone(), cfg.stack.mtu, cfg.stack.offload.vnet_hdr);
    let workers = start_virtio_workers(cfg, inboxes, |i| Box::new(dev.sink(i)))?;
    dev.set_workers(workers.shared.clone());
    let backend = Backend {
        dev,
        listener: Some(listener),
        socket_file,
        stop: Arc::new(AtomicBool::new(false)),
        server: None,
    };
    serve(cfg, publish, workers, backend)
}

/// The vhost-user socket while it is served, by thread `uipd-vhost`.
struct Backend {
    dev: Arc<Device>,
    /// The listening socket, until the server thread takes it.
    listener: Option<UnixListener>,
    /// The socket's file, removed at the end.
    socket_file: Anchor,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Serving for Backend {
    fn start(&mut self, _: &Config, _: &Workers) -> Result<(), Error> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let (dev, stop) = (self.dev.clone(), self.stop.clone());
        let server = std::thread::Builder::new()
            .name("uipd-vhost".into())
            .spawn(move || {
                crate::sandbox::confine(crate::sandbox::Role::Vhost)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                dev.serve(&listener, &stop)
            })
            .map_err(io_err("starting the vhost-user server"))?;
        self.server = Some(server);
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<i32>, Error> {
        if self.server.as_ref().is_some_and(|s| s.is_finished()) {
            log::error!("the vhost-user server stopped");
            return Ok(Some(1));
        }
        Ok(None)
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server
            && server.join().is_err()
        {
            log::error!("the vhost-user server panicked");
        }
        let _ = self.socket_file.remove();
        log::info!("vhost-user: {}", self.dev.counters().summary());
    }
}
