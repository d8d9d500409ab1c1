//! Workers, host I/O on io_uring, and the frame ports that are not virtio.

pub mod cpus;
pub mod netns;
pub mod offload;
pub mod stream;
pub mod tap;
pub mod uring;
pub mod worker;
