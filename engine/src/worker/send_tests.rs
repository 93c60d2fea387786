//! Upstream on the worker core, in memory with explicit time (PROTOCOL.md §5 "Upstream"): the
//! checks a `send` passes in order before it leaves the edge, the connection's token bucket, the
//! flood close, the answers the hub brings back, the timeout, and `ack`s.

use super::*;
use crate::fanout::SendOutcome;
use roomcast_proto::link::{SendOutcome as LinkOutcome, SendRefusal};

fn chat(seq: u64, room: &str, data: &'static [u8]) -> ClientOp {
    ClientOp::Send {
        seq,
        room: room.into(),
        kind: "chat".into(),
        data: Bytes::from_static(data),
    }
}

fn muted_token(user: &str) -> String {
    mint(
        DEV_JWT_SECRET.as_bytes(),
        &Claims {
            sub: user.into(),
            exp: EPOCH_SECS + 3600,
            rooms: None,
            send: Some(false),
        },
    )
}

impl Harness {
    /// The sends that reached the hub, taken.
    fn take_sends(&mut self) -> Vec<SendRequest> {
        let mut out = Vec::new();
        self.hub.retain(|m| match m {
            ToHub::Send(send) => {
                out.push((**send).clone());
                false
            }
            _ => true,
        });
        out
    }

    /// The hub's answer to `send`.
    fn answer(&mut self, send: &SendRequest, outcome: SendOutcome) {
        self.core.on_message(
            self.now,
            ToWorker::SendDone {
                token: send.token,
                conn: send.conn,
                outcome,
            },
        );
        self.round();
    }
}

/// The error code and details of the reply to op `seq` among `msgs`.
fn error_of(msgs: &[ServerMsg], seq: u64) -> (String, ReplyDetails) {
    msgs.iter()
        .find_map(|m| match m {
            ServerMsg::Reply {
                seq: s,
                result: Err((code, _)),
                details,
            } if *s == seq => Some((code.clone(), details.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error reply to {seq} in {msgs:?}"))
}

#[test]
fn a_refused_send_never_leaves_the_edge_and_the_checks_come_in_protocol_order() {
    let mut h = Harness::with(EdgeConfig {
        max_send_bytes: 16,
        ..config()
    });
    let id = h.member("u1", "r1");
    let big: &'static [u8] = br#"{"text":"0123456789"}"#;
    // Each op breaks one check more than the next, so only the order gives these codes.
    h.send(id, chat(3, "r2", big)); // not joined (and too big)
    h.send(id, chat(4, "r1", big)); // too big
    h.send(id, chat(5, "r1", b"{nope")); // not JSON
    h.send(
        id,
        ClientOp::Send {
            seq: 6,
            room: "r1".into(),
            kind: "gift".into(),
            data: Bytes::from_static(b"{}"),
        },
    );
    let replies = h.read(id);
    let codes: Vec<String> = (3..=6).map(|seq| error_of(&replies, seq).0).collect();
    assert_eq!(
        codes,
        ["not_joined", "too_big", "bad_request", "bad_request"]
    );
    assert!(h.take_sends().is_empty(), "nothing reached the hub");
    // Exactly max_send_bytes is accepted.
    h.send(id, chat(7, "r1", b"{\"t\":\"12345678\"}"));
    assert_eq!(h.take_sends().len(), 1);
    let sends = h.stats().sends;
    assert_eq!(sends[SendAnswer::NotJoined as usize], 1);
    assert_eq!(sends[SendAnswer::TooBig as usize], 1);
    assert_eq!(sends[SendAnswer::BadRequest as usize], 2);
}

#[test]
fn a_token_that_may_not_send_is_forbidden_before_anything_else() {
    let mut h = Harness::new();
    let id = h.connect();
    h.send(
        id,
        ClientOp::Auth {
            seq: 1,
            token: muted_token("u1"),
            since: None,
        },
    );
    h.confirm_all();
    h.join(id, "r1", 2);
    h.confirm_all();
    h.read(id);
    h.send(id, chat(3, "r2", b"{}"));
    assert_eq!(error_of(&h.read(id), 3).0, "forbidden");
    assert!(h.take_sends().is_empty());
}

#[test]
fn a_checked_send_carries_the_sender_and_its_answer_becomes_the_reply() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    for seq in 3..=8 {
        h.send(id, chat(seq, "r1", br#"{"text":"666"}"#));
    }
    let sends = h.take_sends();
    assert_eq!(sends.len(), 5, "the burst; the 6th is rate limited here");
    assert_eq!(&*sends[0].user, "u1");
    assert_eq!(&*sends[0].room, "r1");
    assert_eq!(&*sends[0].kind, "chat");
    assert_eq!(&sends[0].data[..], br#"{"text":"666"}"#);
    assert_eq!(sends[0].peer, format!("10.0.0.{}:4000", id.key()));
    assert_eq!(error_of(&h.read(id), 8).0, "rate_limited");

    h.answer(
        &sends[0],
        SendOutcome::Link(LinkOutcome::Published { msg_seq: 41 }),
    );
    h.answer(&sends[1], SendOutcome::Link(LinkOutcome::NotBroadcast));
    h.answer(
        &sends[2],
        SendOutcome::Link(LinkOutcome::Refused {
            code: SendRefusal::Rejected,
            message: "you are muted".into(),
            platform_code: "muted".into(),
        }),
    );
    h.answer(
        &sends[3],
        SendOutcome::RateLimited {
            retry_after_ms: 250,
        },
    );
    h.answer(&sends[4], SendOutcome::Unavailable);
    let replies = h.read(id);
    let ok = |seq: u64| {
        replies
            .iter()
            .find_map(|m| match m {
                ServerMsg::Reply {
                    seq: s,
                    result: Ok(()),
                    details,
                } if *s == seq => Some(details.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no ok reply to {seq}: {replies:?}"))
    };
    assert_eq!(ok(3).msg_seq, Some(41));
    assert!(ok(4).not_broadcast && ok(4).msg_seq.is_none());
    let (code, details) = error_of(&replies, 5);
    assert_eq!(
        (code.as_str(), details.platform_code.as_deref()),
        ("rejected", Some("muted"))
    );
    let (code, details) = error_of(&replies, 6);
    assert_eq!(
        (code.as_str(), details.retry_after_ms),
        ("rate_limited", Some(250))
    );
    assert_eq!(error_of(&replies, 7).0, "unavailable");
    // A repeated answer (after a re-dial, say) is ignored.
    h.answer(
        &sends[0],
        SendOutcome::Link(LinkOutcome::Published { msg_seq: 42 }),
    );
    assert!(h.read(id).is_empty());
}

#[test]
fn the_connection_bucket_paces_sends_and_says_when_to_retry() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    for seq in 3..=7 {
        h.send(id, chat(seq, "r1", b"{}"));
    }
    h.send(id, chat(8, "r1", b"{}"));
    let (code, details) = error_of(&h.read(id), 8);
    assert_eq!(
        (code.as_str(), details.retry_after_ms),
        ("rate_limited", Some(500))
    );
    h.advance(Duration::from_millis(499));
    h.send(id, chat(9, "r1", b"{}"));
    assert_eq!(error_of(&h.read(id), 9).1.retry_after_ms, Some(1));
    h.advance(Duration::from_millis(1));
    h.send(id, chat(10, "r1", b"{}"));
    assert_eq!(
        h.take_sends().len(),
        6,
        "the burst and one more after 500 ms"
    );
}

#[test]
fn a_connection_holds_at_most_16_sends_in_flight() {
    let mut h = Harness::with(EdgeConfig {
        send_burst: 100,
        send_rate: 100.0,
        ..config()
    });
    let id = h.member("u1", "r1");
    for seq in 3..=19 {
        h.send(id, chat(seq, "r1", b"{}"));
    }
    let sends = h.take_sends();
    assert_eq!(sends.len(), 16);
    assert_eq!(error_of(&h.read(id), 19).0, "rate_limited");
    h.answer(&sends[0], SendOutcome::Link(LinkOutcome::NotBroadcast));
    h.send(id, chat(20, "r1", b"{}"));
    assert_eq!(h.take_sends().len(), 1, "an answer frees a place");
}

#[test]
fn refusals_past_the_flood_limit_close_the_connection_with_4030() {
    let mut h = Harness::with(EdgeConfig {
        send_flood_refusals: 3,
        send_flood_window_ms: 10_000,
        ..config()
    });
    let id = h.member("u1", "r1");
    let other = h.member("u2", "r1");
    h.send(id, chat(3, "nowhere", b"{}"));
    h.send(id, chat(4, "nowhere", b"{}"));
    assert!(!h.closed(id));
    h.send(id, chat(5, "nowhere", b"{}"));
    let msgs = h.read(id);
    assert_eq!(
        error_of(&msgs, 5).0,
        "not_joined",
        "the last refusal is answered"
    );
    assert_eq!(msgs.last().and_then(close_code), Some(4030));
    assert!(h.closed(id));
    h.round();
    assert!(!h.closed(other));
    assert_eq!(h.stats().close_count(CloseReason::SendFlood), 1);
}

#[test]
fn refusals_spread_wider_than_the_flood_window_do_not_close() {
    let mut h = Harness::with(EdgeConfig {
        send_flood_refusals: 3,
        send_flood_window_ms: 1_000,
        ..config()
    });
    let id = h.member("u1", "r1");
    // Two per window at most.
    for seq in 3..10 {
        h.send(id, chat(seq, "nowhere", b"{}"));
        h.advance(Duration::from_millis(600));
    }
    assert!(!h.closed(id));
}

#[test]
fn the_platforms_disconnect_closes_with_its_code_and_reason() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    h.send(id, chat(3, "r1", b"{}"));
    let send = h.take_sends().remove(0);
    h.answer(
        &send,
        SendOutcome::Link(LinkOutcome::Disconnect {
            code: 4403,
            reason: "banned".into(),
        }),
    );
    let msgs = h.read(id);
    assert_eq!(
        msgs,
        vec![ServerMsg::Close {
            code: 4403,
            reason: "banned".into()
        }]
    );
    assert!(h.closed(id));
    h.round();
    assert_eq!(h.stats().close_count(CloseReason::Platform), 1);
}

#[test]
fn a_send_the_control_plane_does_not_answer_in_time_is_unavailable() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    h.send(id, chat(3, "r1", b"{}"));
    let send = h.take_sends().remove(0);
    // The confirm timeout (5 s), found by the next sweep (at most a second later).
    h.advance_in_steps(Duration::from_millis(4_900), Duration::from_millis(100));
    assert!(h.read(id).is_empty(), "still waiting");
    h.advance_in_steps(Duration::from_millis(1_200), Duration::from_millis(100));
    assert_eq!(error_of(&h.read(id), 3).0, "unavailable");
    // The late answer finds nothing to answer.
    h.answer(
        &send,
        SendOutcome::Link(LinkOutcome::Published { msg_seq: 1 }),
    );
    assert!(h.read(id).is_empty());
}

#[test]
fn an_ack_of_the_own_channel_goes_to_the_hub_and_another_users_is_forbidden() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    h.hub.clear();
    h.send(
        id,
        ClientOp::Ack {
            seq: 3,
            user: Some("u1".into()),
            msg_seq: 88,
        },
    );
    h.send(
        id,
        ClientOp::Ack {
            seq: 4,
            user: None,
            msg_seq: 89,
        },
    );
    h.send(
        id,
        ClientOp::Ack {
            seq: 5,
            user: Some("u2".into()),
            msg_seq: 90,
        },
    );
    let replies = h.read(id);
    assert!(replies.contains(&reply_ok(3)) && replies.contains(&reply_ok(4)));
    assert_eq!(error_of(&replies, 5).0, "forbidden");
    let acks: Vec<(String, u64, u64)> = h
        .hub
        .iter()
        .filter_map(|m| match m {
            ToHub::Ack {
                user,
                msg_seq,
                at_ms,
            } => Some((user.to_string(), *msg_seq, *at_ms)),
            _ => None,
        })
        .collect();
    let at_ms = EPOCH_SECS * 1000;
    assert_eq!(acks, [("u1".into(), 88, at_ms), ("u1".into(), 89, at_ms)]);
    assert_eq!(h.stats().acks, 2);
}

#[test]
fn sends_arriving_in_one_read_reach_the_hub_in_the_clients_order() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    let mut bytes = Vec::new();
    for seq in 3..=5 {
        bytes.extend_from_slice(&encode_op(WireFormat::Tcp, &chat(seq, "r1", b"{}"), [0; 4]));
    }
    h.send_raw(id, &bytes);
    let tokens: Vec<u64> = h.take_sends().iter().map(|s| s.token).collect();
    let mut sorted = tokens.clone();
    sorted.sort_unstable();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens, sorted, "taken in the order they were checked");
}

#[test]
fn acks_have_their_own_looser_pace() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    // The send bucket is spent; acks still go (their own bucket: 100 at once).
    for seq in 3..=7 {
        h.send(id, chat(seq, "r1", b"{}"));
    }
    h.read(id);
    h.hub.clear();
    for seq in 10..110 {
        h.send(
            id,
            ClientOp::Ack {
                seq,
                user: None,
                msg_seq: seq,
            },
        );
    }
    assert_eq!(h.stats().acks, 100);
    h.send(
        id,
        ClientOp::Ack {
            seq: 110,
            user: None,
            msg_seq: 110,
        },
    );
    let (code, details) = error_of(&h.read(id), 110);
    assert_eq!(
        (code.as_str(), details.retry_after_ms),
        ("rate_limited", Some(50))
    );
    assert_eq!(h.stats().acks, 100);
}

#[test]
fn a_worker_counts_as_sending_while_a_send_waits_and_for_a_second_after_the_last() {
    let mut h = Harness::new();
    let id = h.member("u1", "r1");
    assert!(!h.core.upstream_active(h.now), "nobody has sent");
    h.send(id, chat(3, "r1", br#"{"text":"666"}"#));
    let sends = h.take_sends();
    assert_eq!(sends.len(), 1);
    h.advance(Duration::from_secs(2));
    assert!(h.core.upstream_active(h.now), "a send waits for its answer");
    h.answer(&sends[0], SendOutcome::Link(LinkOutcome::NotBroadcast));
    assert!(
        !h.core.upstream_active(h.now),
        "answered, 2 s after it came"
    );
    h.send(id, chat(4, "r1", br#"{"text":"777"}"#));
    let sends = h.take_sends();
    h.answer(&sends[0], SendOutcome::Link(LinkOutcome::NotBroadcast));
    assert!(h.core.upstream_active(h.now), "answered, but just sent");
    h.advance(Duration::from_millis(999));
    assert!(h.core.upstream_active(h.now));
    h.advance(Duration::from_millis(1));
    assert!(!h.core.upstream_active(h.now));
}
