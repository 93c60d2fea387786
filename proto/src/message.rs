//! The types a publish carries from the control plane through the edge to viewers.

use bytes::Bytes;

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// The publisher's JSON text, passed through untouched.
    pub data: Bytes,
}
