//! A worker's channel membership table: room (or user) id → the connections on this core.
//!
//! Members sit in a dense `Vec` so a fan-out walks contiguous memory; each connection remembers
//! its index in every channel it belongs to, so leaving is O(1) (`swap_remove`, then the moved
//! member's remembered index is fixed up by the caller with the returned [`Moved`]).

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::fanout::StreamPosition;
use crate::sys::ConnId;
use roomcast_proto::client::WireFormat;

/// A channel's slot in the table (stable while the channel has members).
pub type ChannelSlot = u32;

#[derive(Debug)]
pub struct Channel {
    pub name: Box<str>,
    pub members: Vec<ConnId>,
    /// Members per wire format, so the hub encodes only the formats in use.
    pub per_format: [u32; 3],
    /// The control plane has confirmed that it routes this channel to this edge (the hub said
    /// so since the channel appeared here and since the link last came up): a join answers at
    /// once. False on a new channel, and again after the link was lost.
    pub confirmed: bool,
    /// The channel's epoch, told with the confirmation (None before it, or when the control
    /// plane did not say).
    pub epoch: Option<Arc<str>>,
    /// The last `seq` of the channel's stream on this core: the confirmation's position, then
    /// each batch delivered here. A connection joining now receives every later message.
    pub last_seq: u64,
}

impl Channel {
    /// Where the stream stands for a connection joining now (None before the confirmation).
    pub fn position(&self) -> Option<StreamPosition> {
        self.epoch.as_ref().map(|epoch| StreamPosition {
            epoch: Arc::clone(epoch),
            last_seq: self.last_seq,
        })
    }
}

/// Where a join put a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub slot: ChannelSlot,
    pub index: u32,
    /// The first member of this format on this core: the hub must start sending this format here.
    pub format_appeared: bool,
}

/// The member that `swap_remove` moved into the leaver's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub conn: ConnId,
    pub new_index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub moved: Option<Moved>,
    /// The last member of this format on this core left.
    pub format_vanished: bool,
}

#[derive(Debug, Default)]
pub struct MemberTable {
    index: HashMap<Box<str>, ChannelSlot>,
    channels: Slab<Channel>,
    /// Member counts that changed since the last `take_changes`, by channel name.
    changed: HashMap<Box<str>, u32>,
}

impl MemberTable {
    pub fn slot_of(&self, name: &str) -> Option<ChannelSlot> {
        self.index.get(name).copied()
    }

    pub fn channel(&self, slot: ChannelSlot) -> Option<&Channel> {
        self.channels.get(slot as usize)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn join(&mut self, name: &str, conn: ConnId, format: WireFormat) -> Joined {
        let slot = match self.index.get(name) {
            Some(&slot) => slot,
            None => {
                let slot = self.channels.insert(Channel {
                    name: name.into(),
                    members: Vec::new(),
                    per_format: [0; 3],
                    confirmed: false,
                    epoch: None,
                    last_seq: 0,
                }) as ChannelSlot;
                self.index.insert(name.into(), slot);
                slot
            }
        };
        let channel = &mut self.channels[slot as usize];
        channel.members.push(conn);
        channel.per_format[format.index()] += 1;
        let format_appeared = channel.per_format[format.index()] == 1;
        let index = (channel.members.len() - 1) as u32;
        self.changed
            .insert(channel.name.clone(), channel.members.len() as u32);
        Joined {
            slot,
            index,
            format_appeared,
        }
    }

    /// Removes the member at `index` of `slot` (which must be `conn`).
    pub fn leave(&mut self, slot: ChannelSlot, index: u32, format: WireFormat) -> Left {
        let channel = &mut self.channels[slot as usize];
        channel.members.swap_remove(index as usize);
        channel.per_format[format.index()] -= 1;
        let format_vanished = channel.per_format[format.index()] == 0;
        let moved = channel.members.get(index as usize).map(|&conn| Moved {
            conn,
            new_index: index,
        });
        self.changed
            .insert(channel.name.clone(), channel.members.len() as u32);
        if channel.members.is_empty() {
            let channel = self.channels.remove(slot as usize);
            self.index.remove(&channel.name);
        } else if channel.members.capacity() > 64
            && channel.members.len() * 4 < channel.members.capacity()
        {
            channel.members.shrink_to(channel.members.len() * 2);
        }
        Left {
            moved,
            format_vanished,
        }
    }

    /// Marks the channel confirmed (see [`Channel::confirmed`]), if it still exists, with where
    /// its stream stands.
    pub fn confirm(&mut self, name: &str, position: Option<StreamPosition>) {
        if let Some(&slot) = self.index.get(name) {
            let channel = &mut self.channels[slot as usize];
            channel.confirmed = true;
            if let Some(position) = position {
                channel.epoch = Some(position.epoch);
                channel.last_seq = channel.last_seq.max(position.last_seq);
            }
        }
    }

    /// A batch up to `seq` was delivered on this core.
    pub fn advance(&mut self, slot: ChannelSlot, seq: u64) {
        if let Some(channel) = self.channels.get_mut(slot as usize) {
            channel.last_seq = channel.last_seq.max(seq);
        }
    }

    /// Whether the channel in `slot` is confirmed (see [`Channel::confirmed`]).
    pub fn is_confirmed(&self, slot: ChannelSlot) -> bool {
        self.channel(slot).is_some_and(|c| c.confirmed)
    }

    /// The link to the control plane was lost: every channel must be confirmed again.
    pub fn unconfirm_all(&mut self) {
        for (_, channel) in &mut self.channels {
            channel.confirmed = false;
            channel.epoch = None;
        }
    }

    /// Member counts changed since the last call (0 = the channel is gone from this core).
    pub fn take_changes(&mut self) -> HashMap<Box<str>, u32> {
        std::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ConnId {
        ConnId::new(n, 1)
    }

    #[test]
    fn join_and_leave_keep_members_dense_and_report_moves() {
        let mut t = MemberTable::default();
        let a = t.join("r1", id(1), WireFormat::WsJson);
        let b = t.join("r1", id(2), WireFormat::Tcp);
        let c = t.join("r1", id(3), WireFormat::WsJson);
        assert!(a.format_appeared && b.format_appeared && !c.format_appeared);
        assert_eq!((a.slot, a.index, c.index), (b.slot, 0, 2));
        let left = t.leave(a.slot, a.index, WireFormat::WsJson);
        assert_eq!(
            left.moved,
            Some(Moved {
                conn: id(3),
                new_index: 0
            })
        );
        assert!(!left.format_vanished);
        assert_eq!(t.channel(a.slot).unwrap().members, vec![id(3), id(2)]);
        let left = t.leave(b.slot, 1, WireFormat::Tcp);
        assert_eq!(left.moved, None);
        assert!(left.format_vanished);
    }

    #[test]
    fn empty_channels_are_removed_and_changes_reported() {
        let mut t = MemberTable::default();
        let j = t.join("r1", id(1), WireFormat::WsBinary);
        t.join("r2", id(1), WireFormat::WsBinary);
        let changes = t.take_changes();
        assert_eq!(changes.len(), 2);
        t.leave(j.slot, j.index, WireFormat::WsBinary);
        assert_eq!(t.slot_of("r1"), None);
        assert_eq!(t.len(), 1);
        let changes = t.take_changes();
        assert_eq!(changes.get("r1"), Some(&0));
        assert!(t.take_changes().is_empty());
    }
}
