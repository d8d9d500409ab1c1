//! What a CQE means: the [`Token`] packed into its SQE's `user_data`.
//!
//! ```text
//!   63      56 55        32 31                 0
//!  ┌──────────┬────────────┬────────────────────┐
//!  │ kind tag │  (zero)    │  `ops` slot        │
//!  └──────────┴────────────┴────────────────────┘
//! ```
//!
//! The tag of each [`OpKind`] is written once, in the `op_kinds!` table
//! below, from which both [`Token::pack`] and [`Token::unpack`] are made.
//! Tag 0 is never used, so a zeroed `user_data` does not decode; tag 7 is
//! [`Token::Cancel`] (slot 0).

/// Defines [`OpKind`] and its tags from one table: `Kind = tag`.
macro_rules! op_kinds {
    ($($(#[$doc:meta])* $kind:ident = $tag:literal,)*) => {
        /// What an SQE does; part of its [`Token`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum OpKind {
            $($(#[$doc])* $kind,)*
        }

        impl OpKind {
            /// The kind's tag in `user_data`'s top byte.
            fn tag(self) -> u8 {
                match self {
                    $(OpKind::$kind => $tag,)*
                }
            }

            /// The kind a tag names, if any.
            fn from_tag(tag: u64) -> Option<OpKind> {
                match tag {
                    $($tag => Some(OpKind::$kind),)*
                    _ => None,
                }
            }
        }
    };
}

op_kinds! {
    /// A connect of a flow's socket.
    Connect = 1,
    /// A stream or datagram send.
    Send = 2,
    /// A one-shot receive.
    Recv = 3,
    /// A frame write to the TAP.
    FrameWrite = 4,
    /// The read of the worker's wake eventfd.
    Wake = 5,
    /// A timeout SQE, used only when the kernel lacks `IORING_FEAT_EXT_ARG`.
    Timeout = 6,
    /// A one-shot readiness poll of the TAP.
    PollIn = 9,
    /// The frame port's multishot read (stays in flight across CQEs).
    PortRead = 10,
    /// An accept on a published TCP port.
    Accept = 11,
    /// A readiness poll on a published UDP port.
    DgramPoll = 12,
    /// A datagram flow's multishot receive (stays in flight across CQEs).
    RecvMulti = 13,
    /// Several datagrams of a UDP flow in one segmented `sendmsg`.
    SendSegments = 14,
}

/// The meaning of a CQE, packed into the SQE's `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    /// An op whose resources live in `ops[slot]`.
    Op {
        /// What the op does.
        kind: OpKind,
        /// Its `ops` slot.
        slot: u32,
    },
    /// An `AsyncCancel`; its CQE only says whether the target was found.
    Cancel,
}

impl Token {
    const TAG_SHIFT: u32 = 56;
    const SLOT_MASK: u64 = 0xffff_ffff;
    /// The tag of [`Token::Cancel`] (no [`OpKind`] uses it).
    const CANCEL_TAG: u8 = 7;

    /// Tag in the top byte, slot in the low 32 bits.
    pub(super) fn pack(self) -> u64 {
        let (tag, slot) = match self {
            Token::Op { kind, slot } => (kind.tag(), slot),
            Token::Cancel => (Self::CANCEL_TAG, 0),
        };
        (u64::from(tag) << Self::TAG_SHIFT) | u64::from(slot)
    }

    /// The token `pack` made `v` from, or `None` for any other value.
    pub(super) fn unpack(v: u64) -> Option<Token> {
        if v & !((0xff << Self::TAG_SHIFT) | Self::SLOT_MASK) != 0 {
            return None;
        }
        let slot = u32::try_from(v & Self::SLOT_MASK).ok()?;
        let tag = v >> Self::TAG_SHIFT;
        if tag == u64::from(Self::CANCEL_TAG) {
            return (slot == 0).then_some(Token::Cancel);
        }
        Some(Token::Op {
            kind: OpKind::from_tag(tag)?,
            slot,
        })
    }
}
