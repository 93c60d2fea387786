//! Where a joining connection's stream starts, and how a recovery answer from the control plane
//! is stitched to the live stream without a duplicate or a hole (PROTOCOL.md §5).
//!
//! The control plane answers a `recover` (or a `sync`) under its routing lock, on the same link
//! as the publishes: every message up to the answer's `last_seq` reached the hub before the
//! answer, every later one after it. Messages the hub has received but not handed to the workers
//! sit in the channel's open window (`window_first` is the oldest one's `seq`) and go out as the
//! next batch, which a member joining now receives. So the connection's live stream starts at
//! `window_first` when the window holds messages, and right after the answer's `last_seq`
//! otherwise; the replay covers what lies between the client's position and that start.
//!
//! That holds only when the open window holds every message from its first up to the answer's
//! `last_seq`. It may not: a message the control plane numbered while this edge was not routed
//! for the channel (its last member had just left) never reached the hub, and a budget may have
//! dropped one; the live batch would then skip it. And a client whose position is already inside
//! the open window (it saw those messages through another edge, whose window closed earlier)
//! cannot take the next batch: it would see them twice. In both cases the replay is finished when
//! that batch is taken — the answer's messages plus the batch's messages after them — and the
//! connection joins the live stream after that batch.
//!
//! Pure: no I/O, no clock.

use std::ops::Range;

use crate::window::WindowSpan;
use roomcast_proto::message::PushMessage;

/// The last `seq` before a joining connection's live stream: the next batch starts after it.
pub fn live_after(answer_last: u64, window_first: Option<u64>) -> u64 {
    match window_first {
        Some(first) => first.saturating_sub(1).min(answer_last),
        None => answer_last,
    }
}

/// What to do with a successful recovery answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stitch {
    /// Replay these messages of the answer (a range of it: no copy), then the connection is
    /// live; `last_seq` is where the replay ends (the reply's `last_seq`).
    Now { replay: Range<usize>, last_seq: u64 },
    /// The client has already seen part of the open window: finish with [`after_batch`] when
    /// the window's batch is taken.
    AfterBatch,
}

/// Stitches an answer (`msgs` are the stored messages after `since`, up to `answer_last`, in
/// `seq` order) to the live stream, given what the open window holds.
pub fn stitch(
    since: u64,
    answer_last: u64,
    msgs: &[PushMessage],
    window: Option<WindowSpan>,
) -> Stitch {
    let last_seq = match window {
        None => answer_last,
        Some(w) if since < w.first && w.holds_every_seq_to(answer_last) => w.first - 1,
        Some(_) => return Stitch::AfterBatch,
    };
    let start = msgs.partition_point(|m| m.seq <= since);
    let end = msgs.partition_point(|m| m.seq <= last_seq).max(start);
    Stitch::Now {
        replay: start..end,
        last_seq,
    }
}

/// Finishes a deferred recovery once the window's batch was taken: the answer's messages after
/// `since`, then the batch's messages after both (messages that arrived after the answer).
/// Returns the replay and where it ends. The connection joins the live stream after the batch.
pub fn after_batch(
    since: u64,
    answer_last: u64,
    msgs: &[PushMessage],
    batch: &[PushMessage],
) -> (Vec<PushMessage>, u64) {
    let mut replay: Vec<PushMessage> = msgs.iter().filter(|m| m.seq > since).cloned().collect();
    let after = since.max(answer_last);
    replay.extend(batch.iter().filter(|m| m.seq > after).cloned());
    let last_seq = batch
        .iter()
        .map(|m| m.seq)
        .max()
        .unwrap_or(0)
        .max(answer_last)
        .max(since);
    (replay, last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(seq: u64) -> PushMessage {
        PushMessage {
            seq,
            priority: 2,
            kind: "gift".into(),
            data: Bytes::from_static(b"1"),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        }
    }

    fn seqs(msgs: &[PushMessage]) -> Vec<u64> {
        msgs.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn live_stream_starts_at_the_open_window_or_after_the_answer() {
        assert_eq!(live_after(57, None), 57);
        assert_eq!(live_after(57, Some(50)), 49);
        // A window cannot hold messages newer than the answer; if it did, the answer bounds it.
        assert_eq!(live_after(57, Some(70)), 57);
    }

    #[test]
    fn an_empty_window_replays_the_whole_answer() {
        let answer: Vec<_> = (42..=57).map(msg).collect();
        match stitch(41, 57, &answer, None) {
            Stitch::Now { replay, last_seq } => {
                assert_eq!(seqs(&answer[replay]), (42..=57).collect::<Vec<_>>());
                assert_eq!(last_seq, 57);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_in_the_open_window_are_left_to_the_live_batch() {
        let answer: Vec<_> = (42..=57).map(msg).collect();
        let window = WindowSpan {
            first: 53,
            last: 57,
            len: 5,
        };
        match stitch(41, 57, &answer, Some(window)) {
            Stitch::Now { replay, last_seq } => {
                assert_eq!(seqs(&answer[replay]), (42..=52).collect::<Vec<_>>());
                assert_eq!(last_seq, 52, "the batch of 53..57 follows live");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_client_already_inside_the_window_waits_for_the_batch() {
        let answer: Vec<_> = (55..=57).map(msg).collect();
        let window = WindowSpan {
            first: 53,
            last: 57,
            len: 5,
        };
        assert_eq!(stitch(54, 57, &answer, Some(window)), Stitch::AfterBatch);
        // The batch holds 53..=60 (58..=60 arrived after the answer).
        let batch: Vec<_> = (53..=60).map(msg).collect();
        let (replay, last) = after_batch(54, 57, &answer, &batch);
        assert_eq!(seqs(&replay), (55..=60).collect::<Vec<_>>());
        assert_eq!(last, 60);
    }

    #[test]
    fn a_window_with_a_hole_waits_for_the_batch_and_the_replay_fills_the_hole() {
        // 51 was numbered while the edge was not routed: the window holds 50 and 52 only.
        let answer: Vec<_> = (46..=52).map(msg).collect();
        let holed = WindowSpan {
            first: 50,
            last: 52,
            len: 2,
        };
        assert_eq!(stitch(45, 52, &answer, Some(holed)), Stitch::AfterBatch);
        let batch = vec![msg(50), msg(52), msg(53)];
        let (replay, last) = after_batch(45, 52, &answer, &batch);
        assert_eq!(seqs(&replay), (46..=53).collect::<Vec<_>>());
        assert_eq!(last, 53);
    }

    #[test]
    fn nothing_missed_is_an_empty_replay() {
        match stitch(57, 57, &[], None) {
            Stitch::Now { replay, last_seq } => {
                assert!(replay.is_empty());
                assert_eq!(last_seq, 57);
            }
            other => panic!("{other:?}"),
        }
        let (replay, last) = after_batch(57, 57, &[], &[]);
        assert!(replay.is_empty());
        assert_eq!(last, 57);
    }
}
