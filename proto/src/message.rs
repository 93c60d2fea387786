//! The types a publish carries from the control plane through the edge to viewers.

use bytes::Bytes;

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Every member of a room.
    Room(String),
    /// Every connection of one user (the user's private channel).
    User(String),
    /// Every connection on every edge.
    Broadcast,
}

impl Target {
    /// Wire tag shared by the client batch and the link publish: 0 room, 1 user, 2 broadcast.
    pub fn tag(&self) -> u8 {
        match self {
            Target::Room(_) => 0,
            Target::User(_) => 1,
            Target::Broadcast => 2,
        }
    }

    /// The room or user id; empty for broadcast.
    pub fn id(&self) -> &str {
        match self {
            Target::Room(id) | Target::User(id) => id,
            Target::Broadcast => "",
        }
    }
}

/// Message priorities: 0 system, 1 big gift, 2 small gift, 3 chat/activity state.
pub const PRIORITIES: usize = 4;

/// One published message as it is pushed to viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// Per-channel sequence number assigned by the control plane.
    pub seq: u64,
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
    /// Short message kind such as `gift` or `chat` (at most 255 bytes, no control characters).
    pub kind: String,
    /// The publisher's JSON text, passed through untouched (for a `sum` merge, the newest
    /// message's with the summed fields replaced).
    pub data: Bytes,
    /// How many published messages a merge rule combined into this one; 0 for a message
    /// without a merge rule (PROTOCOL.md §5).
    pub merged: u32,
    /// The final message of its merge key: never dropped by budgets or shedding, like
    /// priority 0.
    pub is_final: bool,
    /// The viewer who sent it (a client `send` published into its room, PROTOCOL.md §5
    /// "Upstream"); `None` for what the platform published. At most 128 bytes (an id).
    pub from: Option<Box<str>>,
    /// The platform asked viewers to acknowledge it (a client `ack` op, PROTOCOL.md §5
    /// "Receipts").
    pub ack: bool,
}

/// In binary formats a message's priority byte also carries its flags: the priority in the low
/// two bits, [`FLAG_MERGED`] when a `merged u32` follows the byte, [`FLAG_FINAL`], [`FLAG_FROM`]
/// when a `from str8` follows (after `merged`), and [`FLAG_ACK`].
pub const FLAG_FINAL: u8 = 0x40;
/// See [`FLAG_FINAL`].
pub const FLAG_MERGED: u8 = 0x80;
/// See [`FLAG_FINAL`].
pub const FLAG_FROM: u8 = 0x20;
/// See [`FLAG_FINAL`].
pub const FLAG_ACK: u8 = 0x10;
const PRIORITY_BITS: u8 = 0x03;
const RESERVED_BITS: u8 = !(PRIORITY_BITS | FLAG_MERGED | FLAG_FINAL | FLAG_FROM | FLAG_ACK);

/// A binary priority byte taken apart ([`split_priority_byte`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityByte {
    pub priority: u8,
    pub is_final: bool,
    /// A `merged u32` follows the byte.
    pub merged_follows: bool,
    /// A `from str8` follows (after `merged`).
    pub from_follows: bool,
    pub ack: bool,
}

impl PushMessage {
    /// A message without a merge rule.
    pub fn new(seq: u64, priority: u8, kind: impl Into<String>, data: Bytes) -> PushMessage {
        PushMessage {
            seq,
            priority,
            kind: kind.into(),
            data,
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        }
    }

    /// The priority budgets and shedding treat it as: a final message counts as priority 0.
    pub fn shed_priority(&self) -> u8 {
        if self.is_final {
            0
        } else {
            self.priority
        }
    }

    /// The priority byte of binary formats, flags included.
    pub fn priority_byte(&self) -> u8 {
        let mut byte = self.priority;
        if self.is_final {
            byte |= FLAG_FINAL;
        }
        if self.merged > 0 {
            byte |= FLAG_MERGED;
        }
        if self.from.is_some() {
            byte |= FLAG_FROM;
        }
        if self.ack {
            byte |= FLAG_ACK;
        }
        byte
    }
}

/// Splits a binary priority byte; None when a reserved bit is set (priorities are 0..=3, so
/// the two low bits always hold one).
pub fn split_priority_byte(byte: u8) -> Option<PriorityByte> {
    (byte & RESERVED_BITS == 0).then_some(PriorityByte {
        priority: byte & PRIORITY_BITS,
        is_final: byte & FLAG_FINAL != 0,
        merged_follows: byte & FLAG_MERGED != 0,
        from_follows: byte & FLAG_FROM != 0,
        ack: byte & FLAG_ACK != 0,
    })
}

/// Why a recovery was refused (PROTOCOL.md §5); its wire code is a `u8` from 1 to 4, in the
/// order of the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryFailure {
    /// The channel's epoch is not the one the client holds: its numbering or history was lost.
    EpochChanged,
    /// Some of the missed messages are no longer in the history.
    TooOld,
    /// More messages were missed than a recovery replays.
    TooMany,
    /// Some of the missed messages were never stored (their priority is not kept at the room's
    /// level).
    NotStored,
}

impl RecoveryFailure {
    /// Every reason, in wire-code order (code 1 first).
    pub const ALL: [RecoveryFailure; 4] = [
        RecoveryFailure::EpochChanged,
        RecoveryFailure::TooOld,
        RecoveryFailure::TooMany,
        RecoveryFailure::NotStored,
    ];

    /// The reason as JSON spells it, e.g. `too_old`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryFailure::EpochChanged => "epoch_changed",
            RecoveryFailure::TooOld => "too_old",
            RecoveryFailure::TooMany => "too_many",
            RecoveryFailure::NotStored => "not_stored",
        }
    }

    /// The binary code: 1 ..= 4 (0 means "recovered" where a result byte carries one).
    pub fn code(self) -> u8 {
        match self {
            RecoveryFailure::EpochChanged => 1,
            RecoveryFailure::TooOld => 2,
            RecoveryFailure::TooMany => 3,
            RecoveryFailure::NotStored => 4,
        }
    }

    /// The reason with binary code `code`, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }

    /// The reason spelled `s` in JSON, if it is one.
    // An inherent `Option` lookup, like `from_code`; `FromStr` would need an error type nobody
    // uses.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resume position: the channel's epoch and the last `seq` the client has of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The channel's epoch as the client last saw it (1–32 bytes of `[A-Za-z0-9_-]`; see
    /// [`crate::ids::is_valid_epoch`]).
    pub epoch: String,
    /// The last `seq` the client received on the channel.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_failures_spell_and_number_the_protocol_table() {
        let table: Vec<(u8, &str)> = RecoveryFailure::ALL
            .iter()
            .map(|f| (f.code(), f.as_str()))
            .collect();
        assert_eq!(
            table,
            [
                (1, "epoch_changed"),
                (2, "too_old"),
                (3, "too_many"),
                (4, "not_stored")
            ]
        );
        for f in RecoveryFailure::ALL {
            assert_eq!(RecoveryFailure::from_code(f.code()), Some(f));
            assert_eq!(RecoveryFailure::from_str(f.as_str()), Some(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        for code in [0, 5, 0x80, 0xff] {
            assert_eq!(RecoveryFailure::from_code(code), None);
        }
        for s in ["", "TOO_OLD", "too old", "recovered"] {
            assert_eq!(RecoveryFailure::from_str(s), None);
        }
    }
}
