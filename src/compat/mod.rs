//! Personalities: uipd started under another backend's name, with that
//! backend's command line, fd handshakes and API, so that the programs
//! that launch it (podman, rootlesskit, libvirt, QEMU) need no change.
//!
//! ```text
//!  argv[0] = slirp4netns, or `uipd slirp4netns ARGS` ─► slirp4netns::main_args
//!      ─► daemon::Config (Frontend::Attach, slirp4netns's addressing) + ready/exit fds + API socket
//! ```
//!
//! Each personality parses exactly the options its integrators pass and
//! refuses an unknown one with an error naming it; options uipd accepts
//! without acting on are listed as such in its `--help`.

pub mod slirp4netns;
