//! uipd: a user-mode network backend for virtual machines and network
//! namespaces.
#![warn(missing_docs)]

pub mod daemon;
pub mod dataplane;
pub mod rings;
pub mod stack;
pub mod vmm;
