//! Where one viewer stands in its room's stream, kept as an app's SDK keeps it (PROTOCOL.md §5):
//! the room's epoch and the last `seq` processed, from the join reply and from every batch. A
//! viewer that loses its connection resumes with `since` = that position; the reply either
//! replays what it missed (`recovered: true`, the missed messages follow before any live one) or
//! says why not (`recovered: false`), and the SDK then skips to the reply's `last_seq`.
//!
//! Pure bookkeeping, no sockets and no clocks: the event loop feeds it replies and messages and
//! acts on what it returns.

use std::collections::HashMap;

use roomcast_proto::message::{RecoveryFailure, Since};

/// The epochs one client thread has seen, interned: a connection holds a 4-byte id instead of
/// its own copy of the string (one epoch per room per control-plane lifetime).
#[derive(Debug, Default)]
pub struct Epochs {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Epochs {
    pub fn intern(&mut self, epoch: &str) -> u32 {
        if let Some(&id) = self.ids.get(epoch) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(epoch.to_owned());
        self.ids.insert(epoch.to_owned(), id);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// How a message of the room counts for the connection that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A `seq` above every one processed before: a live message (received for the first time).
    New,
    /// Above every one processed before and at most the `last_seq` of a `recovered: true`
    /// reply: part of the replay (received for the first time too).
    Replayed,
    /// The `seq` processed last, again.
    Duplicate,
    /// Below the last one processed.
    OutOfOrder,
}

/// What a join reply did to the position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// A join without `since`: the position starts at the reply's.
    Fresh,
    /// `recovered: true`: `missed` messages (`since.seq + 1 ..= last_seq`) follow as the replay;
    /// 0 means the viewer missed nothing and is caught up already.
    Recovered { missed: u64 },
    /// `recovered: false`: nothing is replayed; the SDK reloads the room and resumes at the
    /// reply's `last_seq`, skipping `skipped` seqs (0 when the epoch changed: the old numbers
    /// mean nothing in the new one).
    Refused {
        reason: RecoveryFailure,
        skipped: u64,
    },
    /// The reply contradicts the protocol: `recovered` missing after a `since` (or present
    /// without one), a recovery into another epoch, or no position at all. The position is
    /// taken from the reply when it has one.
    Unexpected(&'static str),
}

/// One connection's position in its room's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The room's epoch (an [`Epochs`] id); `None` before the first join reply.
    epoch: Option<u32>,
    /// The last `seq` processed (or skipped to).
    seq: u64,
    /// After `recovered: true`, the reply's `last_seq` while the replay has not reached it.
    replay_to: Option<u64>,
}

impl Position {
    /// The `since` to resume from, `None` before the first join reply.
    pub fn since(&self, epochs: &Epochs) -> Option<Since> {
        Some(Since {
            epoch: epochs.name(self.epoch?).to_owned(),
            seq: self.seq,
        })
    }

    /// A join reply has given the position an epoch: there is something to resume from.
    pub fn known(&self) -> bool {
        self.epoch.is_some()
    }

    /// The last `seq` processed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A replay is still on its way.
    pub fn replaying(&self) -> bool {
        self.replay_to.is_some()
    }

    /// Forgets everything (a churner reconnects as a new viewer).
    pub fn reset(&mut self) {
        *self = Position::default();
    }

    /// The reply to a join that carried `since` (`resumed`) or not. `position` is the reply's
    /// `(epoch, last_seq)`.
    pub fn on_join_reply(
        &mut self,
        resumed: bool,
        position: Option<(u32, u64)>,
        recovered: Option<Result<(), RecoveryFailure>>,
    ) -> Joined {
        self.replay_to = None;
        let Some((epoch, last_seq)) = position else {
            return Joined::Unexpected("no epoch and last_seq in the join reply");
        };
        let held = self.epoch.replace(epoch);
        match (resumed, recovered) {
            (false, None) => {
                // Messages up to last_seq may have come before the reply, never after it.
                self.seq = self.seq.max(last_seq);
                Joined::Fresh
            }
            (true, Some(Ok(()))) if held == Some(epoch) && last_seq >= self.seq => {
                let missed = last_seq - self.seq;
                if missed > 0 {
                    self.replay_to = Some(last_seq);
                }
                Joined::Recovered { missed }
            }
            (true, Some(Ok(()))) => {
                self.seq = last_seq;
                Joined::Unexpected("recovered into another epoch or behind the position")
            }
            (true, Some(Err(reason))) => {
                let skipped = if held == Some(epoch) {
                    last_seq.saturating_sub(self.seq)
                } else {
                    0
                };
                self.seq = last_seq;
                Joined::Refused { reason, skipped }
            }
            (true, None) => {
                self.seq = self.seq.max(last_seq);
                Joined::Unexpected("no `recovered` in the reply to a join with since")
            }
            (false, Some(_)) => {
                self.seq = self.seq.max(last_seq);
                Joined::Unexpected("`recovered` in the reply to a join without since")
            }
        }
    }

    /// A message of the room; the second value is true when it completed a replay.
    pub fn on_message(&mut self, seq: u64) -> (Seen, bool) {
        if seq < self.seq {
            return (Seen::OutOfOrder, false);
        }
        if seq == self.seq {
            return (Seen::Duplicate, false);
        }
        self.seq = seq;
        match self.replay_to {
            Some(to) => {
                let done = seq >= to;
                if done {
                    self.replay_to = None;
                }
                // A seq past the replay's end means live messages overtook it.
                (if seq <= to { Seen::Replayed } else { Seen::New }, done)
            }
            None => (Seen::New, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(epochs: &mut Epochs, epoch: &str, last_seq: u64) -> (Position, u32) {
        let id = epochs.intern(epoch);
        let mut p = Position::default();
        assert_eq!(
            p.on_join_reply(false, Some((id, last_seq)), None),
            Joined::Fresh
        );
        (p, id)
    }

    #[test]
    fn the_position_follows_the_join_reply_and_the_batches() {
        let mut epochs = Epochs::default();
        let mut p = Position::default();
        assert_eq!(
            p.since(&epochs),
            None,
            "nothing to resume before a join reply"
        );
        // Two messages before the reply (allowed), the reply at 3, then live ones.
        assert_eq!(p.on_message(1), (Seen::New, false));
        assert_eq!(p.on_message(2), (Seen::New, false));
        let id = epochs.intern("k3x9");
        assert_eq!(p.on_join_reply(false, Some((id, 3)), None), Joined::Fresh);
        assert_eq!(
            p.seq(),
            3,
            "the reply promises everything after its last_seq"
        );
        assert_eq!(p.on_message(4), (Seen::New, false));
        assert_eq!(p.on_message(4), (Seen::Duplicate, false));
        assert_eq!(p.on_message(2), (Seen::OutOfOrder, false));
        assert_eq!(p.on_message(6), (Seen::New, false), "a gap is still new");
        assert_eq!(
            p.since(&epochs),
            Some(Since {
                epoch: "k3x9".into(),
                seq: 6
            })
        );
        assert_eq!(epochs.intern("k3x9"), id, "interned once");
        assert_eq!(epochs.name(id), "k3x9");
    }

    #[test]
    fn a_recovery_replays_the_missed_messages_then_live_ones() {
        let mut epochs = Epochs::default();
        let (mut p, id) = joined(&mut epochs, "e1", 0);
        for seq in 1..=41 {
            p.on_message(seq);
        }
        let since = p.since(&epochs).unwrap();
        assert_eq!((since.epoch.as_str(), since.seq), ("e1", 41));
        // The reply at 44: 42, 43 and 44 are the replay.
        assert_eq!(
            p.on_join_reply(true, Some((id, 44)), Some(Ok(()))),
            Joined::Recovered { missed: 3 }
        );
        assert!(p.replaying());
        assert_eq!(p.on_message(42), (Seen::Replayed, false));
        assert_eq!(p.on_message(43), (Seen::Replayed, false));
        assert_eq!(p.on_message(44), (Seen::Replayed, true), "caught up");
        assert!(!p.replaying());
        assert_eq!(p.on_message(45), (Seen::New, false));
    }

    #[test]
    fn a_recovery_with_nothing_missed_is_caught_up_at_the_reply() {
        let mut epochs = Epochs::default();
        let (mut p, id) = joined(&mut epochs, "e1", 7);
        assert_eq!(
            p.on_join_reply(true, Some((id, 7)), Some(Ok(()))),
            Joined::Recovered { missed: 0 }
        );
        assert!(!p.replaying());
        assert_eq!(p.on_message(8), (Seen::New, false));
    }

    #[test]
    fn a_live_message_overtaking_the_replay_shows() {
        let mut epochs = Epochs::default();
        let (mut p, id) = joined(&mut epochs, "e1", 10);
        p.on_join_reply(true, Some((id, 12)), Some(Ok(())));
        assert_eq!(p.on_message(13), (Seen::New, true), "the replay is over");
        assert_eq!(p.on_message(11), (Seen::OutOfOrder, false));
    }

    #[test]
    fn a_refused_recovery_skips_to_the_reply() {
        let mut epochs = Epochs::default();
        let (mut p, id) = joined(&mut epochs, "e1", 5);
        assert_eq!(
            p.on_join_reply(true, Some((id, 900)), Some(Err(RecoveryFailure::TooMany))),
            Joined::Refused {
                reason: RecoveryFailure::TooMany,
                skipped: 895
            }
        );
        assert!(!p.replaying());
        assert_eq!(p.seq(), 900);
        assert_eq!(p.on_message(901), (Seen::New, false));

        // Another epoch: the old numbers say nothing about how much was lost.
        let other = epochs.intern("e2");
        assert_eq!(
            p.on_join_reply(
                true,
                Some((other, 3)),
                Some(Err(RecoveryFailure::EpochChanged))
            ),
            Joined::Refused {
                reason: RecoveryFailure::EpochChanged,
                skipped: 0
            }
        );
        assert_eq!(p.since(&epochs).unwrap().epoch, "e2");
        assert_eq!(p.seq(), 3, "numbering restarts with the epoch");
    }

    #[test]
    fn replies_that_break_the_protocol_are_flagged() {
        let mut epochs = Epochs::default();
        let (mut p, id) = joined(&mut epochs, "e1", 5);
        assert!(matches!(
            p.on_join_reply(true, Some((id, 9)), None),
            Joined::Unexpected(_)
        ));
        assert!(matches!(
            p.on_join_reply(false, Some((id, 9)), Some(Ok(()))),
            Joined::Unexpected(_)
        ));
        let other = epochs.intern("e2");
        assert!(matches!(
            p.on_join_reply(true, Some((other, 9)), Some(Ok(()))),
            Joined::Unexpected(_)
        ));
        assert!(!p.replaying(), "no replay expected from a bad recovery");
        assert!(matches!(
            p.on_join_reply(false, None, None),
            Joined::Unexpected(_)
        ));
        p.reset();
        assert_eq!(p.since(&epochs), None);
    }
}
