//! Virtio devices and their transports.
//!
//! - [`virtio_net`]: the virtio-net device model (features, config space,
//!   TX/RX/control queue data path), transport-agnostic.
//!
//! The embedded KVM VMM (virtio-pci) is planned (issue 5) and will reuse
//! [`virtio_net`].

pub mod virtio_net;
