//! The hub's state machine driven in memory with explicit time: no threads, sockets or sleeps.
//! Each test scripts what workers and the control plane say and checks what the hub sends where.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::{Advertised, HubConfig, HubCore, BACKOFF_MAX, BACKOFF_MIN};
use crate::fanout::{ChannelKind, Delivery, RecoverRequest, RoomPush, ToHub, ToWorker};
use crate::stats::WorkerStats;
use crate::sys::ConnId;
use roomcast_proto::client::{decode_server_binary, decode_server_json, ServerMsg, WireFormat};
use roomcast_proto::link::{
    self, ChannelPosition, ConnInfo, LinkFrame, LoadReport, Publish, QueryUser, Recovered,
    RoomCount, RoomOnline, SetLevel, SyncAck, UNLIMITED,
};
use roomcast_proto::message::{PushMessage, RecoveryFailure, Since, Target};
use roomcast_proto::sketch::{user_hash, UserSketch};
use roomcast_proto::ws::parse_server_frame;

const TICK: Duration = Duration::from_millis(100);
const MAX_WINDOW: Duration = Duration::from_millis(1000);
const REPORT: Duration = Duration::from_secs(1);
const LINK_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

/// A hub core, its clock, and the workers' inboxes (bounded like the real ones).
struct Harness {
    core: HubCore,
    now: Instant,
    inboxes: Vec<VecDeque<ToWorker>>,
    inbox_capacity: usize,
    /// Workers that write every batch the moment it enters their inbox (report it written);
    /// the others leave that to the test (`written`).
    instant_writers: u64,
}

impl Harness {
    /// A hub with `workers` workers whose link is up (register and first report consumed).
    fn new(workers: usize) -> Harness {
        let mut h = Harness::down(workers);
        h.connect();
        h
    }

    /// A hub that has not dialled yet.
    fn down(workers: usize) -> Harness {
        let now = Instant::now();
        let config = HubConfig {
            advertised: Advertised {
                edge_id: "e1".into(),
                host: None,
                ws_port: 8080,
                tcp_port: 8081,
                admin: Some("0.0.0.0:9101".parse().unwrap()),
                workers: workers as u16,
                capacity: 1000,
            },
            default_tick: TICK,
            max_window: MAX_WINDOW,
            report_interval: REPORT,
            send_limit: crate::sendlimit::SendLimit::new(2.0, 5),
            stats_log_interval: None,
            workers,
        };
        Harness {
            core: HubCore::new(config, now),
            now,
            inboxes: (0..workers).map(|_| VecDeque::new()).collect(),
            inbox_capacity: 1024,
            instant_writers: u64::MAX,
        }
    }

    /// Dials and connects; returns the frames sent on connecting (register, full report).
    fn connect(&mut self) -> Vec<LinkFrame> {
        self.core.handle_timeout(self.now);
        assert!(self.core.take_dial(), "a hub with its link down dials");
        self.core.link_connected(LINK_IP);
        self.sent()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    /// Everything queued for the link since the last call.
    fn sent(&mut self) -> Vec<LinkFrame> {
        std::iter::from_fn(|| self.core.poll_transmit()).collect()
    }

    /// Moves the hub's outboxes into the workers' bounded inboxes; returns the woken mask.
    fn drain(&mut self) -> u64 {
        let inboxes = &mut self.inboxes;
        let capacity = self.inbox_capacity;
        let instant = self.instant_writers;
        let mut written = Vec::new();
        let woken = self.core.drain_to_workers(self.now, |w, m| {
            if inboxes[w].len() >= capacity {
                return Err(m);
            }
            if let (ToWorker::Deliver(d), true) = (&m, instant & (1 << w) != 0) {
                written.push((w, Arc::clone(d)));
            }
            inboxes[w].push_back(m);
            Ok(())
        });
        for (worker, delivery) in written {
            self.core
                .handle_worker(ToHub::Written { worker, delivery }, self.now);
        }
        woken
    }

    /// Worker `worker` reports the batch `delivery` written.
    fn written(&mut self, worker: usize, delivery: &Arc<Delivery>) {
        self.core.handle_worker(
            ToHub::Written {
                worker,
                delivery: Arc::clone(delivery),
            },
            self.now,
        );
    }

    /// Drains, then takes what worker `w` received.
    fn received(&mut self, w: usize) -> Vec<ToWorker> {
        self.drain();
        self.inboxes[w].drain(..).collect()
    }

    fn presence(&mut self, worker: usize, room: &str, format: WireFormat, present: bool) {
        self.core.handle_worker(
            ToHub::Presence {
                worker,
                kind: ChannelKind::Room,
                name: room.into(),
                format,
                present,
            },
            self.now,
        );
    }

    fn confirm(&mut self, worker: usize, kind: ChannelKind, name: &str, token: u64) {
        self.core.handle_worker(
            ToHub::Confirm {
                worker,
                kind,
                name: name.into(),
                token,
            },
            self.now,
        );
    }

    fn publish(&mut self, target: Target, seq: u64, priority: u8) {
        let frame = LinkFrame::Publish(Publish {
            target,
            msg: msg(seq, priority, 10),
        });
        self.core.handle_link_frame(frame, self.now).unwrap();
    }

    fn control_says(&mut self, frame: LinkFrame) {
        self.core.handle_link_frame(frame, self.now).unwrap();
    }
}

fn msg(seq: u64, priority: u8, data_len: usize) -> PushMessage {
    PushMessage {
        seq,
        priority,
        kind: "chat".into(),
        data: Bytes::from(format!("\"{}\"", "x".repeat(data_len))),
        merged: 0,
        is_final: false,
        ack: false,
        from: None,
    }
}

fn room(name: &str) -> Target {
    Target::Room(name.into())
}

fn deliveries(messages: &[ToWorker]) -> Vec<&Delivery> {
    messages
        .iter()
        .filter_map(|m| match m {
            ToWorker::Deliver(d) => Some(&**d),
            _ => None,
        })
        .collect()
}

/// One whole server frame in `format`, decoded.
fn decode_frame(bytes: &[u8], format: WireFormat) -> ServerMsg {
    match format {
        WireFormat::WsJson | WireFormat::WsBinary => {
            let head = parse_server_frame(bytes).unwrap().unwrap();
            assert_eq!(head.len, bytes.len(), "one whole WebSocket frame");
            let payload = &bytes[head.payload];
            if format == WireFormat::WsJson {
                decode_server_json(payload).unwrap()
            } else {
                decode_server_binary(payload).unwrap()
            }
        }
        WireFormat::Tcp => decode_server_binary(&bytes[4..]).unwrap(),
    }
}

/// The sequence numbers a delivery carries, decoded from the bytes of `format`.
fn seqs_in(delivery: &Delivery, format: WireFormat) -> Vec<u64> {
    let mut seqs = Vec::new();
    for frame in &delivery.frames {
        let bytes = frame.encoded[format.index()]
            .as_ref()
            .expect("encoded for this format");
        let decoded = decode_frame(bytes, format);
        let ServerMsg::Batch { msgs, .. } = decoded else {
            panic!("not a batch: {decoded:?}");
        };
        seqs.extend(msgs.iter().map(|m| m.seq));
    }
    seqs
}

fn reports(frames: &[LinkFrame]) -> Vec<&LoadReport> {
    frames
        .iter()
        .filter_map(|f| match f {
            LinkFrame::LoadReport(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn confirmed_tokens(messages: &[ToWorker]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            ToWorker::Confirmed { token, .. } => Some(*token),
            _ => None,
        })
        .collect()
}

// ---- merge windows and the encode-once step -----------------------------------------------------

#[test]
fn a_publish_to_a_channel_without_members_here_is_counted_and_goes_nowhere() {
    let mut h = Harness::new(2);
    h.publish(room("r1"), 1, 2);
    assert_eq!(h.core.stats().publishes_without_members, 1);
    assert_eq!(h.drain(), 0, "no worker is woken");
}

#[test]
fn a_quiet_room_sends_at_once_and_a_busy_one_merges_until_the_tick() {
    let mut h = Harness::new(2);
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    let got = h.received(1);
    assert_eq!(seqs_in(deliveries(&got)[0], WireFormat::WsJson), vec![1]);
    assert!(h.received(0).is_empty(), "worker 0 holds no member of r1");

    // Within the tick after that batch: merged, sent when the tick ends.
    h.now += Duration::from_millis(10);
    h.publish(room("r1"), 2, 2);
    h.publish(room("r1"), 3, 3);
    h.advance(TICK - Duration::from_millis(11));
    assert!(
        h.received(1).is_empty(),
        "not before the tick after the last batch"
    );
    h.advance(Duration::from_millis(1));
    let got = h.received(1);
    assert_eq!(deliveries(&got).len(), 1, "one delivery per window");
    assert_eq!(seqs_in(deliveries(&got)[0], WireFormat::WsJson), vec![2, 3]);
}

#[test]
fn a_batch_is_encoded_once_per_format_in_use_and_shared_by_every_core() {
    let mut h = Harness::new(3);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(2, "r1", WireFormat::Tcp, true);
    h.presence(2, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 7, 1);
    let woken = h.drain();
    assert_eq!(woken, 0b101);
    let a = h.inboxes[0].pop_front().unwrap();
    let b = h.inboxes[2].pop_front().unwrap();
    let (ToWorker::Deliver(a), ToWorker::Deliver(b)) = (a, b) else {
        panic!("deliveries expected");
    };
    assert!(std::sync::Arc::ptr_eq(&a, &b), "the same encoded batch");
    let frame = &a.frames[0];
    assert!(
        frame.encoded[WireFormat::WsBinary.index()].is_none(),
        "no binary member"
    );
    assert_eq!(seqs_in(&a, WireFormat::WsJson), vec![7]);
    assert_eq!(seqs_in(&a, WireFormat::Tcp), vec![7]);
    assert_eq!(frame.min_priority, 1);
    assert_eq!(frame.counts, [0, 1, 0, 0]);
}

#[test]
fn a_frame_holding_a_final_message_is_never_shed_and_counts_its_own_priority() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    let mut last = msg(7, 2, 10);
    last.merged = 3;
    last.is_final = true;
    h.control_says(LinkFrame::Publish(Publish {
        target: room("r1"),
        msg: last,
    }));
    h.drain();
    let Some(ToWorker::Deliver(d)) = h.inboxes[0].pop_front() else {
        panic!("a delivery expected");
    };
    assert_eq!(d.frames[0].min_priority, 0, "shed like priority 0");
    assert_eq!(
        d.frames[0].counts,
        [0, 0, 1, 0],
        "dropped or kept, it counts as priority 2"
    );
}

#[test]
fn priority_zero_closes_the_window_at_once_keeping_order_and_its_stale_timer_does_nothing() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsBinary, true);
    h.publish(room("r1"), 1, 2); // quiet: at once
    h.received(0);
    h.now += Duration::from_millis(5);
    h.publish(room("r1"), 2, 3); // window opens
    h.publish(room("r1"), 3, 0); // P0: flush now
    let got = h.received(0);
    assert_eq!(
        seqs_in(deliveries(&got)[0], WireFormat::WsBinary),
        vec![2, 3]
    );
    h.advance(TICK);
    assert!(
        h.received(0).is_empty(),
        "the early-closed window's timer fires nothing"
    );
    assert_eq!(h.core.stats().tick_lag.count, 0);
}

#[test]
fn a_window_over_the_frame_bound_goes_out_as_several_frames_in_one_delivery() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    h.received(0);
    for seq in 2..=21 {
        let frame = LinkFrame::Publish(Publish {
            target: room("r1"),
            msg: msg(seq, 2, 10_000),
        });
        h.control_says(frame);
    }
    h.advance(TICK);
    let got = h.received(0);
    let all = deliveries(&got);
    assert_eq!(all.len(), 1, "one handoff per batch per core");
    assert!(all[0].frames.len() >= 3, "200 KB split at 64 KiB");
    assert_eq!(
        seqs_in(all[0], WireFormat::WsJson),
        (2..=21).collect::<Vec<_>>()
    );
}

#[test]
fn a_rate_level_set_before_any_member_paces_the_room_once_it_appears() {
    let mut h = Harness::new(1);
    let mut budgets = [UNLIMITED; 4];
    budgets[3] = 1;
    h.control_says(LinkFrame::SetLevel(SetLevel {
        room: "r1".into(),
        level: 3,
        tick_ms: 500,
        budgets,
    }));
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 3);
    h.received(0);
    h.now += Duration::from_millis(10);
    h.publish(room("r1"), 2, 3);
    h.publish(room("r1"), 3, 3); // over the P3 budget of 1 per window
    h.advance(Duration::from_millis(100));
    assert!(
        h.received(0).is_empty(),
        "a 500 ms window, not the 100 ms default"
    );
    h.advance(Duration::from_millis(400));
    let got = h.received(0);
    assert_eq!(seqs_in(deliveries(&got)[0], WireFormat::WsJson), vec![2]);
    assert_eq!(h.core.stats().dropped_budget[3], 1);
    assert_eq!(
        h.core.rooms_by_level().len(),
        0,
        "no report from workers yet"
    );
}

// ---- windows that follow the fan-out ---------------------------------------------------------

impl Harness {
    /// Drains, then takes the batches worker `w` received, as the `Arc`s it would report back.
    fn batches(&mut self, w: usize) -> Vec<Arc<Delivery>> {
        self.drain();
        self.inboxes[w]
            .drain(..)
            .filter_map(|m| match m {
                ToWorker::Deliver(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn window_count(&self, level: usize) -> u64 {
        self.core.stats().windows[level].count
    }
}

fn all_seqs(batches: &[Arc<Delivery>]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|d| seqs_in(d, WireFormat::WsJson))
        .collect()
}

#[test]
fn a_window_waits_for_every_core_to_write_the_previous_batch_then_closes_at_once() {
    let mut h = Harness::new(2);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    let (a, b) = (h.batches(0), h.batches(1));
    assert_eq!((all_seqs(&a), all_seqs(&b)), (vec![1], vec![1]));
    // The next messages wait past the tick: the first batch is still being written.
    h.now += Duration::from_millis(10);
    h.publish(room("r1"), 2, 2);
    h.advance(TICK);
    h.publish(room("r1"), 3, 3);
    assert!(h.batches(0).is_empty() && h.batches(1).is_empty());
    assert_eq!(h.core.stats().channels_stretched, 1);
    // Core 0 is done; core 1 is not: still waiting.
    h.written(0, &a[0]);
    h.advance(Duration::from_millis(50));
    assert!(h.batches(0).is_empty());
    // Core 1 is done 170 ms after the first batch: the stretched window closes right then,
    // carrying everything that waited, to both cores.
    h.advance(Duration::from_millis(10));
    h.written(1, &b[0]);
    let (a, b) = (h.batches(0), h.batches(1));
    assert_eq!((all_seqs(&a), all_seqs(&b)), (vec![2, 3], vec![2, 3]));
    let stats = h.core.stats();
    assert_eq!(stats.channels_stretched, 0);
    assert_eq!(stats.windows_stretched, 1);
    assert_eq!(stats.windows_capped, 0);
    let windows = &stats.windows[0];
    assert_eq!(
        windows.count, 2,
        "the quiet first publish and the stretched window"
    );
    assert!((windows.sum - 0.170).abs() < 1e-9, "{}", windows.sum);
}

#[test]
fn windows_stretch_under_load_and_shrink_back_when_it_passes() {
    // One message every 5 ms; the worker needs `fan_out` to write each batch, scripted per
    // phase: fast (10 ms), slow (350 ms), fast again.
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    let step = Duration::from_millis(5);
    let mut seq = 0;
    let mut writing: VecDeque<(Instant, Arc<Delivery>)> = VecDeque::new();
    let mut windows: Vec<(u64, Duration, usize)> = Vec::new(); // (phase, window, messages)
    let mut last_batch = h.now;
    let mut delivered = Vec::new();
    for (phase, fan_out, steps) in [(0, 10, 300), (1, 350, 600), (2, 10, 300)] {
        let fan_out = Duration::from_millis(fan_out);
        for _ in 0..steps {
            seq += 1;
            h.publish(room("r1"), seq, 3);
            for batch in h.batches(0) {
                windows.push((
                    phase,
                    h.now - last_batch,
                    batch.frames[0].counts[3] as usize,
                ));
                last_batch = h.now;
                delivered.extend(seqs_in(&batch, WireFormat::WsJson));
                // One fan-out at a time per core, as a worker writes them.
                let start = writing.back().map_or(h.now, |(done, _)| (*done).max(h.now));
                writing.push_back((start + fan_out, batch));
                assert_eq!(writing.len(), 1, "one batch of the channel outstanding");
            }
            h.now += step;
            while writing.front().is_some_and(|(done, _)| *done <= h.now) {
                let (_, batch) = writing.pop_front().unwrap();
                h.written(0, &batch);
            }
            h.advance(Duration::ZERO);
        }
    }
    let median = |phase: u64| {
        let mut w: Vec<Duration> = windows
            .iter()
            .filter(|(p, ..)| *p == phase)
            .skip(3) // the phase's first windows still feel the previous one
            .map(|&(_, w, _)| w)
            .collect();
        w.sort();
        w[w.len() / 2]
    };
    assert_eq!(median(0), TICK, "light load: the tick");
    let slow = median(1);
    assert!(
        slow >= Duration::from_millis(350) && slow <= Duration::from_millis(360),
        "under load the window is one fan-out: {slow:?}"
    );
    assert_eq!(median(2), TICK, "load passed: back to the tick");
    // Never more than one batch written at a time, and nothing lost or reordered.
    assert!(writing.len() <= 1);
    for (_, batch) in writing.drain(..) {
        h.written(0, &batch);
    }
    h.advance(TICK);
    for batch in h.batches(0) {
        delivered.extend(seqs_in(&batch, WireFormat::WsJson));
    }
    assert_eq!(delivered, (1..=seq).collect::<Vec<_>>());
    assert!(h.core.stats().windows_stretched > 0);
    assert_eq!(h.core.stats().windows_capped, 0);
}

#[test]
fn a_window_closes_at_max_window_when_the_fan_out_is_stuck_and_old_reports_are_ignored() {
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    let first = h.batches(0);
    h.now += Duration::from_millis(20);
    h.publish(room("r1"), 2, 2);
    h.advance(MAX_WINDOW - Duration::from_millis(21));
    assert!(h.batches(0).is_empty());
    h.advance(Duration::from_millis(1));
    let second = h.batches(0);
    assert_eq!(all_seqs(&second), vec![2], "closed at the cap");
    assert_eq!(h.core.stats().windows_capped, 1);
    assert_eq!(h.core.stats().channels_stretched, 0);
    // The first batch's late report does not release the window waiting on the second.
    h.now += Duration::from_millis(10);
    h.publish(room("r1"), 3, 2);
    h.advance(TICK);
    h.written(0, &first[0]);
    assert!(h.batches(0).is_empty());
    h.written(0, &second[0]);
    assert_eq!(all_seqs(&h.batches(0)), vec![3]);
}

#[test]
fn priority_zero_waits_for_the_fan_out_too_and_consecutive_ones_ride_together() {
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 0);
    let first = h.batches(0);
    assert_eq!(all_seqs(&first), vec![1], "P0 to a quiet room: at once");
    h.publish(room("r1"), 2, 0);
    h.publish(room("r1"), 3, 3);
    h.publish(room("r1"), 4, 0);
    assert!(h.batches(0).is_empty(), "the first is still being written");
    h.now += Duration::from_millis(3);
    h.written(0, &first[0]);
    let next = h.batches(0);
    assert_eq!(next.len(), 1, "one batch");
    assert_eq!(all_seqs(&next), vec![2, 3, 4]);
    assert_eq!(h.window_count(0), 2);
}

#[test]
fn a_refused_delivery_or_a_core_whose_members_left_does_not_hold_the_window() {
    let mut h = Harness::new(2);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    let a = h.batches(0);
    h.batches(1);
    // Core 1's members leave: it will not write the batch; core 0 does.
    h.presence(1, "r1", WireFormat::WsJson, false);
    h.written(0, &a[0]);
    h.now += TICK;
    h.publish(room("r1"), 2, 2);
    let second = h.batches(0);
    assert_eq!(all_seqs(&second), vec![2], "nothing held it");
    h.written(0, &second[0]);
    // Core 0's inbox is full: the next batch is dropped (counted), and nothing waits for it.
    h.inbox_capacity = 0;
    h.now += TICK;
    h.publish(room("r1"), 3, 2);
    h.drain();
    assert_eq!(h.core.stats().dropped_worker_backlog, 1);
    h.inbox_capacity = 1024;
    h.now += TICK;
    h.publish(room("r1"), 4, 2);
    assert_eq!(all_seqs(&h.batches(0)), vec![4]);
}

// ---- a full worker inbox ----------------------------------------------------------------------

#[test]
fn a_full_worker_inbox_drops_deliveries_counted_but_keeps_confirmations_in_order() {
    let mut h = Harness::new(1);
    h.inbox_capacity = 1;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    h.drain(); // fills the inbox
    h.confirm(0, ChannelKind::Room, "r1", 42);
    h.advance(Duration::ZERO);
    let sync = h.sent().into_iter().find_map(|f| match f {
        LinkFrame::Sync(sync) => Some(sync.id),
        _ => None,
    });
    h.control_says(ack(sync.unwrap(), &[]));
    h.drain(); // the inbox is full: the confirmation waits
    h.now += TICK;
    h.publish(room("r1"), 2, 1); // behind a waiting confirmation: dropped at once
    h.drain();
    assert_eq!(h.core.stats().dropped_worker_backlog, 1);
    assert_eq!(h.core.stats().dropped_worker_backlog_msgs, [0, 1, 0, 0]);
    // The worker catches up: the confirmation arrives, nothing was lost silently.
    let first = h.inboxes[0].pop_front().unwrap();
    assert!(matches!(first, ToWorker::Deliver(_)));
    let got = h.received(0);
    assert_eq!(confirmed_tokens(&got), vec![42]);
    // And deliveries flow again.
    h.now += TICK;
    h.publish(room("r1"), 3, 2);
    let got = h.received(0);
    assert_eq!(seqs_in(deliveries(&got)[0], WireFormat::WsJson), vec![3]);
}

// ---- the join acknowledgement (PROTOCOL.md §5) ----------------------------------------------

/// The `sync` id in frames, checking the report announcing `room` goes before it.
fn sync_after_report(frames: &[LinkFrame], room: &str) -> u64 {
    let sync_at = frames
        .iter()
        .position(|f| matches!(f, LinkFrame::Sync(_)))
        .expect("a sync barrier");
    let reported_at = frames
        .iter()
        .position(|f| {
            matches!(f, LinkFrame::LoadReport(r)
                if r.rooms.iter().any(|(n, c)| n == room && *c >= 1))
        })
        .expect("a report announcing the room");
    assert!(reported_at < sync_at, "the report goes before the barrier");
    let LinkFrame::Sync(sync) = &frames[sync_at] else {
        unreachable!()
    };
    sync.id
}

#[test]
fn a_first_join_is_confirmed_only_after_the_control_plane_acknowledges_the_report() {
    let mut h = Harness::new(2);
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.confirm(1, ChannelKind::Room, "r1", 7);
    h.advance(Duration::ZERO);
    let frames = h.sent();
    let id = sync_after_report(&frames, "r1");
    assert!(
        confirmed_tokens(&h.received(1)).is_empty(),
        "not before the ack"
    );
    h.control_says(ack(id, &[]));
    assert_eq!(confirmed_tokens(&h.received(1)), vec![7]);

    // A later join of the routed room is confirmed at once, without a barrier.
    h.confirm(0, ChannelKind::Room, "r1", 8);
    h.advance(Duration::ZERO);
    assert!(!h.sent().iter().any(|f| matches!(f, LinkFrame::Sync(_))));
    assert_eq!(confirmed_tokens(&h.received(0)), vec![8]);
}

#[test]
fn joins_of_many_channels_in_one_round_share_one_barrier_and_an_ack_confirms_every_earlier_sync() {
    let mut h = Harness::new(1);
    h.presence(0, "a", WireFormat::WsJson, true);
    h.presence(0, "b", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "a", 1);
    h.confirm(0, ChannelKind::Room, "b", 2);
    h.advance(Duration::ZERO);
    let first = h.sent();
    assert_eq!(
        first
            .iter()
            .filter(|f| matches!(f, LinkFrame::Sync(_)))
            .count(),
        1
    );
    h.presence(0, "c", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "c", 3);
    h.advance(Duration::ZERO);
    let second = sync_after_report(&h.sent(), "c");
    h.control_says(ack(second, &[]));
    let mut tokens = confirmed_tokens(&h.received(0));
    tokens.sort();
    assert_eq!(tokens, vec![1, 2, 3]);
}

#[test]
fn a_channel_emptied_while_syncing_ignores_the_stale_ack_and_waits_for_its_own_barrier() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "r1", 1);
    h.advance(Duration::ZERO);
    let old = sync_after_report(&h.sent(), "r1");
    // The member leaves and another joins before the ack arrives.
    h.presence(0, "r1", WireFormat::WsJson, false);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "r1", 2);
    h.control_says(ack(old, &[]));
    assert!(
        confirmed_tokens(&h.received(0)).is_empty(),
        "the old barrier predates the rejoin"
    );
    h.advance(Duration::ZERO);
    let new = sync_after_report(&h.sent(), "r1");
    h.control_says(ack(new, &[]));
    assert_eq!(confirmed_tokens(&h.received(0)), vec![2]);
}

#[test]
fn a_confirmation_for_a_channel_whose_members_left_is_not_answered() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(0, "r1", WireFormat::WsJson, false);
    h.confirm(0, ChannelKind::Room, "r1", 1);
    h.advance(Duration::ZERO);
    assert!(!h.sent().iter().any(|f| matches!(f, LinkFrame::Sync(_))));
}

#[test]
fn a_join_while_the_link_is_down_is_confirmed_after_the_registration_and_a_barrier() {
    let mut h = Harness::down(1);
    h.presence(0, "r1", WireFormat::WsBinary, true);
    h.confirm(0, ChannelKind::User, "nobody", 9); // no such user channel: ignored
    h.confirm(0, ChannelKind::Room, "r1", 1);
    h.core.handle_timeout(h.now);
    assert!(
        h.sent().is_empty(),
        "nothing is sent on a link that is down"
    );
    let mut frames = h.connect();
    let LinkFrame::Register(register) = &frames[0] else {
        panic!("register first: {frames:?}");
    };
    assert_eq!(register.edge_id, "e1");
    let full = reports(&frames)[0];
    assert!(full.full);
    assert!(
        full.rooms.contains(&("r1".to_string(), 1)),
        "present by presence"
    );
    h.advance(Duration::ZERO);
    frames.extend(h.sent());
    let id = sync_after_report(&frames, "r1");
    h.control_says(ack(id, &[]));
    assert_eq!(confirmed_tokens(&h.received(0)), vec![1]);
}

#[test]
fn link_loss_unconfirms_everything_and_waiters_are_confirmed_after_the_next_registration() {
    let mut h = Harness::new(2);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "r1", 1);
    h.advance(Duration::ZERO);
    let confirmed = sync_after_report(&h.sent(), "r1");
    h.control_says(ack(confirmed, &[]));
    assert_eq!(confirmed_tokens(&h.received(0)), vec![1]);
    // A second room's barrier is in flight when the link drops.
    h.presence(1, "r2", WireFormat::WsJson, true);
    h.confirm(1, ChannelKind::Room, "r2", 2);
    h.advance(Duration::ZERO);
    let lost = sync_after_report(&h.sent(), "r2");
    h.core.link_failed("reset", h.now);
    for w in 0..2 {
        assert!(
            h.received(w)
                .iter()
                .any(|m| matches!(m, ToWorker::LinkLost)),
            "worker {w} hears of the loss"
        );
    }
    h.control_says(ack(lost, &[])); // late, from the old link: confirms nothing
    assert!(confirmed_tokens(&h.received(1)).is_empty());
    // A join of the once-routed room now waits too.
    h.confirm(0, ChannelKind::Room, "r1", 3);
    h.advance(BACKOFF_MIN);
    assert!(h.core.take_dial(), "re-dials after the minimum backoff");
    h.core.link_connected(LINK_IP);
    let mut frames = h.sent();
    let full = reports(&frames)[0];
    assert!(full.full && full.rooms.len() == 2, "{full:?}");
    h.advance(Duration::ZERO);
    frames.extend(h.sent());
    let id = sync_after_report(&frames, "r2");
    h.control_says(ack(id, &[]));
    assert_eq!(confirmed_tokens(&h.received(0)), vec![3]);
    assert_eq!(confirmed_tokens(&h.received(1)), vec![2]);
}

#[test]
fn link_loss_mid_window_still_delivers_the_window_to_members() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2);
    h.received(0);
    h.now += Duration::from_millis(1);
    h.publish(room("r1"), 2, 2);
    h.core.link_failed("reset", h.now);
    h.advance(TICK);
    let got = h.received(0);
    assert!(got.iter().any(|m| matches!(m, ToWorker::LinkLost)));
    assert_eq!(seqs_in(deliveries(&got)[0], WireFormat::WsJson), vec![2]);
}

// ---- reports, dialling and queries --------------------------------------------------------------

#[test]
fn a_membership_change_is_reported_within_the_short_delay_and_a_full_report_carries_last_seqs() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.advance(Duration::from_millis(10));
    assert!(h.sent().is_empty());
    h.advance(Duration::from_millis(10));
    let frames = h.sent();
    let report = reports(&frames)[0];
    assert!(!report.full);
    assert_eq!(report.rooms, vec![("r1".to_string(), 1)]);

    // A worker report with counts and stats; the next regular report sums them.
    let stats = WorkerStats {
        connections: 5,
        bytes_out: 1234,
        ..WorkerStats::default()
    };
    h.core.handle_worker(
        ToHub::Report {
            worker: 0,
            rooms: HashMap::from([("r1".into(), 5)]),
            room_users: HashMap::new(),
            users: HashMap::new(),
            stats: Box::new(stats),
        },
        h.now,
    );
    h.publish(room("r1"), 41, 2);
    h.core.set_capacity_permille(250);
    assert!(!h.core.report_due(h.now));
    h.advance(REPORT);
    let frames = h.sent();
    let report = reports(&frames)[0];
    assert_eq!(report.connections, 5);
    assert_eq!(report.bytes_out, 1234);
    assert_eq!(report.rooms, vec![("r1".to_string(), 5)]);
    assert_eq!(report.capacity_ratio_permille, 250);
    assert_eq!(h.core.rooms_by_level().get(&0), Some(&(1, 5)));

    // After a reconnection the full report continues the numbering.
    h.core.link_failed("reset", h.now);
    h.advance(BACKOFF_MIN);
    assert!(h.core.take_dial());
    h.core.link_connected(LINK_IP);
    let frames = h.sent();
    let full = reports(&frames)[0];
    assert!(full.full);
    assert_eq!(full.seqs, vec![(room("r1"), 41)]);
}

#[test]
fn failed_dials_back_off_doubling_up_to_the_cap() {
    let mut h = Harness::down(1);
    h.core.handle_timeout(h.now);
    for wait_ms in [100, 200, 400, 800, 1000, 1000] {
        assert!(h.core.take_dial());
        h.core.link_failed("refused", h.now);
        h.advance(Duration::from_millis(wait_ms - 1));
        assert!(!h.core.take_dial(), "not before the {wait_ms} ms backoff");
        h.advance(Duration::from_millis(1));
    }
    assert!(h.core.take_dial());
    assert_eq!(BACKOFF_MAX, Duration::from_secs(1));
}

#[test]
fn an_edge_only_frame_from_the_control_plane_is_refused() {
    let mut h = Harness::new(1);
    assert!(h
        .core
        .handle_link_frame(
            LinkFrame::Sync(link::Sync {
                id: 1,
                channels: Vec::new()
            }),
            h.now
        )
        .is_err());
}

#[test]
fn a_user_query_collects_every_holding_worker_and_is_dropped_with_the_link() {
    let mut h = Harness::new(2);
    // Nobody holds u1: answered at once, empty.
    h.control_says(LinkFrame::QueryUser(QueryUser {
        request: 5,
        user: "u1".into(),
    }));
    let frames = h.sent();
    assert!(
        matches!(&frames[..], [LinkFrame::UserConns(a)] if a.request == 5 && a.conns.is_empty())
    );

    for w in 0..2 {
        h.core.handle_worker(
            ToHub::Presence {
                worker: w,
                kind: ChannelKind::User,
                name: "u1".into(),
                format: WireFormat::WsJson,
                present: true,
            },
            h.now,
        );
    }
    h.control_says(LinkFrame::QueryUser(QueryUser {
        request: 6,
        user: "u1".into(),
    }));
    let mut asked = Vec::new();
    for w in 0..2 {
        for m in h.received(w) {
            if let ToWorker::QueryUser { request, .. } = m {
                asked.push(request);
            }
        }
    }
    assert_eq!(asked.len(), 2);
    let conn = |port: u16| ConnInfo {
        format: WireFormat::WsJson,
        peer: format!("127.0.0.1:{port}"),
        rooms: vec![],
    };
    h.core.handle_worker(
        ToHub::UserConns {
            request: asked[0],
            conns: vec![conn(1)],
        },
        h.now,
    );
    assert!(!h
        .sent()
        .iter()
        .any(|f| matches!(f, LinkFrame::UserConns(_))));
    h.core.handle_worker(
        ToHub::UserConns {
            request: asked[1],
            conns: vec![conn(2)],
        },
        h.now,
    );
    let frames = h.sent();
    let [LinkFrame::UserConns(answer)] = &frames[..] else {
        panic!("one answer: {frames:?}");
    };
    assert_eq!(answer.request, 6);
    assert_eq!(answer.conns.len(), 2);

    // A query outstanding when the link drops is forgotten: a late answer sends nothing.
    h.control_says(LinkFrame::QueryUser(QueryUser {
        request: 7,
        user: "u1".into(),
    }));
    let request = match h.received(0).pop() {
        Some(ToWorker::QueryUser { request, .. }) => request,
        other => panic!("{other:?}"),
    };
    h.core.link_failed("reset", h.now);
    h.core.handle_worker(
        ToHub::UserConns {
            request,
            conns: vec![],
        },
        h.now,
    );
    assert!(h.sent().is_empty());
}

#[test]
fn shutdown_reaches_every_worker() {
    let mut h = Harness::new(3);
    h.core.shutdown();
    assert_eq!(h.drain(), 0b111);
    for w in 0..3 {
        assert!(matches!(h.inboxes[w].pop_back(), Some(ToWorker::Shutdown)));
    }
}

// ---- the advertised address -------------------------------------------------------------------

#[test]
fn a_wildcard_edge_advertises_the_address_its_link_comes_from() {
    let mut advertised = Advertised {
        edge_id: "e1".into(),
        host: None,
        ws_port: 8080,
        tcp_port: 8081,
        admin: Some("0.0.0.0:9101".parse().unwrap()),
        workers: 2,
        capacity: 10,
    };
    let r = advertised.register(LINK_IP);
    assert_eq!(
        (&*r.ws_addr, &*r.tcp_addr, &*r.admin_addr),
        ("10.1.2.3:8080", "10.1.2.3:8081", "10.1.2.3:9101")
    );
    let r = advertised.register("fd00::7".parse().unwrap());
    assert_eq!(r.ws_addr, "[fd00::7]:8080");
    // --advertise-host wins; an admin listener on a specific IP keeps it.
    advertised.host = Some("edge-1.example.com".into());
    advertised.admin = Some(SocketAddr::from(([192, 168, 0, 9], 9101)));
    let r = advertised.register(LINK_IP);
    assert_eq!(r.ws_addr, "edge-1.example.com:8080");
    assert_eq!(r.admin_addr, "192.168.0.9:9101");
    advertised.admin = None;
    assert_eq!(advertised.register(LINK_IP).admin_addr, "");
}

// ---- where the stream stands, and recovery (PROTOCOL.md §5) ----------------------------------

fn ack(id: u64, rooms: &[(&str, &str, u64)]) -> LinkFrame {
    LinkFrame::SyncAck(SyncAck {
        id,
        positions: rooms
            .iter()
            .map(|&(r, epoch, last_seq)| ChannelPosition {
                target: room(r),
                epoch: epoch.into(),
                last_seq,
            })
            .collect(),
    })
}

fn position_of(messages: &[ToWorker], token: u64) -> Option<(String, u64)> {
    messages.iter().find_map(|m| match m {
        ToWorker::Confirmed {
            token: t,
            position: Some(p),
            ..
        } if *t == token => Some((p.epoch.to_string(), p.last_seq)),
        _ => None,
    })
}

/// Sends a worker's recovery request; returns the link request the hub sent for it, checking
/// the report announcing the room went first.
fn recover(h: &mut Harness, worker: usize, token: u64, since: (&str, u64)) -> u64 {
    h.core.handle_worker(
        ToHub::Recover(RecoverRequest {
            worker,
            token,
            conn: ConnId::new(token as usize, 1),
            kind: ChannelKind::Room,
            name: "r1".into(),
            since: Since {
                epoch: since.0.into(),
                seq: since.1,
            },
            format: WireFormat::WsJson,
        }),
        h.now,
    );
    h.advance(Duration::ZERO);
    let frames = h.sent();
    let at = frames
        .iter()
        .position(|f| matches!(f, LinkFrame::Recover(_)))
        .expect("a recover request");
    if let Some(reported) = frames.iter().position(
        |f| matches!(f, LinkFrame::LoadReport(r) if r.rooms.iter().any(|(n, _)| n == "r1")),
    ) {
        assert!(reported < at, "the report goes before the recovery");
    }
    let LinkFrame::Recover(r) = &frames[at] else {
        unreachable!()
    };
    assert_eq!((r.target.clone(), r.since.seq), (room("r1"), since.1));
    r.id
}

fn answer(id: u64, epoch: &str, last: u64, result: Result<Vec<u64>, RecoveryFailure>) -> LinkFrame {
    LinkFrame::Recovered(Recovered {
        id,
        position: ChannelPosition {
            target: room("r1"),
            epoch: epoch.into(),
            last_seq: last,
        },
        result: result.map(|seqs| seqs.into_iter().map(|s| msg(s, 2, 5)).collect()),
    })
}

/// A replay handed to a worker: (token, epoch, last_seq, replayed seqs or the failure).
type Replay = (u64, String, u64, Result<Vec<u64>, RecoveryFailure>);

fn replays(messages: &[ToWorker]) -> Vec<Replay> {
    messages
        .iter()
        .filter_map(|m| match m {
            ToWorker::Recovered {
                token,
                position,
                result,
                ..
            } => Some((
                *token,
                position.epoch.to_string(),
                position.last_seq,
                result.as_ref().map_err(|f| *f).map(|frames| {
                    frames
                        .iter()
                        .flat_map(|bytes| match decode_frame(bytes, WireFormat::WsJson) {
                            ServerMsg::Batch { msgs, .. } => {
                                msgs.into_iter().map(|m| m.seq).collect::<Vec<_>>()
                            }
                            other => panic!("not a batch: {other:?}"),
                        })
                        .collect()
                }),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_confirmation_carries_the_position_and_a_later_join_gets_it_without_a_barrier() {
    let mut h = Harness::new(2);
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.confirm(1, ChannelKind::Room, "r1", 7);
    h.advance(Duration::ZERO);
    let id = sync_after_report(&h.sent(), "r1");
    h.control_says(ack(id, &[("r1", "ep1", 57)]));
    assert_eq!(position_of(&h.received(1), 7), Some(("ep1".into(), 57)));

    // Publishes 58 and 59 reach the hub; 58 goes out at once, 59 waits in the window: a join on
    // the other core now is told 58, and receives 59 in the next batch.
    h.publish(room("r1"), 58, 2);
    h.publish(room("r1"), 59, 2);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.confirm(0, ChannelKind::Room, "r1", 8);
    h.advance(Duration::ZERO);
    assert!(!h.sent().iter().any(|f| matches!(f, LinkFrame::Sync(_))));
    assert_eq!(position_of(&h.received(0), 8), Some(("ep1".into(), 58)));
}

#[test]
fn a_confirmation_behind_an_open_window_starts_the_stream_at_that_window() {
    let mut h = Harness::new(2);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 1, 2); // goes out at once and stays in flight
    h.publish(room("r1"), 2, 2); // waits in the window
    h.presence(1, "r1", WireFormat::WsJson, true);
    h.confirm(1, ChannelKind::Room, "r1", 3);
    h.advance(Duration::ZERO);
    let id = sync_after_report(&h.sent(), "r1");
    h.control_says(ack(id, &[("r1", "ep", 2)]));
    assert_eq!(position_of(&h.received(1), 3), Some(("ep".into(), 1)));
}

#[test]
fn a_recovery_replays_what_is_not_in_the_open_window_and_the_window_follows_live() {
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 50, 2); // out at once, in flight
    h.publish(room("r1"), 51, 2); // waiting in the window
    let id = recover(&mut h, 0, 9, ("ep", 45));
    h.control_says(answer(id, "ep", 51, Ok((46..=51).collect())));
    let got = h.received(0);
    assert_eq!(
        replays(&got),
        vec![(9, "ep".into(), 50, Ok((46..=50).collect()))],
        "51 comes with the live batch"
    );
}

#[test]
fn a_recovery_inside_the_open_window_is_finished_with_that_window_after_its_batch() {
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 50, 2);
    let first = h.batches(0);
    h.publish(room("r1"), 51, 2);
    h.publish(room("r1"), 52, 2);
    // The client saw 51 through another edge.
    let id = recover(&mut h, 0, 9, ("ep", 51));
    h.control_says(answer(id, "ep", 52, Ok(vec![52])));
    assert!(replays(&h.received(0)).is_empty(), "waits for the window");
    h.publish(room("r1"), 53, 2); // after the answer, same window
    h.written(0, &first[0]);
    h.advance(TICK);
    let got = h.received(0);
    let batch_at = got
        .iter()
        .position(|m| matches!(m, ToWorker::Deliver(_)))
        .expect("the window's batch");
    let replay_at = got
        .iter()
        .position(|m| matches!(m, ToWorker::Recovered { .. }))
        .expect("the replay");
    assert!(
        batch_at < replay_at,
        "the replay follows the batch it covers"
    );
    assert_eq!(
        seqs_in(deliveries(&got)[0], WireFormat::WsJson),
        vec![51, 52, 53]
    );
    assert_eq!(replays(&got), vec![(9, "ep".into(), 53, Ok(vec![52, 53]))]);
}

#[test]
fn a_refused_recovery_tells_where_the_live_stream_starts() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    let id = recover(&mut h, 0, 4, ("old", 3));
    h.control_says(answer(id, "new", 17, Err(RecoveryFailure::EpochChanged)));
    assert_eq!(
        replays(&h.received(0)),
        vec![(4, "new".into(), 17, Err(RecoveryFailure::EpochChanged))]
    );
    assert_eq!(h.core.stats().recoveries_failed, [1, 0, 0, 0]);
}

#[test]
fn recoveries_unanswered_when_the_link_drops_are_asked_again_after_the_next_registration() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::WsJson, true);
    let old = recover(&mut h, 0, 4, ("ep", 3));
    h.core.link_failed("test", h.now);
    h.advance(BACKOFF_MAX);
    let frames = h.connect();
    assert!(matches!(frames[0], LinkFrame::Register(_)));
    h.advance(Duration::ZERO);
    let again: Vec<u64> = h
        .sent()
        .iter()
        .filter_map(|f| match f {
            LinkFrame::Recover(r) => Some(r.id),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![old]);
    h.control_says(answer(old, "ep", 3, Ok(vec![])));
    assert_eq!(
        replays(&h.received(0)),
        vec![(4, "ep".into(), 3, Ok(vec![]))]
    );
    // A second answer to the same request (the first link's) is ignored.
    h.control_says(answer(old, "ep", 3, Ok(vec![])));
    assert!(replays(&h.received(0)).is_empty());
}

// ---- rooms' online counts and distinct users ----------------------------------------------------

fn room_online(rooms: &[(&str, u32, u32)]) -> LinkFrame {
    LinkFrame::RoomOnline(RoomOnline {
        rooms: rooms
            .iter()
            .map(|&(room, online, users)| RoomCount {
                room: room.into(),
                online,
                users,
            })
            .collect(),
    })
}

/// The online counts handed to a worker, one list per message.
fn online_pushes(messages: &[ToWorker]) -> Vec<Vec<Arc<RoomPush>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            ToWorker::RoomOnline(pushes) => Some(pushes.clone()),
            _ => None,
        })
        .collect()
}

/// What a room push's bytes in `format` say: (room, online, users).
fn decoded_count(push: &RoomPush, format: WireFormat) -> (String, u32, u32) {
    let bytes = push.encoded[format.index()]
        .as_ref()
        .expect("encoded for this format");
    let decoded = decode_frame(bytes, format);
    let ServerMsg::Room {
        room,
        online,
        users,
    } = decoded
    else {
        panic!("not a room push: {decoded:?}");
    };
    (room, online, users)
}

#[test]
fn an_online_count_is_encoded_once_per_format_and_handed_only_to_workers_holding_the_room() {
    let mut h = Harness::new(3);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(0, "r2", WireFormat::WsJson, true);
    h.presence(1, "r1", WireFormat::Tcp, true);
    h.presence(2, "r3", WireFormat::WsBinary, true);
    h.drain();
    for w in 0..3 {
        h.inboxes[w].clear();
    }
    // r1 on workers 0 and 1, r2 on worker 0, "gone" nowhere here.
    h.control_says(room_online(&[
        ("r1", 104_532, 98_000),
        ("r2", 3, 2),
        ("gone", 1, 1),
    ]));
    assert_eq!(h.drain(), 0b011, "worker 2 holds none of these rooms");
    let zero = online_pushes(&h.received(0));
    let one = online_pushes(&h.received(1));
    assert_eq!(zero.len(), 1, "one message per worker for the whole frame");
    assert_eq!(one.len(), 1);
    let (zero, one) = (&zero[0], &one[0]);
    assert_eq!(
        zero.iter().map(|p| &*p.room).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    assert_eq!(one.len(), 1);
    assert!(Arc::ptr_eq(&zero[0], &one[0]), "r1 encoded once, shared");
    let r1 = &zero[0];
    assert!(
        r1.encoded[WireFormat::WsBinary.index()].is_none(),
        "no binary member"
    );
    assert_eq!(
        decoded_count(r1, WireFormat::WsJson),
        ("r1".into(), 104_532, 98_000)
    );
    assert_eq!(
        decoded_count(r1, WireFormat::Tcp),
        ("r1".into(), 104_532, 98_000)
    );
    assert!(zero[1].encoded[WireFormat::Tcp.index()].is_none());
    assert_eq!(
        decoded_count(&zero[1], WireFormat::WsJson),
        ("r2".into(), 3, 2)
    );
    assert_eq!(h.core.stats().online_pushes, 2, "counted per room encoded");
    assert!(h.received(2).is_empty());
    // Not a message of the stream: nothing of the room's window moved.
    assert!(deliveries(&h.received(0)).is_empty());
}

#[test]
fn a_worker_a_room_appears_on_gets_its_latest_count_in_its_format() {
    let mut h = Harness::new(2);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.control_says(room_online(&[("r1", 7, 6)]));
    h.drain();
    h.inboxes[0].clear();
    // A binary member on worker 1: it gets the same values, encoded in binary once.
    h.presence(1, "r1", WireFormat::WsBinary, true);
    let got = online_pushes(&h.received(1));
    assert_eq!(got.len(), 1);
    assert_eq!(
        decoded_count(&got[0][0], WireFormat::WsBinary),
        ("r1".into(), 7, 6)
    );
    // Another binary member there later changes nothing (no new format, no new worker).
    h.presence(0, "r1", WireFormat::WsBinary, true);
    let again = online_pushes(&h.received(0));
    assert!(Arc::ptr_eq(&again[0][0], &got[0][0]), "encoded once");
    // A room with no count yet sends nothing.
    h.presence(1, "quiet", WireFormat::Tcp, true);
    assert!(online_pushes(&h.received(1)).is_empty());
}

#[test]
fn online_counts_a_full_worker_inbox_refuses_are_dropped_not_held() {
    let mut h = Harness::new(1);
    h.presence(0, "r1", WireFormat::Tcp, true);
    h.drain();
    h.inboxes[0].clear();
    h.inbox_capacity = 0;
    h.control_says(room_online(&[("r1", 2, 2)]));
    assert_eq!(h.drain(), 0);
    assert_eq!(h.core.stats().online_dropped, 1);
    h.inbox_capacity = 10;
    h.control_says(room_online(&[("r1", 3, 2)]));
    let got = online_pushes(&h.received(0));
    assert_eq!(got.len(), 1, "only the newer count, nothing piled up");
    assert_eq!(got[0][0].online, 3);
}

fn sketch(users: &[&str]) -> UserSketch {
    UserSketch::from_hashes(users.iter().map(|u| user_hash(u)))
}

fn worker_report(h: &mut Harness, worker: usize, rooms: &[(&str, u32, Option<UserSketch>)]) {
    h.core.handle_worker(
        ToHub::Report {
            worker,
            rooms: rooms.iter().map(|(r, n, _)| ((*r).into(), *n)).collect(),
            room_users: rooms
                .iter()
                .filter_map(|(r, _, s)| s.clone().map(|s| ((*r).into(), s)))
                .collect(),
            users: HashMap::new(),
            stats: Box::default(),
        },
        h.now,
    );
}

#[test]
fn load_reports_carry_each_changed_room_s_users_merged_over_workers() {
    let mut h = Harness::new(2);
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.presence(1, "r1", WireFormat::Tcp, true);
    h.advance(REPORT);
    h.sent();
    // Alice on both workers (app and H5): she counts once.
    worker_report(&mut h, 0, &[("r1", 2, Some(sketch(&["alice", "bob"])))]);
    worker_report(&mut h, 1, &[("r1", 2, Some(sketch(&["alice", "carol"])))]);
    h.advance(REPORT);
    let frames = h.sent();
    let report = reports(&frames)[0];
    assert_eq!(report.rooms, vec![("r1".to_string(), 4)]);
    assert_eq!(
        report.room_users,
        vec![("r1".to_string(), sketch(&["alice", "bob", "carol"]))]
    );
    // Nothing changed: nothing listed.
    h.advance(REPORT);
    let frames = h.sent();
    assert!(reports(&frames)[0].room_users.is_empty());
    // Worker 1's members left: the room's users are worker 0's.
    worker_report(&mut h, 1, &[("r1", 0, None)]);
    h.advance(REPORT);
    let frames = h.sent();
    assert_eq!(
        reports(&frames)[0].room_users,
        vec![("r1".to_string(), sketch(&["alice", "bob"]))]
    );
    // A full report (after a re-dial) lists every room's users.
    h.core.link_failed("test", h.now);
    h.advance(BACKOFF_MIN);
    let frames = h.connect();
    let full = reports(&frames)[0];
    assert!(full.full);
    assert_eq!(
        full.room_users,
        vec![("r1".to_string(), sketch(&["alice", "bob"]))]
    );
    // The last worker leaves: the room is gone, and with it its users.
    worker_report(&mut h, 0, &[("r1", 0, None)]);
    h.advance(REPORT);
    let frames = h.sent();
    assert!(reports(&frames)[0].room_users.is_empty());
    h.core.link_failed("test", h.now);
    h.advance(BACKOFF_MIN);
    let frames = h.connect();
    assert!(reports(&frames)[0].room_users.is_empty());
}

#[test]
fn a_window_missing_messages_the_answer_covers_is_not_taken_live_by_the_recovering_viewer() {
    // 12 and 13 were numbered while the control plane did not route the room here (its last
    // member had just left): they never reach the hub, and the window holds 11 only.
    let mut h = Harness::new(1);
    h.instant_writers = 0;
    h.presence(0, "r1", WireFormat::WsJson, true);
    h.publish(room("r1"), 10, 2); // out at once
    let first = h.batches(0);
    h.publish(room("r1"), 11, 2); // waits in the window
    let id = recover(&mut h, 0, 9, ("ep", 5));
    h.control_says(answer(id, "ep", 13, Ok((6..=13).collect())));
    assert!(
        replays(&h.received(0)).is_empty(),
        "a replay to 10 and the live 11 would skip 12 and 13"
    );
    h.publish(room("r1"), 14, 2);
    h.written(0, &first[0]);
    h.advance(TICK);
    let got = h.received(0);
    assert_eq!(
        seqs_in(deliveries(&got)[0], WireFormat::WsJson),
        vec![11, 14]
    );
    assert_eq!(
        replays(&got),
        vec![(9, "ep".into(), 14, Ok((6..=14).collect()))]
    );
}

// ---- upstream --------------------------------------------------------------------------------

fn send_from(worker: usize, token: u64, user: &str) -> ToHub {
    ToHub::Send(Box::new(crate::fanout::SendRequest {
        worker,
        token,
        conn: ConnId::new(token as usize, 1),
        user: user.into(),
        room: "r1".into(),
        kind: "chat".into(),
        data: Bytes::from_static(br#"{"text":"hi"}"#),
        format: WireFormat::Tcp,
        peer: "10.0.0.1:4000".into(),
    }))
}

fn sends_sent(frames: &[LinkFrame]) -> Vec<&link::SendRequest> {
    frames
        .iter()
        .filter_map(|f| match f {
            LinkFrame::Send(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn send_dones(messages: &[ToWorker]) -> Vec<(u64, crate::fanout::SendOutcome)> {
    messages
        .iter()
        .filter_map(|m| match m {
            ToWorker::SendDone { token, outcome, .. } => Some((*token, outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_users_connections_on_every_core_share_one_bucket_and_the_answer_finds_its_worker() {
    use crate::fanout::SendOutcome;
    let mut h = Harness::new(2);
    // Burst 5 (the harness's limit), spent over both workers.
    for token in 1..=6 {
        let worker = (token % 2) as usize;
        h.core.handle_worker(send_from(worker, token, "u1"), h.now);
    }
    h.core.handle_worker(send_from(0, 7, "u2"), h.now);
    let sent = h.sent();
    let sent = sends_sent(&sent);
    assert_eq!(sent.len(), 6, "u1's burst of 5 and u2's send");
    assert_eq!(sent[0].user, "u1");
    assert_eq!(sent[0].peer, "10.0.0.1:4000");
    assert_eq!(sent[5].user, "u2");
    // The 6th of u1 (token 6, worker 0) is refused by the hub.
    let refused = send_dones(&h.received(0));
    assert!(
        matches!(
            refused.as_slice(),
            [(
                6,
                SendOutcome::RateLimited {
                    retry_after_ms: 500
                }
            )]
        ),
        "{refused:?}"
    );
    // The control plane's answer to token 3 (worker 1) goes to worker 1.
    let id = sent[2].id;
    h.control_says(LinkFrame::SendResult(link::SendResult {
        id,
        outcome: link::SendOutcome::Published { msg_seq: 9 },
    }));
    assert_eq!(
        send_dones(&h.received(1)),
        [(
            3,
            SendOutcome::Link(link::SendOutcome::Published { msg_seq: 9 })
        )]
    );
    // Refilled after a second: two more.
    h.advance(Duration::from_secs(1));
    h.core.handle_worker(send_from(0, 8, "u1"), h.now);
    h.core.handle_worker(send_from(0, 9, "u1"), h.now);
    assert_eq!(sends_sent(&h.sent()).len(), 2);
}

#[test]
fn sends_while_the_link_is_down_or_lost_in_flight_are_answered_unavailable() {
    use crate::fanout::SendOutcome;
    let mut h = Harness::new(1);
    h.core.handle_worker(send_from(0, 1, "u1"), h.now);
    assert_eq!(sends_sent(&h.sent()).len(), 1);
    h.core.link_failed("test", h.now);
    assert_eq!(send_dones(&h.received(0)), [(1, SendOutcome::Unavailable)]);
    h.core.handle_worker(send_from(0, 2, "u1"), h.now);
    assert!(sends_sent(&h.sent()).is_empty());
    assert_eq!(send_dones(&h.received(0)), [(2, SendOutcome::Unavailable)]);
}

#[test]
fn a_rounds_acks_go_to_the_control_plane_in_one_frame_and_none_while_down() {
    let mut h = Harness::new(1);
    for msg_seq in [7, 8] {
        h.core.handle_worker(
            ToHub::Ack {
                user: "u1".into(),
                msg_seq,
                at_ms: 1_000 + msg_seq,
            },
            h.now,
        );
    }
    h.advance(Duration::from_millis(1));
    let acks: Vec<link::Acks> = h
        .sent()
        .into_iter()
        .filter_map(|f| match f {
            LinkFrame::Acks(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(
        acks[0].acks,
        [
            link::Ack {
                user: "u1".into(),
                msg_seq: 7,
                at_ms: 1_007
            },
            link::Ack {
                user: "u1".into(),
                msg_seq: 8,
                at_ms: 1_008
            }
        ]
    );
    h.core.link_failed("test", h.now);
    h.core.handle_worker(
        ToHub::Ack {
            user: "u1".into(),
            msg_seq: 9,
            at_ms: 1,
        },
        h.now,
    );
    assert_eq!(h.core.stats().acks_dropped, 1);
    assert_eq!(h.core.stats().acks_sent, 2);
}
