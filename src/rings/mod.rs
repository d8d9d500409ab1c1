//! Lock-free frame rings between frame ports and workers.
