//! Virtio devices and their transports.
//!
//! - [`virtio_net`]: the virtio-net device model (features, config space,
//!   TX/RX/control queue data path), transport-agnostic.
//! - [`vhost_user`]: the vhost-user-net backend (`--vhost-user SOCKET`)
//!   on top of it.
//!
//! The embedded KVM VMM (virtio-pci) is planned (issue 5) and will reuse
//! [`virtio_net`].

pub mod vhost_relay;
pub mod vhost_user;
pub mod virtio_net;
