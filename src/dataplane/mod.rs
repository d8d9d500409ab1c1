//! Workers, host I/O on io_uring (or epoll where io_uring is refused), and the frame ports that are not virtio.

pub mod bufring;
pub mod cpus;
pub mod epoll;
pub mod io;
pub mod netns;
pub mod offload;
pub mod pcap;
mod sock;
pub mod stream;
pub mod tap;
pub mod uring;
pub mod worker;
