//! The embedded VMM and virtio devices (planned: issues 4 and 5).
