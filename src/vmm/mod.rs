//! The embedded VMM and virtio devices.
//!
//! Issue 5, first stage: `uipd --kernel bzImage` boots a Linux guest on KVM
//! with a serial console ([`boot`] lays out memory and the boot protocol).

pub mod boot;
