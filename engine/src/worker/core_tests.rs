//! The worker core driven in memory with explicit time: a scripted fake driver that records what
//! is written and completes writes as each test says, a fake hub inbox that can be full, and
//! clients speaking the raw TCP protocol. Every test runs in well under a millisecond of logic;
//! time only moves when a test moves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::fanout::DeliveryFrame;
use roomcast_proto::auth::{mint, Claims, DEV_JWT_SECRET};
use roomcast_proto::client::{decode_server_binary, encode_batch, encode_op, tcp_frame_len};
use roomcast_proto::client::{ReplyDetails, ServerMsg};
use roomcast_proto::message::{PushMessage, PRIORITIES};

/// The wall clock when every test starts (tokens expire relative to it).
const EPOCH_SECS: u64 = 1_700_000_000;

/// How the fake driver answers a connection's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A readiness driver (epoll): writes complete at once, taking what fits in a socket buffer
    /// with this much room; none left → `WouldBlock`, and `Writable` once the client reads.
    Sync { room: usize },
    /// A completion driver (io_uring): every write is `Pending` until the test completes it.
    Async,
    /// Every write fails.
    Fail,
}

#[derive(Debug)]
struct FakeConn {
    mode: Mode,
    /// Bytes the socket took (what the client has to read).
    wire: Vec<u8>,
    /// Sync: a write found no room; report `Writable` when the client reads.
    want_writable: bool,
    /// Async: the write the kernel is working on.
    in_flight: Option<WriteBuf>,
    writes: usize,
    /// `Driver::close` was called; `Released` is due once nothing is in flight.
    closed: bool,
    released: bool,
}

/// The loop, with a fake driver and a fake hub.
struct Harness {
    core: WorkerCore,
    now: Instant,
    start: Instant,
    conns: HashMap<ConnId, FakeConn>,
    /// Messages the hub received, in order.
    hub: Vec<ToHub>,
    /// Room left in the hub's inbox (`None`: unbounded).
    hub_room: Option<usize>,
    hub_wakes: usize,
    open: Arc<AtomicUsize>,
}

fn config() -> EdgeConfig {
    EdgeConfig {
        heartbeat_timeout_ms: 90_000,
        auth_timeout_ms: 10_000,
        join_confirm_timeout_ms: 5_000,
        write_stall_timeout_ms: 10_000,
        queue_soft_bytes: 256 * 1024,
        queue_hard_bytes: 1024 * 1024,
        report_interval_ms: 1_000,
        max_connections: 1_000,
        jwt_secret: DEV_JWT_SECRET.into(),
        ..EdgeConfig::default()
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(config())
    }

    fn with(config: EdgeConfig) -> Harness {
        let start = Instant::now();
        let config = Arc::new(config);
        let open = Arc::new(AtomicUsize::new(0));
        let core = WorkerCore::new(CoreSetup {
            index: 0,
            verifier: Arc::new(Verifier::new(config.jwt_secret.as_bytes())),
            config,
            open_connections: Arc::clone(&open),
            now: start,
            wall: wall_at(0),
        });
        Harness {
            core,
            now: start,
            start,
            conns: HashMap::new(),
            hub: Vec::new(),
            hub_room: None,
            hub_wakes: 0,
            open,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    // ---- the loop ----------------------------------------------------------------------------

    /// One round after events: releases the driver reports, the core's actions, the hub.
    fn round(&mut self) {
        let released: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.closed && !c.released && c.in_flight.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in released {
            self.conns.get_mut(&id).unwrap().released = true;
            self.core.on_released(id);
        }
        if self.now >= self.core.poll_timeout() {
            let wall = wall_at(self.elapsed().as_millis() as u64);
            self.core.on_timeout(self.now, wall, DriverStats::default());
        }
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Write { conn, buf } => {
                    let status = self.write(conn, buf);
                    self.core.on_write_status(self.now, conn, status);
                }
                Action::Close { conn } => {
                    let fake = self.conns.get_mut(&conn).expect("close of a known conn");
                    assert!(!fake.closed, "{conn:?} closed twice");
                    fake.closed = true;
                }
                Action::UserConns { request, conns } => {
                    let conns = conns
                        .into_iter()
                        .map(|(id, mut info)| {
                            info.peer = format!("10.0.0.{}:4000", id.key());
                            info
                        })
                        .collect();
                    self.core.user_conns_ready(request, conns);
                }
                Action::Send(mut send) => {
                    send.peer = format!("10.0.0.{}:4000", send.conn.key());
                    self.core.send_ready(send);
                }
            }
        }
        self.core.on_flushed(self.now);
        while let Some(message) = self.core.poll_to_hub(self.now) {
            match &mut self.hub_room {
                Some(0) => {
                    self.core.hub_full(self.now, message);
                    break;
                }
                Some(room) => {
                    *room -= 1;
                    self.hub.push(message);
                }
                None => self.hub.push(message),
            }
        }
        if self.core.take_hub_wake() {
            self.hub_wakes += 1;
        }
    }

    /// The fake driver's `write`.
    fn write(&mut self, conn: ConnId, buf: WriteBuf) -> WriteStatus {
        let fake = self.conns.get_mut(&conn).expect("write to a known conn");
        assert!(!fake.closed, "{conn:?}: write after close");
        assert!(fake.in_flight.is_none(), "{conn:?}: two writes in flight");
        fake.writes += 1;
        match fake.mode {
            Mode::Sync { room: 0 } => {
                fake.want_writable = true;
                WriteStatus::WouldBlock(buf)
            }
            Mode::Sync { room } => {
                let bytes = buf.to_vec();
                let n = bytes.len().min(room);
                fake.wire.extend_from_slice(&bytes[..n]);
                fake.mode = Mode::Sync { room: room - n };
                WriteStatus::Done(Ok(n), buf)
            }
            Mode::Async => {
                fake.in_flight = Some(buf);
                WriteStatus::Pending
            }
            Mode::Fail => WriteStatus::Done(Err(std::io::Error::other("reset")), buf),
        }
    }

    /// Moves time forward and runs what is due.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.round();
    }

    /// Moves time forward in small steps (as a loop woken by its timers would).
    fn advance_in_steps(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now + step <= end {
            self.advance(step);
        }
        if self.now < end {
            let rest = end - self.now;
            self.advance(rest);
        }
    }

    // ---- the fake driver, as the test scripts it ---------------------------------------------

    fn connect_with(&mut self, mode: Mode) -> ConnId {
        self.connect_over(Transport::Tcp, mode)
    }

    fn connect_over(&mut self, transport: Transport, mode: Mode) -> ConnId {
        let Admission::Admit(id) = self.core.admit(self.now, transport) else {
            panic!("refused");
        };
        self.conns.insert(
            id,
            FakeConn {
                mode,
                wire: Vec::new(),
                want_writable: false,
                in_flight: None,
                writes: 0,
                closed: false,
                released: false,
            },
        );
        id
    }

    /// A client with a socket buffer that never fills.
    fn connect(&mut self) -> ConnId {
        self.connect_with(Mode::Sync { room: usize::MAX })
    }

    fn fake(&mut self, id: ConnId) -> &mut FakeConn {
        self.conns
            .get_mut(&id)
            .expect("a connection the fake driver knows")
    }

    /// Sets how the fake driver answers the connection's writes, and counts them from now.
    fn set_mode(&mut self, id: ConnId, mode: Mode) {
        let fake = self.fake(id);
        fake.mode = mode;
        fake.writes = 0;
    }

    /// The client reads `n` bytes' worth of socket buffer (sync mode): room for more, and
    /// `Writable` if a write was waiting for it.
    fn drain_socket(&mut self, id: ConnId, n: usize) {
        let fake = self.fake(id);
        let Mode::Sync { room } = fake.mode else {
            panic!("drain_socket on a {:?} connection", fake.mode);
        };
        fake.mode = Mode::Sync {
            room: room.saturating_add(n),
        };
        if std::mem::take(&mut fake.want_writable) {
            self.core.on_writable(id);
        }
        self.round();
    }

    /// Completes the in-flight write (async mode) with `n` bytes written.
    fn complete(&mut self, id: ConnId, n: usize) {
        let now = self.now;
        let fake = self.fake(id);
        let buf = fake.in_flight.take().expect("a write in flight");
        let bytes = buf.to_vec();
        fake.wire.extend_from_slice(&bytes[..n]);
        if fake.closed {
            // Cancelled by the close: the driver drops the buffer, no WriteDone.
            drop(buf);
        } else {
            self.core.on_write_done(now, id, Ok(n), buf);
        }
        self.round();
    }

    /// Completes the in-flight write in full.
    fn complete_all(&mut self, id: ConnId) {
        let n = self
            .fake(id)
            .in_flight
            .as_ref()
            .expect("a write in flight")
            .len();
        self.complete(id, n);
    }

    // ---- the client --------------------------------------------------------------------------

    fn send(&mut self, id: ConnId, op: ClientOp) {
        let mut bytes = encode_op(WireFormat::Tcp, &op, [0; 4]).to_vec();
        self.core.on_data(self.now, id, &mut bytes);
        self.round();
    }

    fn send_raw(&mut self, id: ConnId, bytes: &[u8]) {
        let mut bytes = bytes.to_vec();
        self.core.on_data(self.now, id, &mut bytes);
        self.round();
    }

    fn auth(&mut self, id: ConnId, user: &str, seq: u64) {
        let token = token(user, EPOCH_SECS + 3600);
        self.send(
            id,
            ClientOp::Auth {
                seq,
                token,
                since: None,
            },
        );
    }

    fn join(&mut self, id: ConnId, room: &str, seq: u64) {
        self.send(
            id,
            ClientOp::Join {
                seq,
                room: room.into(),
                since: None,
            },
        );
    }

    /// A connection authenticated as `user` and joined to `room`, both confirmed.
    fn member(&mut self, user: &str, room: &str) -> ConnId {
        let id = self.connect();
        self.auth(id, user, 1);
        self.confirm_all();
        self.join(id, room, 2);
        self.confirm_all();
        let replies = self.read(id);
        assert_eq!(replies, vec![reply_ok(1), reply_ok(2)], "{user} in {room}");
        id
    }

    /// Takes what the client received since the last read, decoded.
    fn read(&mut self, id: ConnId) -> Vec<ServerMsg> {
        let wire = std::mem::take(&mut self.fake(id).wire);
        decode_all(&wire)
    }

    fn closed(&self, id: ConnId) -> bool {
        self.conns[&id].closed
    }

    fn released(&self, id: ConnId) -> bool {
        self.conns[&id].released
    }

    // ---- the hub -----------------------------------------------------------------------------

    /// Answers every `Confirm` the hub received, as the control plane would.
    fn confirm_all(&mut self) {
        let confirms: Vec<ToWorker> = self
            .hub
            .iter()
            .filter_map(|m| match m {
                ToHub::Confirm {
                    kind, name, token, ..
                } => Some(ToWorker::Confirmed {
                    kind: *kind,
                    name: name.clone(),
                    token: *token,
                    position: None,
                }),
                _ => None,
            })
            .collect();
        self.hub.retain(|m| !matches!(m, ToHub::Confirm { .. }));
        for confirmed in confirms {
            self.core.on_message(self.now, confirmed);
        }
        self.round();
    }

    /// Takes the `Confirm` requests the hub received: (kind, name, token).
    fn take_confirms(&mut self) -> Vec<(ChannelKind, String, u64)> {
        let mut out = Vec::new();
        self.hub.retain(|m| match m {
            ToHub::Confirm {
                kind, name, token, ..
            } => {
                out.push((*kind, name.to_string(), *token));
                false
            }
            _ => true,
        });
        out
    }

    fn deliver(&mut self, target: Target, frames: &[(u8, usize)]) {
        self.deliver_ticket(target, frames, 0);
    }

    /// Delivers a batch the hub numbered `ticket`.
    fn deliver_ticket(&mut self, target: Target, frames: &[(u8, usize)], ticket: u64) {
        let delivery = delivery(target, frames, self.now, ticket);
        self.core
            .on_message(self.now, ToWorker::Deliver(Arc::new(delivery)));
        self.round();
    }

    /// Takes the tickets of the batches reported written to the hub, in order.
    fn take_written(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        self.hub.retain(|m| match m {
            ToHub::Written { delivery, worker } => {
                assert_eq!(*worker, 0);
                out.push(delivery.ticket);
                false
            }
            _ => true,
        });
        out
    }

    fn stats(&self) -> &WorkerStats {
        self.core.stats()
    }
}

fn wall_at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + Duration::from_millis(ms)
}

fn token(user: &str, exp: u64) -> String {
    mint(
        DEV_JWT_SECRET.as_bytes(),
        &Claims {
            sub: user.into(),
            exp,
            rooms: None,
            send: None,
        },
    )
}

/// A batch for `target`: one frame per `(priority, padding bytes)`, each message numbered.
fn delivery(target: Target, frames: &[(u8, usize)], now: Instant, ticket: u64) -> Delivery {
    let frames: Vec<DeliveryFrame> = frames
        .iter()
        .enumerate()
        .map(|(i, &(priority, pad))| {
            let msg = PushMessage {
                seq: i as u64 + 1,
                priority,
                kind: "chat".into(),
                data: Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad))),
                merged: 0,
                is_final: false,
                ack: false,
                from: None,
            };
            let mut counts = [0; PRIORITIES];
            counts[priority as usize] = 1;
            DeliveryFrame {
                encoded: [
                    None,
                    None,
                    Some(encode_batch(WireFormat::Tcp, &target, &[msg])),
                ],
                min_priority: priority,
                counts,
            }
        })
        .collect();
    Delivery {
        target,
        last_seq: frames.len() as u64,
        frames,
        first_received: now,
        ticket,
    }
}

fn room(name: &str) -> Target {
    Target::Room(name.into())
}

fn decode_all(mut wire: &[u8]) -> Vec<ServerMsg> {
    let mut out = Vec::new();
    while let Some(len) = tcp_frame_len(wire) {
        assert!(wire.len() >= 4 + len, "a partial frame on the wire");
        out.push(decode_server_binary(&wire[4..4 + len]).expect("a valid server frame"));
        wire = &wire[4 + len..];
    }
    assert!(wire.is_empty(), "a partial length prefix on the wire");
    out
}

fn reply_ok(seq: u64) -> ServerMsg {
    ServerMsg::Reply {
        seq,
        result: Ok(()),
        details: ReplyDetails::default(),
    }
}

fn reply_err(msg: &ServerMsg) -> Option<(u64, &str)> {
    match msg {
        ServerMsg::Reply {
            seq,
            result: Err((code, _)),
            ..
        } => Some((*seq, code.as_str())),
        _ => None,
    }
}

fn close_code(msg: &ServerMsg) -> Option<u16> {
    match msg {
        ServerMsg::Close { code, .. } => Some(*code),
        _ => None,
    }
}

/// Priorities of the batch frames among `msgs`, in order.
fn batch_priorities(msgs: &[ServerMsg]) -> Vec<u8> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Batch { msgs, .. } => Some(msgs[0].priority),
            _ => None,
        })
        .collect()
}

fn presences(hub: &[ToHub]) -> Vec<(ChannelKind, String, bool)> {
    hub.iter()
        .filter_map(|m| match m {
            ToHub::Presence {
                kind,
                name,
                present,
                ..
            } => Some((*kind, name.to_string(), *present)),
            _ => None,
        })
        .collect()
}

// ---- the join acknowledgement ----------------------------------------------------------------

#[test]
fn a_join_reply_waits_for_the_hubs_confirmation() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    let b = h.member_unconfirmed("bob");
    let c = h.member_unconfirmed("carol");
    h.hub.clear();
    let (waits, confirmed) = (h.stats().confirm_waits, h.stats().confirm_latency.count);

    h.join(a, "r1", 2);
    assert!(h.read(a).is_empty(), "the reply waits for the confirmation");
    // The hub hears of the room, then is asked to confirm it, in that order, and is woken.
    assert!(matches!(
        h.hub.as_slice(),
        [
            ToHub::Presence {
                kind: ChannelKind::Room,
                present: true,
                ..
            },
            ToHub::Confirm {
                kind: ChannelKind::Room,
                ..
            }
        ]
    ));
    assert!(h.hub_wakes > 0);
    // Another join of the same room meanwhile shares the request.
    h.join(b, "r1", 2);
    let confirms = h
        .hub
        .iter()
        .filter(|m| matches!(m, ToHub::Confirm { .. }))
        .count();
    assert_eq!(confirms, 1, "one request per channel");
    assert!(h.read(b).is_empty());

    h.confirm_all();
    assert_eq!(h.read(a), vec![reply_ok(2)]);
    assert_eq!(h.read(b), vec![reply_ok(2)]);
    assert_eq!(h.stats().confirm_waits, waits + 2);
    assert_eq!(h.stats().confirm_latency.count, confirmed + 1);

    // The room is confirmed now: a later join is answered at once, and a batch right after an
    // ok reply reaches the joiner.
    h.join(c, "r1", 2);
    assert_eq!(h.read(c), vec![reply_ok(2)]);
    assert!(h.take_confirms().is_empty());
    h.deliver(room("r1"), &[(3, 10)]);
    assert_eq!(batch_priorities(&h.read(c)), vec![3]);
}

impl Harness {
    /// A connection authenticated (confirmed) as `user`, in no room, its replies read.
    fn member_unconfirmed(&mut self, user: &str) -> ConnId {
        let id = self.connect();
        self.auth(id, user, 1);
        self.confirm_all();
        assert_eq!(self.read(id), vec![reply_ok(1)]);
        id
    }
}

#[test]
fn a_stale_confirmation_is_ignored() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join(a, "r1", 2);
    let Ok([(kind, name, token)]) = <[_; 1]>::try_from(h.take_confirms()) else {
        panic!("one confirm request");
    };
    h.core.on_message(
        h.now,
        ToWorker::Confirmed {
            kind,
            name: name.clone().into(),
            token: token + 100,
            position: None,
        },
    );
    h.round();
    assert!(h.read(a).is_empty(), "a confirmation for another request");
    h.core.on_message(
        h.now,
        ToWorker::Confirmed {
            kind,
            name: name.into(),
            token,
            position: None,
        },
    );
    h.round();
    assert_eq!(h.read(a), vec![reply_ok(2)]);
}

#[test]
fn an_unconfirmed_join_is_refused_unavailable_after_the_timeout_and_undone() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join(a, "r1", 2);
    let [(_, _, first_token)] = h.take_confirms()[..] else {
        panic!("one confirm request");
    };
    // Still waiting just before the timeout.
    h.advance_in_steps(Duration::from_millis(4_900), Duration::from_millis(100));
    assert!(h.read(a).is_empty());
    // The sweep after the timeout refuses it and takes the member out again.
    h.advance_in_steps(Duration::from_millis(1_200), Duration::from_millis(100));
    let got = h.read(a);
    assert_eq!(got.len(), 1);
    assert_eq!(reply_err(&got[0]), Some((2, "unavailable")));
    assert_eq!(h.stats().confirm_timeouts, 1);
    assert!(h.core.rooms.slot_of("r1").is_none(), "the join was undone");
    assert!(presences(&h.hub).contains(&(ChannelKind::Room, "r1".into(), false)));
    assert!(!h.closed(a), "a refused join does not close the connection");
    // The late confirmation of the first request changes nothing; a retry asks again.
    h.core.on_message(
        h.now,
        ToWorker::Confirmed {
            kind: ChannelKind::Room,
            name: "r1".into(),
            token: first_token,
            position: None,
        },
    );
    h.round();
    assert!(h.read(a).is_empty());
    h.join(a, "r1", 3);
    let [(_, _, second_token)] = h.take_confirms()[..] else {
        panic!("a new confirm request");
    };
    assert_ne!(second_token, first_token);
    h.core.on_message(
        h.now,
        ToWorker::Confirmed {
            kind: ChannelKind::Room,
            name: "r1".into(),
            token: second_token,
            position: None,
        },
    );
    h.round();
    assert_eq!(h.read(a), vec![reply_ok(3)]);
}

#[test]
fn an_unconfirmed_auth_is_refused_unavailable_and_closed_with_1013() {
    let mut h = Harness::new();
    let a = h.connect();
    h.auth(a, "alice", 1);
    assert!(h.read(a).is_empty());
    assert_eq!(h.take_confirms().len(), 1);
    h.advance_in_steps(Duration::from_millis(6_100), Duration::from_millis(250));
    let got = h.read(a);
    assert_eq!(reply_err(&got[0]), Some((1, "unavailable")));
    assert_eq!(close_code(&got[1]), Some(session::CLOSE_TRY_AGAIN));
    assert_eq!(got.len(), 2);
    assert!(h.closed(a));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Unconfirmed), 1);
}

#[test]
fn link_lost_unconfirms_every_channel() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.core.on_message(h.now, ToWorker::LinkLost);
    h.round();
    // The room must be confirmed again before a join of it is answered.
    let b = h.member_unconfirmed("bob");
    h.join(b, "r1", 2);
    assert!(h.read(b).is_empty());
    assert_eq!(h.take_confirms().len(), 1);
    // Members already in keep receiving meanwhile.
    h.deliver(room("r1"), &[(2, 10)]);
    assert_eq!(batch_priorities(&h.read(a)), vec![2]);
}

#[test]
fn a_join_then_leave_before_the_confirmation_gets_both_replies_in_order() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join(a, "r1", 2);
    h.send(
        a,
        ClientOp::Leave {
            seq: 3,
            room: "r1".into(),
        },
    );
    assert_eq!(h.read(a), vec![reply_ok(2), reply_ok(3)]);
    // The channel emptied: its confirmation, when it comes, is stale.
    h.confirm_all();
    assert!(h.read(a).is_empty());
}

// ---- writes ----------------------------------------------------------------------------------

#[test]
fn a_short_write_resumes_where_it_stopped() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 100 });
    let flushes = h.stats().flushes;
    // Three frames of ~300 bytes: the socket takes 100, then would block.
    h.deliver(room("r1"), &[(3, 250), (2, 250), (1, 250)]);
    assert_eq!(h.fake(a).wire.len(), 100);
    assert_eq!(
        h.fake(a).writes,
        2,
        "a short write is retried once, then blocks"
    );
    assert_eq!(h.stats().flushes, flushes + 1, "one flush");
    // The client reads: the writes resume mid-frame, in order, until all is sent.
    for _ in 0..20 {
        h.drain_socket(a, 100);
    }
    let got = h.read(a);
    assert_eq!(batch_priorities(&got), vec![3, 2, 1]);
    assert!(h.core.conns[a.key()].out.is_empty());
}

#[test]
fn a_completion_driver_writes_in_pieces_as_completions_come() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Async);
    h.deliver(room("r1"), &[(3, 100), (2, 100)]);
    let offered = h.fake(a).in_flight.as_ref().unwrap().len();
    assert_eq!(h.fake(a).in_flight.as_ref().unwrap().parts(), 2);
    // A batch arriving while the write is in flight waits for it (one write per connection).
    h.deliver(room("r1"), &[(1, 100)]);
    assert_eq!(h.fake(a).writes, 1);
    h.complete(a, 50);
    // The rest, starting mid-frame, plus the new batch, in one write.
    let queued = h.core.conns[a.key()].out.queued_bytes();
    let next = h.fake(a).in_flight.as_ref().unwrap();
    assert_eq!(next.parts(), 3);
    assert_eq!(next.len(), queued, "everything not yet written");
    assert!(queued > offered - 50);
    h.complete_all(a);
    assert!(h.fake(a).in_flight.is_none());
    assert_eq!(batch_priorities(&h.read(a)), vec![3, 2, 1]);
    // The buffers came back and were dropped; none is out.
    assert_eq!(h.core.write_bufs().1, 0);
}

#[test]
fn a_write_error_closes_the_connection() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Fail);
    h.deliver(room("r1"), &[(3, 10)]);
    assert!(h.closed(a));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::WriteError), 1);
    assert_eq!(h.stats().dropped_closed[3], 1, "the batch it still held");
    assert_eq!(h.open.load(Ordering::Relaxed), 0);
}

#[test]
fn a_close_while_a_write_is_in_flight_waits_for_the_completion_before_release() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Async);
    h.deliver(room("r1"), &[(3, 100)]);
    assert!(h.fake(a).in_flight.is_some());
    // The peer goes away while the write is in flight.
    h.core.on_read_closed(a, None);
    h.round();
    assert!(h.closed(a), "the driver is asked to stop");
    // Not released: the driver still holds the write; the slot stays taken.
    h.advance(Duration::from_secs(5));
    assert_eq!(h.stats().connections, 1);
    assert_eq!(h.open.load(Ordering::Relaxed), 1);
    assert_eq!(h.fake(a).writes, 1, "no write after the close");
    // The kernel finishes (cancelled): released, counted, the slot and the buffer freed.
    h.complete(a, 0);
    h.round();
    assert_eq!(h.stats().connections, 0);
    assert_eq!(h.stats().close_count(CloseReason::Peer), 1);
    assert_eq!(h.open.load(Ordering::Relaxed), 0);
    assert_eq!(
        h.core.write_bufs().1,
        0,
        "the driver's dropped buffer is not counted out"
    );
    assert!(h.released(a));
    // A batch for the room now reaches nobody.
    let frames = h.stats().frames_queued;
    h.deliver(room("r1"), &[(3, 10)]);
    assert_eq!(h.stats().frames_queued, frames);
}

#[test]
fn a_batch_delivered_to_a_closing_connection_is_not_queued() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    // Alice's reader stops, and she sends a frame over the size limit: closed with 1009.
    h.set_mode(a, Mode::Sync { room: 0 });
    h.send_raw(a, &[0xff, 0xff, 0xff, 0xff]);
    let queued_before = h.core.conns[a.key()].out.queued_bytes();
    assert!(matches!(
        h.core.conns[a.key()].life,
        Lifecycle::Flushing { .. }
    ));
    let frames = h.stats().frames_queued;
    h.deliver(room("r1"), &[(0, 10)]);
    h.deliver(Target::Broadcast, &[(0, 10)]);
    assert_eq!(
        h.core.conns[a.key()].out.queued_bytes(),
        queued_before,
        "nothing is queued on a closing connection"
    );
    assert_eq!(h.stats().frames_queued, frames + 2, "bob got both");
    assert_eq!(batch_priorities(&h.read(b)), vec![0, 0]);
    // Alice's reader resumes: the error reply and close frame, and no batch.
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert!(batch_priorities(&got).is_empty(), "{got:?}");
    assert!(got.iter().any(|m| close_code(m).is_some()));
    assert!(h.closed(a));
}

// ---- write progress: what lets the hub close a channel's next window --------------------------

#[test]
fn a_batch_is_reported_written_once_when_90_percent_of_its_members_took_it() {
    let mut h = Harness::new();
    let members: Vec<ConnId> = (0..10).map(|i| h.member(&format!("u{i}"), "r1")).collect();
    for &m in &members {
        h.set_mode(m, Mode::Async);
    }
    h.take_written();
    h.deliver_ticket(room("r1"), &[(3, 100), (2, 100)], 7);
    // A write that stops inside the batch does not count.
    h.complete(members[0], 120);
    for &m in &members[1..9] {
        h.complete_all(m);
    }
    assert!(h.take_written().is_empty(), "8 of 10 written");
    h.complete_all(members[0]);
    assert_eq!(h.take_written(), vec![7], "9 of 10");
    assert!(h.hub_wakes > 0);
    h.complete_all(members[9]);
    assert!(h.take_written().is_empty(), "reported once");
}

#[test]
fn members_shed_closed_or_gone_do_not_hold_a_batch_back() {
    let mut h = bounded(150, 100_000);
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    let c = h.member("carol", "r1");
    // Alice cannot take anything; Bob's write never completes; Carol reads.
    h.set_mode(a, Mode::Sync { room: 0 });
    h.set_mode(b, Mode::Async);
    h.take_written();
    h.deliver_ticket(room("r1"), &[(3, 200)], 1);
    assert!(h.take_written().is_empty(), "1 of 3 written");
    // A second batch finds Alice over her soft bound (both batches are shed for her) and Bob
    // with batch 1 pinned by his write in flight (batch 2 is shed for him).
    h.deliver_ticket(room("r1"), &[(3, 200)], 2);
    assert_eq!(h.stats().dropped_queue[3], 3);
    assert_eq!(
        h.take_written(),
        vec![2],
        "batch 2: written or shed for all three"
    );
    // Bob goes away with batch 1 in flight: once the driver releases him, he is done with it.
    h.core.on_read_closed(b, None);
    h.round();
    assert!(h.take_written().is_empty(), "still in flight");
    h.complete(b, 0);
    assert!(h.released(b));
    assert_eq!(h.take_written(), vec![1]);
    assert_eq!(batch_priorities(&h.read(c)), vec![3, 3]);
    // A batch for a room with no member here is written at once.
    h.deliver_ticket(room("nobody-here"), &[(3, 10)], 3);
    assert_eq!(h.take_written(), vec![3]);
}

#[test]
fn a_backlogged_connection_writes_every_queued_batch_in_one_vectored_call() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Async);
    h.deliver_ticket(room("r1"), &[(3, 50)], 1);
    // Eight more batches while the first write is in flight: queued, no write each.
    for ticket in 2..10 {
        h.deliver_ticket(room("r1"), &[(3, 50)], ticket);
    }
    assert_eq!(h.fake(a).writes, 1);
    h.complete_all(a);
    assert_eq!(h.take_written(), vec![1]);
    let next = h.fake(a).in_flight.as_ref().expect("the backlog's write");
    assert_eq!(next.parts(), 8, "one iovec per queued frame, one call");
    assert_eq!(h.fake(a).writes, 2);
    h.complete_all(a);
    assert_eq!(h.take_written(), (2..10).collect::<Vec<_>>());
}

// ---- queue bounds and shedding ----------------------------------------------------------------

fn bounded(soft: usize, hard: usize) -> Harness {
    Harness::with(EdgeConfig {
        queue_soft_bytes: soft,
        queue_hard_bytes: hard,
        ..config()
    })
}

#[test]
fn a_queue_within_its_soft_bound_takes_a_batch_whole_however_big() {
    let mut h = bounded(1_000, 2_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    h.deliver(room("r1"), &[(3, 1_500), (3, 1_500), (3, 1_500)]);
    assert_eq!(h.stats().dropped_queue, [0; 4]);
    assert!(!h.closed(a));
    h.drain_socket(a, usize::MAX / 2);
    assert_eq!(batch_priorities(&h.read(a)), vec![3, 3, 3]);
}

#[test]
fn over_the_soft_bound_the_lowest_priority_goes_first_never_p0_or_replies() {
    let mut h = bounded(600, 100_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    // A ping's reply waits in the queue with the batches.
    h.send(a, ClientOp::Ping { seq: 9 });
    h.deliver(room("r1"), &[(0, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(1, 200)]);
    h.deliver(room("r1"), &[(2, 200)]); // over 600 waiting: shed from here on
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(0, 200)]);
    let dropped = h.stats().dropped_queue;
    assert_eq!(dropped[0], 0, "priority 0 is never shed");
    assert!(
        dropped[3] >= 1,
        "the lowest priority goes first: {dropped:?}"
    );
    assert!(!h.closed(a));
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert_eq!(got[0], reply_ok(9), "the reply is never shed");
    let priorities = batch_priorities(&got);
    assert_eq!(
        priorities.iter().filter(|&&p| p == 0).count(),
        2,
        "{priorities:?}"
    );
    assert_eq!(priorities.first(), Some(&0));
    assert_eq!(priorities.last(), Some(&0));
    let delivered: u64 = priorities.len() as u64;
    assert_eq!(delivered + dropped.iter().sum::<u64>(), 6);
}

#[test]
fn a_partly_written_frame_is_never_shed() {
    let mut h = bounded(300, 100_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 50 });
    h.deliver(room("r1"), &[(3, 200)]); // 50 bytes of it went out
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    assert!(h.stats().dropped_queue[3] >= 1);
    // The first frame arrives whole, whatever was shed after it.
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert!(!batch_priorities(&got).is_empty());
    assert!(matches!(&got[0], ServerMsg::Batch { msgs, .. } if msgs[0].seq == 1));
}

#[test]
fn frames_a_write_in_flight_carries_are_never_shed() {
    let mut h = bounded(300, 100_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Async);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    assert!(h.stats().dropped_queue[3] >= 1);
    h.complete_all(a);
    h.complete_all(a);
    let got = h.read(a);
    assert!(matches!(&got[0], ServerMsg::Batch { .. }));
    assert_eq!(h.core.conns[a.key()].out.queued_bytes(), 0);
}

#[test]
fn a_queue_over_the_hard_bound_is_closed_slow_after_what_it_holds() {
    let mut h = bounded(500, 1_000);
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    // Priority 0 cannot be shed: the backlog grows past the hard bound.
    for _ in 0..8 {
        h.deliver(room("r1"), &[(0, 200)]);
    }
    assert_eq!(h.stats().dropped_queue[0], 0);
    assert!(!h.closed(a), "the close frame is flushed first");
    assert!(matches!(
        h.core.conns[a.key()].life,
        Lifecycle::Flushing { .. }
    ));
    // Bob did not notice.
    assert_eq!(batch_priorities(&h.read(b)).len(), 8);
    // Alice reads again: what was queued, then 4008, then the end.
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert_eq!(close_code(got.last().unwrap()), Some(session::CLOSE_SLOW));
    assert!(h.closed(a));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Slow), 1);
}

#[test]
fn a_slow_reader_that_never_resumes_is_cut_after_the_close_grace() {
    let mut h = bounded(500, 1_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    for _ in 0..8 {
        h.deliver(room("r1"), &[(0, 200)]);
    }
    assert!(!h.closed(a));
    h.advance_in_steps(Duration::from_millis(1_900), Duration::from_millis(100));
    assert!(!h.closed(a), "within the grace");
    h.advance_in_steps(Duration::from_millis(1_200), Duration::from_millis(100));
    assert!(h.closed(a), "cut after the grace");
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Slow), 1);
    // Six batches were queued before it was found slow (then it left the room).
    assert_eq!(
        h.stats().dropped_closed[0],
        6,
        "what it still held counts as dropped"
    );
}

// ---- timeouts --------------------------------------------------------------------------------

fn stall(ms: u64) -> Harness {
    Harness::with(EdgeConfig {
        write_stall_timeout_ms: ms,
        ..config()
    })
}

#[test]
fn a_stalled_reader_is_closed_4008_after_the_write_stall_timeout() {
    let mut h = stall(1_000);
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    let stalled_at = h.now;
    h.deliver(room("r1"), &[(3, 100)]);
    // The sweep runs every quarter of the timeout: still open at the timeout…
    h.advance_in_steps(Duration::from_millis(1_000), Duration::from_millis(50));
    assert!(matches!(h.core.conns[a.key()].life, Lifecycle::Open));
    // …closed within one sweep after it.
    h.advance_in_steps(Duration::from_millis(250), Duration::from_millis(50));
    assert!(matches!(
        h.core.conns[a.key()].life,
        Lifecycle::Flushing { .. }
    ));
    assert!(h.now - stalled_at <= Duration::from_millis(1_250));
    assert!(
        matches!(h.core.conns[b.key()].life, Lifecycle::Open),
        "bob keeps up"
    );
    // Nothing more is queued to it; when it reads, the 4008 comes after its backlog.
    h.deliver(room("r1"), &[(0, 100)]);
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert_eq!(batch_priorities(&got), vec![3]);
    assert_eq!(close_code(got.last().unwrap()), Some(session::CLOSE_SLOW));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Slow), 1);
}

#[test]
fn a_reader_that_keeps_taking_bytes_is_not_stalled() {
    let mut h = stall(1_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    h.deliver(room("r1"), &[(3, 2_000)]);
    // The socket takes a little every 500 ms: the stall clock restarts each time.
    for _ in 0..10 {
        h.advance_in_steps(Duration::from_millis(500), Duration::from_millis(50));
        h.drain_socket(a, 100);
        h.set_mode(a, Mode::Sync { room: 0 });
    }
    assert!(matches!(h.core.conns[a.key()].life, Lifecycle::Open));
    // An empty queue is never stalled, however long.
    h.drain_socket(a, usize::MAX / 2);
    assert_eq!(h.core.conns[a.key()].out.queued_bytes(), 0);
    h.send(a, ClientOp::Ping { seq: 5 });
    h.advance_in_steps(Duration::from_secs(5), Duration::from_millis(250));
    assert!(matches!(h.core.conns[a.key()].life, Lifecycle::Open));
}

#[test]
fn a_silent_connection_is_closed_4000_while_pings_keep_another_open() {
    let mut h = Harness::with(EdgeConfig {
        heartbeat_timeout_ms: 800,
        ..config()
    });
    let silent = h.member("silent", "r1");
    let pinger = h.member("pinger", "r1");
    for seq in 0..12 {
        h.advance_in_steps(Duration::from_millis(200), Duration::from_millis(50));
        h.send(pinger, ClientOp::Ping { seq: 10 + seq });
    }
    let got = h.read(silent);
    assert_eq!(
        close_code(got.last().unwrap()),
        Some(session::CLOSE_HEARTBEAT)
    );
    assert!(h.closed(silent));
    assert!(!h.closed(pinger));
    assert_eq!(h.read(pinger).len(), 12, "every ping answered");
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Heartbeat), 1);
}

#[test]
fn websocket_ping_frames_count_as_heartbeats() {
    let mut h = Harness::with(EdgeConfig {
        heartbeat_timeout_ms: 800,
        ..config()
    });
    let unlimited = Mode::Sync { room: usize::MAX };
    let ws = h.connect_over(Transport::WebSocket, unlimited);
    let request = handshake::client_request("edge", "/ws", "dGhlIHNhbXBsZSBub25jZQ==");
    h.send_raw(ws, &request);
    let auth = ClientOp::Auth {
        seq: 1,
        token: token("alice", EPOCH_SECS + 3600),
        since: None,
    };
    h.send_raw(ws, &encode_op(WireFormat::WsBinary, &auth, [1, 2, 3, 4]));
    h.confirm_all();
    // A masked, empty WebSocket ping every 200 ms: answered with a pong, and kept open.
    const PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];
    for _ in 0..12 {
        h.advance_in_steps(Duration::from_millis(200), Duration::from_millis(50));
        h.send_raw(ws, &PING);
    }
    assert!(!h.closed(ws));
    let wire = std::mem::take(&mut h.fake(ws).wire);
    let pongs = wire.windows(2).filter(|w| w == &[0x8a, 0x00]).count();
    assert!(pongs >= 12, "{pongs} pongs");
    // Silent from now on: closed after the timeout.
    h.advance_in_steps(Duration::from_millis(1_200), Duration::from_millis(50));
    assert!(h.closed(ws));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Heartbeat), 1);
}

#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed_4001() {
    let mut h = Harness::with(EdgeConfig {
        auth_timeout_ms: 1_000,
        ..config()
    });
    let idle = h.connect();
    h.advance_in_steps(Duration::from_millis(1_000), Duration::from_millis(100));
    assert!(!h.closed(idle));
    h.advance_in_steps(Duration::from_millis(300), Duration::from_millis(100));
    assert_eq!(
        h.read(idle)
            .iter()
            .filter_map(close_code)
            .collect::<Vec<_>>(),
        vec![session::CLOSE_UNAUTHENTICATED]
    );
    assert!(h.closed(idle));
    assert_eq!(h.stats().auth_failures_by[AuthFailure::Timeout as usize], 1);
}

#[test]
fn timers_after_a_close_do_nothing() {
    let mut h = Harness::with(EdgeConfig {
        heartbeat_timeout_ms: 500,
        auth_timeout_ms: 500,
        write_stall_timeout_ms: 500,
        join_confirm_timeout_ms: 500,
        ..config()
    });
    let a = h.member_unconfirmed("alice");
    h.set_mode(a, Mode::Async);
    h.join(a, "r1", 2); // waits for a confirmation...
    h.send(a, ClientOp::Ping { seq: 3 }); // ...and a ping reply is in flight
    let unauthed = h.connect();
    h.core.on_read_closed(a, None);
    h.core.on_read_closed(unauthed, None);
    h.round();
    assert!(h.closed(a) && h.closed(unauthed));
    h.round(); // the idle one is released
    let stats = h.stats().clone();
    assert_eq!(stats.close_count(CloseReason::Peer), 1);
    // Every deadline passes: the heartbeat, auth, stall and confirmation timeouts, the grace.
    h.advance_in_steps(Duration::from_secs(5), Duration::from_millis(100));
    let after = h.stats();
    assert_eq!(after.closed, stats.closed);
    assert_eq!(after.confirm_timeouts, 0);
    assert_eq!(after.auth_failures_by, stats.auth_failures_by);
    assert_eq!(h.fake(a).writes, 1, "nothing more written");
    assert!(h.read(a).is_empty());
    // The confirmation arriving now answers nobody.
    h.confirm_all();
    // The kernel finishes the write; the connection goes, counted once.
    h.complete(a, 0);
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Peer), 2);
    assert_eq!(h.stats().connections, 0);
}

// ---- the hub's inbox -------------------------------------------------------------------------

#[test]
fn a_full_hub_inbox_keeps_messages_in_order_and_retries() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.hub.clear();
    h.hub_room = Some(0);
    h.join(a, "r1", 2);
    assert!(h.hub.is_empty(), "nothing fits");
    // The core asks to be woken soon to offer them again.
    assert!(h.core.poll_timeout() <= h.now + HUB_RETRY);
    // Still full at the retry: still kept, nothing lost.
    h.advance(HUB_RETRY);
    assert!(h.hub.is_empty());
    // Room for one: the Presence goes first, the Confirm waits its turn.
    h.hub_room = Some(1);
    h.advance(HUB_RETRY);
    assert!(matches!(h.hub.as_slice(), [ToHub::Presence { .. }]));
    h.hub_room = None;
    h.advance(HUB_RETRY);
    assert!(matches!(
        h.hub.as_slice(),
        [ToHub::Presence { .. }, ToHub::Confirm { .. }]
    ));
    h.confirm_all();
    assert_eq!(h.read(a), vec![reply_ok(2)]);
}

#[test]
fn a_confirmation_request_stuck_behind_a_full_hub_inbox_times_out() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.hub_room = Some(0);
    h.join(a, "r1", 2);
    h.advance_in_steps(Duration::from_millis(6_100), Duration::from_millis(100));
    let got = h.read(a);
    assert_eq!(reply_err(&got[0]), Some((2, "unavailable")));
    // When the hub catches up, its late answer to the old request is ignored.
    h.hub_room = None;
    h.advance(HUB_RETRY);
    h.confirm_all();
    assert!(h.read(a).is_empty());
}

#[test]
fn reports_wait_for_a_full_hub_inbox_as_one_carrying_every_change() {
    let mut h = Harness::new();
    h.hub_room = Some(0);
    let a = h.connect();
    h.auth(a, "alice", 1);
    // Three report intervals with the inbox full: one report waits, not three.
    h.advance_in_steps(Duration::from_millis(1_000), Duration::from_millis(100));
    let _b = h.connect();
    h.auth(_b, "bob", 1);
    h.advance_in_steps(Duration::from_millis(2_000), Duration::from_millis(100));
    let reports = h
        .core
        .outbox
        .iter()
        .filter(|m| matches!(m, ToHub::Report { .. }))
        .count();
    assert_eq!(reports, 1);
    h.hub_room = None;
    h.advance(HUB_RETRY);
    let mut users_reported = HashMap::new();
    for m in &h.hub {
        if let ToHub::Report { users, stats, .. } = m {
            users_reported.extend(users.clone());
            assert_eq!(stats.accepted, 2, "the latest counters");
        }
    }
    assert_eq!(users_reported.get("alice"), Some(&1));
    assert_eq!(users_reported.get("bob"), Some(&1));
}

#[test]
fn presence_changes_wake_the_hub_once_per_round() {
    let mut h = Harness::new();
    let wakes = h.hub_wakes;
    let a = h.connect();
    // Auth: the user's presence, the broadcast's and a confirmation request, one wake-up.
    h.auth(a, "alice", 1);
    assert_eq!(h.hub_wakes, wakes + 1);
    // A report alone does not wake the hub.
    h.confirm_all();
    let wakes = h.hub_wakes;
    h.advance(Duration::from_millis(1_000));
    assert!(h.hub.iter().any(|m| matches!(m, ToHub::Report { .. })));
    assert_eq!(h.hub_wakes, wakes);
}

// ---- the write buffers -----------------------------------------------------------------------

#[test]
fn write_buffers_are_reused_while_busy_and_given_back_when_idle() {
    let mut h = Harness::new();
    let members: Vec<ConnId> = (0..50)
        .map(|i| {
            let id = h.member(&format!("u{i}"), "r1");
            h.set_mode(id, Mode::Async);
            id
        })
        .collect();
    // A fan-out every 500 ms for 10 s: 50 writes in flight at once each time.
    let mut mapped = None;
    for _ in 0..20 {
        h.deliver(room("r1"), &[(3, 100)]);
        let (slots, out) = h.core.write_bufs();
        assert_eq!(out, 50);
        assert_eq!(
            *mapped.get_or_insert(slots),
            slots,
            "no more memory while busy"
        );
        for &id in &members {
            h.complete_all(id);
        }
        assert_eq!(h.core.write_bufs(), (slots, 0));
        h.advance_in_steps(Duration::from_millis(500), Duration::from_millis(100));
        assert_eq!(h.core.write_bufs().0, slots, "kept while in use");
    }
    // Quiet: a few trim periods later nothing is mapped any more.
    h.advance_in_steps(POOL_TRIM_EVERY * 4, Duration::from_millis(500));
    assert_eq!(h.core.write_bufs(), (0, 0));
    // A readiness driver needs one buffer at a time however many members.
    for &id in &members {
        h.set_mode(id, Mode::Sync { room: usize::MAX });
    }
    h.deliver(room("r1"), &[(3, 100)]);
    assert_eq!(h.core.write_bufs().1, 0);
}

// ---- admission, shutdown, queries ------------------------------------------------------------

#[test]
fn a_full_edge_refuses_with_a_notice_and_a_failed_registration_is_undone() {
    let mut h = Harness::with(EdgeConfig {
        max_connections: 1,
        ..config()
    });
    let a = h.connect();
    match h.core.admit(h.now, Transport::Tcp) {
        Admission::Refuse(notice) => {
            assert_eq!(
                decode_all(&notice)
                    .iter()
                    .filter_map(close_code)
                    .collect::<Vec<_>>(),
                vec![session::CLOSE_FULL]
            );
        }
        other => panic!("admitted over the limit: {other:?}"),
    }
    assert!(matches!(
        h.core.admit(h.now, Transport::WebSocket),
        Admission::Refuse(_)
    ));
    assert_eq!(h.stats().refused_full, 2);
    h.core.registration_failed(a);
    assert_eq!(h.open.load(Ordering::Relaxed), 0);
    assert_eq!((h.stats().accepted, h.stats().connections), (0, 0));
    assert!(matches!(
        h.core.admit(h.now, Transport::Tcp),
        Admission::Admit(_)
    ));
}

#[test]
fn shutdown_closes_every_connection_with_1001_and_finishes() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    let stuck = h.member("stuck", "r1");
    h.set_mode(stuck, Mode::Sync { room: 0 });
    h.core.on_message(h.now, ToWorker::Shutdown);
    h.round();
    assert_eq!(
        h.read(a).iter().filter_map(close_code).collect::<Vec<_>>(),
        vec![session::CLOSE_SHUTDOWN]
    );
    assert!(h.closed(a));
    assert!(matches!(
        h.core.admit(h.now, Transport::Tcp),
        Admission::Refuse(_)
    ));
    assert!(!h.core.is_finished(h.now), "one connection still flushing");
    h.advance_in_steps(CLOSE_FLUSH_GRACE, Duration::from_millis(100));
    assert!(h.core.is_finished(h.now), "the grace is over");
}

#[test]
fn a_closed_hub_inbox_shuts_the_worker_down() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.core.on_inbox_closed(h.now);
    h.round();
    assert!(h.closed(a));
    h.round();
    assert!(h.core.is_finished(h.now));
}

#[test]
fn a_user_query_lists_that_users_connections_with_their_peers_and_rooms() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.join(a, "r2", 3);
    h.confirm_all();
    let _other = h.member("bob", "r1");
    h.core.on_message(
        h.now,
        ToWorker::QueryUser {
            request: 7,
            user: "alice".into(),
        },
    );
    h.round();
    let answer = h.hub.iter().find_map(|m| match m {
        ToHub::UserConns { request: 7, conns } => Some(conns.clone()),
        _ => None,
    });
    let conns = answer.expect("answered");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer, format!("10.0.0.{}:4000", a.key()));
    let mut rooms = conns[0].rooms.clone();
    rooms.sort();
    assert_eq!(rooms, vec!["r1", "r2"]);
}

#[test]
fn an_expired_token_is_refused_with_4001() {
    let mut h = Harness::new();
    let a = h.connect();
    // Expired a second ago by the wall clock the core was given.
    h.send(
        a,
        ClientOp::Auth {
            seq: 1,
            token: token("alice", EPOCH_SECS - 1),
            since: None,
        },
    );
    let got = h.read(a);
    assert_eq!(reply_err(&got[0]), Some((1, "token_expired")));
    assert_eq!(close_code(&got[1]), Some(session::CLOSE_UNAUTHENTICATED));
    // Valid until the wall clock passes `exp`, which the core follows through its timers.
    let b = h.connect();
    h.advance_in_steps(Duration::from_secs(5), Duration::from_millis(500));
    h.send(
        b,
        ClientOp::Auth {
            seq: 1,
            token: token("bob", EPOCH_SECS + 4),
            since: None,
        },
    );
    assert_eq!(reply_err(&h.read(b)[0]), Some((1, "token_expired")));
}

#[test]
fn an_idle_connection_stays_small() {
    // Every viewer costs one slab entry; the issue's budget is 2 KiB of user memory per idle
    // connection, all included. Keep the fixed part far below it.
    let size = std::mem::size_of::<slab::Slab<Conn>>() + std::mem::size_of::<Conn>();
    println!("Conn = {} bytes", std::mem::size_of::<Conn>());
    assert!(size <= 320, "Conn grew to {size} bytes");
}

// ---- where the stream stands, recovery and history (PROTOCOL.md §5) -------------------------

fn position(epoch: &str, last_seq: u64) -> StreamPosition {
    StreamPosition {
        epoch: epoch.into(),
        last_seq,
    }
}

/// A successful reply's `(seq, epoch, last_seq, recovered)`.
type ReplyAt = (u64, String, u64, Option<Result<(), RecoveryFailure>>);

/// The reply's `(seq, epoch, last_seq, recovered)`, for a successful reply.
fn reply_position(msg: &ServerMsg) -> Option<ReplyAt> {
    match msg {
        ServerMsg::Reply {
            seq,
            result: Ok(()),
            details,
        } => Some((
            *seq,
            details.epoch.clone()?,
            details.last_seq?,
            details.recovered,
        )),
        _ => None,
    }
}

fn batch_seqs(msgs: &[ServerMsg]) -> Vec<u64> {
    msgs.iter()
        .flat_map(|m| match m {
            ServerMsg::Batch { msgs, .. } => msgs.iter().map(|m| m.seq).collect(),
            _ => Vec::new(),
        })
        .collect()
}

impl Harness {
    /// Takes the `Recover` requests the hub received: (token, kind, name, since).
    fn take_recovers(&mut self) -> Vec<(u64, ChannelKind, String, Since)> {
        let mut out = Vec::new();
        self.hub.retain(|m| match m {
            ToHub::Recover(r) => {
                out.push((r.token, r.kind, r.name.to_string(), r.since.clone()));
                false
            }
            _ => true,
        });
        out
    }

    fn join_since(&mut self, id: ConnId, room: &str, seq: u64, since: (&str, u64)) {
        self.send(
            id,
            ClientOp::Join {
                seq,
                room: room.into(),
                since: Some(Since {
                    epoch: since.0.into(),
                    seq: since.1,
                }),
            },
        );
    }

    /// The replay the hub would send: one frame per message, in the connection's format (TCP).
    fn recovered(&mut self, token: u64, conn: ConnId, at: StreamPosition, seqs: &[u64]) {
        let frames = seqs
            .iter()
            .map(|&seq| {
                let msg = PushMessage {
                    seq,
                    priority: 2,
                    kind: "gift".into(),
                    data: Bytes::from_static(b"1"),
                    merged: 0,
                    is_final: false,
                    from: None,
                    ack: false,
                };
                encode_batch(WireFormat::Tcp, &room("r1"), &[msg])
            })
            .collect();
        self.core.on_message(
            self.now,
            ToWorker::Recovered {
                token,
                conn,
                position: at,
                result: Ok(frames),
            },
        );
        self.round();
    }
}

#[test]
fn a_join_reply_tells_where_the_stream_stands_and_batches_move_it_on() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    let b = h.member_unconfirmed("bob");
    h.join(a, "r1", 2);
    let (_, _, token) = h.take_confirms().pop().expect("a confirm request");
    h.core.on_message(
        h.now,
        ToWorker::Confirmed {
            kind: ChannelKind::Room,
            name: "r1".into(),
            token,
            position: Some(position("k3x9", 57)),
        },
    );
    h.round();
    assert_eq!(
        h.read(a)
            .iter()
            .filter_map(reply_position)
            .collect::<Vec<_>>(),
        vec![(2, "k3x9".into(), 57, None)]
    );
    // A batch up to 60 goes out; a later join here is answered at once from 60.
    let mut batch = delivery(room("r1"), &[(2, 1)], h.now, 0);
    batch.last_seq = 60;
    h.core.on_message(h.now, ToWorker::Deliver(Arc::new(batch)));
    h.round();
    h.join(b, "r1", 3);
    assert_eq!(
        h.read(b)
            .iter()
            .filter_map(reply_position)
            .collect::<Vec<_>>(),
        vec![(3, "k3x9".into(), 60, None)]
    );
    // Losing the link forgets the epoch: the next first join waits for a new confirmation.
    h.core.on_message(h.now, ToWorker::LinkLost);
    let c = h.member_unconfirmed("carol");
    h.join(c, "r1", 4);
    assert!(h.read(c).is_empty());
    assert_eq!(h.take_confirms().len(), 1);
}

#[test]
fn a_recovering_join_takes_no_batch_until_its_replay_then_replay_then_live() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join_since(a, "r1", 2, ("k3x9", 41));
    assert!(h.read(a).is_empty(), "the reply waits for the replay");
    let recovers = h.take_recovers();
    assert_eq!(recovers.len(), 1);
    let (token, kind, name, since) = recovers[0].clone();
    assert_eq!(
        (kind, name.as_str(), since.seq),
        (ChannelKind::Room, "r1", 41)
    );
    assert!(
        presences(&h.hub).contains(&(ChannelKind::Room, "r1".into(), true)),
        "the hub heard of the room first"
    );
    // A live batch while recovering: it is covered by the replay, so the connection skips it.
    h.deliver(room("r1"), &[(2, 1)]);
    assert!(h.read(a).is_empty());
    h.recovered(token, a, position("k3x9", 44), &[42, 43, 44]);
    let got = h.read(a);
    assert_eq!(
        reply_position(&got[0]),
        Some((2, "k3x9".into(), 44, Some(Ok(()))))
    );
    assert_eq!(batch_seqs(&got[1..]), vec![42, 43, 44]);
    // Live from here on.
    h.deliver(room("r1"), &[(2, 1)]);
    assert_eq!(batch_seqs(&h.read(a)), vec![1]);
    // A stale second answer changes nothing.
    h.recovered(token, a, position("k3x9", 44), &[42]);
    assert!(h.read(a).is_empty());
}

#[test]
fn a_refused_recovery_says_why_and_the_connection_is_live_at_once() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join_since(a, "r1", 2, ("old", 3));
    let (token, ..) = h.take_recovers()[0].clone();
    h.core.on_message(
        h.now,
        ToWorker::Recovered {
            token,
            conn: a,
            position: position("new", 17),
            result: Err(RecoveryFailure::EpochChanged),
        },
    );
    h.round();
    assert_eq!(
        h.read(a)
            .iter()
            .filter_map(reply_position)
            .collect::<Vec<_>>(),
        vec![(
            2,
            "new".into(),
            17,
            Some(Err(RecoveryFailure::EpochChanged))
        )]
    );
    h.deliver(room("r1"), &[(2, 1)]);
    assert_eq!(batch_seqs(&h.read(a)), vec![1]);
}

#[test]
fn a_recovery_unanswered_in_time_is_refused_unavailable_and_the_join_undone() {
    let mut h = Harness::new();
    let a = h.member_unconfirmed("alice");
    h.join_since(a, "r1", 2, ("ep", 3));
    let (token, ..) = h.take_recovers()[0].clone();
    h.hub.clear();
    h.advance_in_steps(Duration::from_millis(6000), Duration::from_millis(250));
    assert_eq!(
        h.read(a).iter().filter_map(reply_err).collect::<Vec<_>>(),
        vec![(2, "unavailable")]
    );
    assert!(presences(&h.hub).contains(&(ChannelKind::Room, "r1".into(), false)));
    // The late answer is ignored.
    h.recovered(token, a, position("ep", 3), &[]);
    assert!(h.read(a).is_empty());
}

#[test]
fn a_recovering_auth_resumes_the_user_channel() {
    let mut h = Harness::new();
    let a = h.connect();
    let token = token("alice", EPOCH_SECS + 3600);
    h.send(
        a,
        ClientOp::Auth {
            seq: 1,
            token,
            since: Some(Since {
                epoch: "u".into(),
                seq: 5,
            }),
        },
    );
    assert!(h.read(a).is_empty());
    let (t, kind, name, _) = h.take_recovers()[0].clone();
    assert_eq!((kind, name.as_str()), (ChannelKind::User, "alice"));
    h.deliver(Target::User("alice".into()), &[(1, 1)]);
    assert!(h.read(a).is_empty(), "skipped while recovering");
    h.recovered(t, a, position("u", 6), &[6]);
    let got = h.read(a);
    assert_eq!(
        reply_position(&got[0]),
        Some((1, "u".into(), 6, Some(Ok(()))))
    );
    assert_eq!(batch_seqs(&got[1..]), vec![6]);
}

#[test]
fn history_reads_need_the_room_are_bounded_per_connection_and_time_out() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    let history = |seq: u64, room: &str| ClientOp::History {
        seq,
        room: room.into(),
        since: 10,
        limit: 100,
    };
    h.send(a, history(3, "r2"));
    assert_eq!(
        h.read(a).iter().filter_map(reply_err).collect::<Vec<_>>(),
        vec![(3, "not_joined")]
    );
    for seq in 4..=8 {
        h.send(a, history(seq, "r1"));
    }
    let asked: Vec<(u64, u64)> = h
        .hub
        .iter()
        .filter_map(|m| match m {
            ToHub::History(r) => Some((r.token, r.op_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        h.read(a).iter().filter_map(reply_err).collect::<Vec<_>>(),
        vec![(8, "unavailable")],
        "at most four in flight"
    );
    // The hub's reply is passed through as it is.
    let reply = client::encode_reply(WireFormat::Tcp, 4, Ok(()));
    h.core.on_message(
        h.now,
        ToWorker::Reply {
            token: asked[0].0,
            conn: a,
            bytes: reply,
        },
    );
    h.round();
    assert_eq!(h.read(a), vec![reply_ok(4)]);
    h.advance_in_steps(Duration::from_millis(6000), Duration::from_millis(250));
    assert_eq!(
        h.read(a).iter().filter_map(reply_err).collect::<Vec<_>>(),
        vec![(5, "unavailable"), (6, "unavailable"), (7, "unavailable")]
    );
}

#[test]
fn a_member_that_stalls_stops_holding_back_the_batches_it_has_queued() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    // Alice reads; Bob's socket takes nothing: 1 of 2 is under 90 %.
    h.set_mode(b, Mode::Sync { room: 0 });
    h.take_written();
    h.deliver_ticket(room("r1"), &[(0, 100)], 1);
    assert!(h.take_written().is_empty(), "Bob has not taken batch 1");
    // Slow is not stalled: nothing changes within the stall threshold.
    h.advance_in_steps(
        Duration::from_millis(u64::from(STALLED_AFTER_MS) - 50),
        Duration::from_millis(50),
    );
    assert!(h.take_written().is_empty());
    // Past it, Bob's queued batch stops being waited for, and so do later ones queued on him
    // while he stays stalled.
    h.advance_in_steps(Duration::from_millis(400), Duration::from_millis(50));
    assert_eq!(h.take_written(), vec![1]);
    h.deliver_ticket(room("r1"), &[(0, 100)], 2);
    assert_eq!(h.take_written(), vec![2]);
    assert_eq!(batch_priorities(&h.read(a)), vec![0, 0]);
    // Once his socket takes bytes again he counts again.
    h.set_mode(b, Mode::Sync { room: 1 << 20 });
    h.drain_socket(b, 0);
    h.take_written();
    h.set_mode(b, Mode::Sync { room: 0 });
    h.deliver_ticket(room("r1"), &[(0, 100)], 3);
    assert!(
        h.take_written().is_empty(),
        "Bob is slow again, not stalled"
    );
}

// ---- rooms' online counts and distinct users (PROTOCOL.md §5) --------------------------------

impl Harness {
    /// The hub hands this worker a room's online count (encoded for raw TCP, as every client
    /// here speaks it).
    fn online(&mut self, room: &str, online: u32, users: u32) {
        let push = RoomPush {
            room: room.into(),
            online,
            users,
            encoded: [
                None,
                None,
                Some(client::encode_room_online(
                    WireFormat::Tcp,
                    room,
                    online,
                    users,
                )),
            ],
        };
        self.core
            .on_message(self.now, ToWorker::RoomOnline(vec![Arc::new(push)]));
        self.round();
    }

    fn leave(&mut self, id: ConnId, room: &str, seq: u64) {
        self.send(
            id,
            ClientOp::Leave {
                seq,
                room: room.into(),
            },
        );
    }

    /// The rooms' users in the reports the hub received since the last call, merged in order.
    fn take_room_users(&mut self) -> HashMap<String, UserSketch> {
        let mut out = HashMap::new();
        self.hub.retain(|m| match m {
            ToHub::Report { room_users, .. } => {
                out.extend(room_users.iter().map(|(r, s)| (r.to_string(), s.clone())));
                false
            }
            _ => true,
        });
        out
    }
}

fn online_count(room: &str, online: u32, users: u32) -> ServerMsg {
    ServerMsg::Room {
        room: room.into(),
        online,
        users,
    }
}

#[test]
fn an_online_count_reaches_the_members_and_a_newer_one_replaces_an_unsent_older_one() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    let b = h.member("bob", "r1");
    let c = h.member("carol", "r2");
    h.online("r1", 2, 2);
    assert_eq!(h.read(a), vec![online_count("r1", 2, 2)]);
    assert_eq!(h.read(b), vec![online_count("r1", 2, 2)]);
    assert!(h.read(c).is_empty(), "not a member of r1");

    // Bob stops reading with a chat batch waiting: newer counts do not queue behind the older.
    h.set_mode(b, Mode::Sync { room: 0 });
    h.deliver(room("r1"), &[(3, 10)]);
    h.online("r1", 3, 3);
    h.online("r1", 4, 3);
    h.online("r1", 5, 4);
    assert_eq!(h.stats().online_queued, 2 + 3 * 2);
    assert_eq!(h.stats().online_replaced, 2, "bob's unsent 3 then 4");
    h.drain_socket(b, usize::MAX / 2);
    let got = h.read(b);
    assert_eq!(batch_priorities(&got), vec![3]);
    assert_eq!(got[1..], [online_count("r1", 5, 4)], "only the latest");
    // Alice reads as it comes: every count, in order, and the batch.
    let got = h.read(a);
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[1..],
        [
            online_count("r1", 3, 3),
            online_count("r1", 4, 3),
            online_count("r1", 5, 4)
        ]
    );
}

#[test]
fn an_online_count_is_never_shed_before_chat() {
    let mut h = bounded(600, 100_000);
    let a = h.member("alice", "r1");
    h.set_mode(a, Mode::Sync { room: 0 });
    h.online("r1", 1, 1);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(3, 200)]);
    h.deliver(room("r1"), &[(2, 200)]);
    h.deliver(room("r1"), &[(3, 200)]); // over 600 waiting: shed from here on
    h.online("r1", 2, 2);
    let dropped = h.stats().dropped_queue;
    assert_eq!(
        dropped,
        [0, 0, 0, 2],
        "chat went, the gift and the count stayed"
    );
    h.drain_socket(a, usize::MAX / 2);
    let got = h.read(a);
    assert_eq!(
        got[0],
        online_count("r1", 2, 2),
        "the newer count in the older one's place, ahead of what queued after it"
    );
    assert_eq!(batch_priorities(&got), vec![2, 3]);
}

#[test]
fn a_member_gets_the_latest_count_right_after_its_join_reply() {
    let mut h = Harness::new();
    let a = h.member("alice", "r1");
    h.online("r1", 1, 1);
    h.read(a);

    // A join of a room this worker holds: answered at once, then the count.
    let b = h.member_unconfirmed("bob");
    h.join(b, "r1", 2);
    assert_eq!(h.read(b), vec![reply_ok(2), online_count("r1", 1, 1)]);

    // A join waiting for its confirmation gets a count that comes meanwhile after the reply.
    let c = h.member_unconfirmed("carol");
    h.join(c, "r2", 2);
    h.online("r2", 9, 8);
    assert!(h.read(c).is_empty(), "nothing before the reply");
    h.confirm_all();
    assert_eq!(h.read(c), vec![reply_ok(2), online_count("r2", 9, 8)]);

    // Everyone leaves r1: its count goes with it, and a later first member gets no stale one.
    h.leave(a, "r1", 3);
    h.leave(b, "r1", 3);
    let d = h.member_unconfirmed("dave");
    h.join(d, "r1", 2);
    h.confirm_all();
    assert_eq!(h.read(d), vec![reply_ok(2)]);
}

#[test]
fn reports_carry_each_changed_room_s_distinct_users() {
    let mut h = Harness::new();
    let _app = h.member("alice", "r1");
    let h5 = h.member("alice", "r1");
    let bob = h.member("bob", "r1");
    h.advance(Duration::from_secs(1));
    let users = h.take_room_users();
    let sketch = |names: &[&str]| UserSketch::from_hashes(names.iter().map(|u| user_hash(u)));
    assert_eq!(
        users.get("r1"),
        Some(&sketch(&["alice", "bob"])),
        "alice counts once"
    );
    assert_eq!(users["r1"].estimate(), 2);

    // Nothing changed: no sketch to send.
    h.advance(Duration::from_secs(1));
    assert!(h.take_room_users().is_empty());

    // Alice's H5 leaves (she is still there on the app), then Bob.
    h.leave(h5, "r1", 3);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.take_room_users()["r1"], sketch(&["alice", "bob"]));
    h.leave(bob, "r1", 3);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.take_room_users()["r1"], sketch(&["alice"]));
}

#[test]
fn a_join_that_brings_a_new_wire_format_to_a_confirmed_room_waits_for_the_hub() {
    let mut h = Harness::new();
    // The room is confirmed here, with raw-TCP members only.
    let _tcp = h.member("alice", "r1");
    // A WebSocket/binary viewer joins: the hub has never been told this core needs the room in
    // that format, so the reply waits until it has (the `Confirm` goes behind the `Presence`).
    let unlimited = Mode::Sync { room: usize::MAX };
    let ws = h.connect_over(Transport::WebSocket, unlimited);
    let request = handshake::client_request("edge", "/ws", "dGhlIHNhbXBsZSBub25jZQ==");
    h.send_raw(ws, &request);
    let auth = ClientOp::Auth {
        seq: 1,
        token: token("bob", EPOCH_SECS + 3600),
        since: None,
    };
    h.send_raw(ws, &encode_op(WireFormat::WsBinary, &auth, [1, 2, 3, 4]));
    h.confirm_all();
    h.hub.clear();
    h.fake(ws).wire.clear();
    let join = ClientOp::Join {
        seq: 2,
        room: "r1".into(),
        since: None,
    };
    h.send_raw(ws, &encode_op(WireFormat::WsBinary, &join, [1, 2, 3, 4]));
    assert!(
        matches!(
            h.hub.as_slice(),
            [
                ToHub::Presence {
                    kind: ChannelKind::Room,
                    format: WireFormat::WsBinary,
                    present: true,
                    ..
                },
                ToHub::Confirm {
                    kind: ChannelKind::Room,
                    ..
                }
            ]
        ),
        "{:?}",
        h.hub
    );
    assert!(
        h.fake(ws).wire.is_empty(),
        "no reply before the hub's answer"
    );
    h.confirm_all();
    assert!(
        !h.fake(ws).wire.is_empty(),
        "the join reply comes with the hub's answer"
    );
}

#[path = "send_tests.rs"]
mod send;

// ---- replies during a fan-out -------------------------------------------------------------------

#[test]
fn a_reply_queued_in_the_middle_of_a_fan_out_is_written_before_the_rest_of_it() {
    let mut h = Harness::new();
    let members: Vec<ConnId> = (0..8).map(|i| h.member(&format!("u{i}"), "r1")).collect();
    let batch = delivery(room("r1"), &[(3, 50)], h.now, 1);
    h.core.on_message(h.now, ToWorker::Deliver(Arc::new(batch)));
    // The loop has written the first two members when it reads a ping from the last one.
    let mut written = Vec::new();
    for _ in 0..2 {
        let Some(Action::Write { conn, buf }) = h.core.poll_action() else {
            panic!("a fan-out write");
        };
        let status = h.write(conn, buf);
        h.core.on_write_status(h.now, conn, status);
        written.push(conn);
    }
    let last = members[7];
    assert!(!written.contains(&last));
    let mut ping = encode_op(WireFormat::Tcp, &ClientOp::Ping { seq: 9 }, [0; 4]).to_vec();
    h.core.on_data(h.now, last, &mut ping);
    // Its pong goes next, with the batch it was due, not after the five members left.
    let Some(Action::Write { conn, buf }) = h.core.poll_action() else {
        panic!("the pong's write");
    };
    assert_eq!(conn, last);
    let status = h.write(conn, buf);
    h.core.on_write_status(h.now, conn, status);
    let got = h.read(last);
    assert!(got.contains(&reply_ok(9)), "{got:?}");
    assert_eq!(batch_priorities(&got), [3], "{got:?}");
    // The fan-out then goes on; every member gets the batch exactly once.
    h.round();
    for id in members {
        let got = h.read(id);
        if id == last {
            assert!(got.is_empty(), "{got:?}");
        } else {
            assert_eq!(batch_priorities(&got), [3], "{id:?}: {got:?}");
        }
    }
}

#[test]
fn a_reply_behind_a_fan_out_write_in_flight_goes_out_when_it_completes_not_after_the_fan_out() {
    // A completion driver (io_uring) has each fan-out write in flight until the next poll: a
    // reply for such a member must follow as soon as that write completes.
    let mut h = Harness::new();
    let members: Vec<ConnId> = (0..8).map(|i| h.member(&format!("u{i}"), "r1")).collect();
    for &id in &members {
        h.set_mode(id, Mode::Async);
    }
    let batch = delivery(room("r1"), &[(3, 50)], h.now, 1);
    h.core.on_message(h.now, ToWorker::Deliver(Arc::new(batch)));
    let Some(Action::Write { conn: first, buf }) = h.core.poll_action() else {
        panic!("a fan-out write");
    };
    let status = h.write(first, buf);
    h.core.on_write_status(h.now, first, status);
    let mut ping = encode_op(WireFormat::Tcp, &ClientOp::Ping { seq: 9 }, [0; 4]).to_vec();
    h.core.on_data(h.now, first, &mut ping);
    // Its write is in flight: the fan-out goes on meanwhile.
    let Some(Action::Write { conn, buf }) = h.core.poll_action() else {
        panic!("the next member's write");
    };
    assert_ne!(conn, first);
    let status = h.write(conn, buf);
    h.core.on_write_status(h.now, conn, status);
    // The first member's write completes: its pong is the next write, ahead of six members.
    let done = h.fake(first).in_flight.take().expect("in flight");
    let n = done.len();
    h.fake(first).wire.extend_from_slice(&done.to_vec());
    h.core.on_write_done(h.now, first, Ok(n), done);
    let Some(Action::Write { conn, buf }) = h.core.poll_action() else {
        panic!("the pong's write");
    };
    assert_eq!(conn, first, "the pong goes before the rest of the fan-out");
    let status = h.write(conn, buf);
    h.core.on_write_status(h.now, conn, status);
    h.complete_all(first);
    let got = h.read(first);
    assert_eq!(batch_priorities(&got), [3], "{got:?}");
    assert!(got.contains(&reply_ok(9)), "{got:?}");
    // Everyone else still gets the batch once.
    loop {
        let pending: Vec<ConnId> = members
            .iter()
            .copied()
            .filter(|&id| h.fake(id).in_flight.is_some())
            .collect();
        if pending.is_empty() {
            break;
        }
        for id in pending {
            h.complete_all(id);
        }
    }
    for &id in &members[1..] {
        let got = h.read(id);
        assert_eq!(batch_priorities(&got), [3], "{id:?}: {got:?}");
    }
}

#[test]
fn a_send_read_in_the_middle_of_a_fan_out_goes_to_the_hub_before_the_rest_of_it() {
    let mut h = Harness::new();
    let members: Vec<ConnId> = (0..4).map(|i| h.member(&format!("u{i}"), "r1")).collect();
    let batch = delivery(room("r1"), &[(3, 50)], h.now, 1);
    h.core.on_message(h.now, ToWorker::Deliver(Arc::new(batch)));
    let Some(Action::Write { conn, buf }) = h.core.poll_action() else {
        panic!("a fan-out write");
    };
    let status = h.write(conn, buf);
    h.core.on_write_status(h.now, conn, status);
    let send = ClientOp::Send {
        seq: 5,
        room: "r1".into(),
        kind: "chat".into(),
        data: bytes::Bytes::from_static(br#"{"text":"666"}"#),
    };
    let mut bytes = encode_op(WireFormat::Tcp, &send, [0; 4]).to_vec();
    h.core.on_data(h.now, members[3], &mut bytes);
    assert!(
        matches!(h.core.poll_action(), Some(Action::Send(s)) if s.conn == members[3]),
        "the send is handed on first"
    );
}
