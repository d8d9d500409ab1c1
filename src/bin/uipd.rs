//! The uipd daemon.
fn main() {}
