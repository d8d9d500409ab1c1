//! The control queue (virtio 1.2 §5.1.6.5): each command is read out of
//! guest memory (bounded by [`CTRL_MAX`]), acked with one status byte, and
//! what it asks of the device comes back as a [`CtrlEffect`]; only the
//! queue-pair count (MQ) has one. Chains are checked as on the data queues
//! ([`super::pop_chain`]): a broken one is a [`ChainError`].

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{ChainError, check, pop_chain, walk};

/// Control queue classes and commands (§5.1.6.5).
mod cmd {
    pub const CLASS_RX: u8 = 0;
    pub const CLASS_MAC: u8 = 1;
    pub const CLASS_ANNOUNCE: u8 = 3;
    pub const CLASS_MQ: u8 = 4;
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
}

/// What a control command asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlEffect {
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: use this many queue pairs.
    QueuePairs(u16),
}

/// Most readable bytes of one control command (a MAC table of 4096
/// entries fits).
const CTRL_MAX: usize = 32 * 1024;

/// Process every pending control command, writing the ack byte; returns
/// true if any chain was used (the caller then asks
/// `QueueT::needs_notification`). RX-mode and MAC commands are acked: uipd
/// delivers every frame to the one guest anyway.
pub fn ctrl_process<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    max_pairs: u16,
    effects: &mut Vec<CtrlEffect>,
) -> Result<bool, ChainError> {
    let mut any = false;
    while let Some(chain) = pop_chain(q, mem)? {
        let head = chain.head_index();
        let mut cmd = Vec::new();
        let mut ack: Option<GuestAddress> = None;
        let mut too_long = false;
        walk(chain, None, |d| {
            let n = check(mem, head, d)?;
            if d.is_write_only() {
                if n > 0 && ack.is_none() {
                    ack = Some(d.addr());
                }
            } else if ack.is_some() {
                // Readable after writable (§2.7.4.2).
                return Err(ChainError::Direction { head });
            } else if too_long || cmd.len() + n > CTRL_MAX {
                too_long = true;
            } else {
                let at = cmd.len();
                cmd.resize(at + n, 0);
                mem.read_slice(&mut cmd[at..], d.addr())
                    .map_err(|_| ChainError::OutOfMemory {
                        head,
                        addr: d.addr().0,
                        len: d.len(),
                    })?;
            }
            Ok(())
        })?;
        let Some(ack) = ack else {
            return Err(ChainError::Direction { head });
        };
        let status = match (too_long, cmd.as_slice()) {
            (false, [cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, lo, hi, ..]) => {
                let pairs = u16::from_le_bytes([*lo, *hi]);
                if (1..=max_pairs).contains(&pairs) {
                    effects.push(CtrlEffect::QueuePairs(pairs));
                    cmd::OK
                } else {
                    cmd::ERR
                }
            }
            (false, [cmd::CLASS_RX | cmd::CLASS_MAC | cmd::CLASS_ANNOUNCE, _, ..]) => cmd::OK,
            _ => cmd::ERR,
        };
        mem.write_slice(&[status], ack)
            .map_err(|_| ChainError::Rings)?;
        q.add_used(mem, head, 1).map_err(|_| ChainError::Rings)?;
        any = true;
    }
    Ok(any)
}
