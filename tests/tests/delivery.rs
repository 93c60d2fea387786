//! Delivery (PROTOCOL.md §5): publishes from the control plane reach the right connections, in
//! order, merged per tick, with the publisher's JSON spliced in untouched.

use std::time::{Duration, Instant};

use roomcast_tests::{
    for_each_driver, members_in_every_format, Client, Edge, Incoming, PushMessage, Target,
    WireFormat, WAIT,
};

/// How long a test watches for a message that must not come.
const QUIET: Duration = Duration::from_millis(500);

fn room(id: &str) -> Target {
    Target::Room(id.to_owned())
}

#[test]
fn room_publishes_reach_every_member_in_publish_order_with_the_control_seqs() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let mut members = members_in_every_format(&edge, "r1").await;
        let mut sent = Vec::new();
        for i in 0..20u8 {
            let kind = ["system", "gift", "gift", "chat"][usize::from(i % 4)];
            let data = format!(r#"{{"i":{i},"text":"message {i}"}}"#);
            sent.push(edge.link.publish_room("r1", i % 4, kind, &data).await);
        }
        assert_eq!(
            sent.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        for member in &mut members {
            let got = member.recv_messages(&room("r1"), sent.len(), WAIT).await;
            assert_eq!(got, sent, "{}", member.label);
            member.expect_silence(QUIET).await;
        }
    });
}

#[test]
fn a_user_publish_reaches_every_connection_of_that_user_and_nobody_else() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        // Alice has the app (raw TCP) and the H5 page (WebSocket) open; bob is in the same room.
        let mut alice_app = Client::connect_authed(&edge, WireFormat::Tcp, "alice").await;
        let mut alice_h5 = Client::connect_authed(&edge, WireFormat::WsJson, "alice").await;
        let mut bob = Client::connect_authed(&edge, WireFormat::WsBinary, "bob").await;
        for client in [&mut alice_app, &mut alice_h5, &mut bob] {
            client.join("r1").await.unwrap();
        }
        let alice = Target::User("alice".into());
        let mut sent = Vec::new();
        for i in 0..3 {
            let data = format!(r#"{{"text":"you won {i}"}}"#);
            sent.push(edge.link.publish(alice.clone(), 1, "notice", &data).await);
        }
        for client in [&mut alice_app, &mut alice_h5] {
            assert_eq!(
                client.recv_messages(&alice, 3, WAIT).await,
                sent,
                "{}",
                client.label
            );
        }
        bob.expect_silence(QUIET).await;

        // Each user's channel has its own numbering.
        let bobs = Target::User("bob".into());
        let to_bob = edge
            .link
            .publish(bobs.clone(), 2, "notice", r#"{"text":"hi bob"}"#)
            .await;
        assert_eq!(to_bob.seq, 1);
        assert_eq!(bob.recv_messages(&bobs, 1, WAIT).await, vec![to_bob]);
        alice_app.expect_silence(QUIET).await;
        alice_h5.expect_silence(Duration::ZERO).await;
    });
}

#[test]
fn a_broadcast_reaches_every_connection_whatever_its_rooms() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let mut in_r1 = Client::connect_authed(&edge, WireFormat::WsJson, "u1").await;
        in_r1.join("r1").await.unwrap();
        let mut in_no_room = Client::connect_authed(&edge, WireFormat::Tcp, "u2").await;
        let mut in_r2 = Client::connect_authed(&edge, WireFormat::WsBinary, "u3").await;
        in_r2.join("r2").await.unwrap();
        let first = edge
            .link
            .publish(
                Target::Broadcast,
                0,
                "system",
                r#"{"text":"maintenance at 02:00"}"#,
            )
            .await;
        let second = edge
            .link
            .publish(Target::Broadcast, 3, "system", r#"{"text":"back"}"#)
            .await;
        for client in [&mut in_r1, &mut in_no_room, &mut in_r2] {
            let got = client.recv_messages(&Target::Broadcast, 2, WAIT).await;
            assert_eq!(got, vec![first.clone(), second.clone()], "{}", client.label);
        }
    });
}

#[test]
fn publishes_within_one_tick_are_merged_into_few_batches() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--tick-ms", "200"]).await;
        let mut members = members_in_every_format(&edge, "r1").await;
        let mut sent = Vec::new();
        for i in 0..50 {
            sent.push(
                edge.link
                    .publish_room("r1", 3, "chat", &format!(r#""chat {i}""#))
                    .await,
            );
        }
        for member in &mut members {
            let batches = member.recv_batches(&room("r1"), sent.len(), WAIT).await;
            let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
            assert!(
                sizes.len() < 5,
                "{}: 50 quick publishes came in batches of {sizes:?}",
                member.label
            );
            let got: Vec<PushMessage> = batches.into_iter().flatten().collect();
            assert_eq!(got, sent, "{}", member.label);
        }
    });
}

#[test]
fn a_priority_0_message_is_sent_without_waiting_for_the_tick() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--tick-ms", "5000"]).await;
        let mut members = members_in_every_format(&edge, "r1").await;
        // A chat message is waiting for the 5 s tick when the system message comes: the system
        // message closes the window, and the chat message goes first to keep publish order.
        let waiting = edge
            .link
            .publish_room("r1", 3, "chat", r#""waiting""#)
            .await;
        let published = Instant::now();
        let urgent = edge
            .link
            .publish_room("r1", 0, "system", r#"{"text":"stream ends"}"#)
            .await;
        for member in &mut members {
            let got = member
                .recv_messages(&room("r1"), 2, Duration::from_secs(2))
                .await;
            assert_eq!(
                got,
                vec![waiting.clone(), urgent.clone()],
                "{}",
                member.label
            );
        }
        let took = published.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "the P0 message took {took:?}"
        );
    });
}

#[test]
fn connections_outside_the_room_receive_nothing() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let mut member = Client::connect_authed(&edge, WireFormat::WsJson, "member").await;
        member.join("r1").await.unwrap();
        let mut in_other_room = Client::connect_authed(&edge, WireFormat::Tcp, "other").await;
        in_other_room.join("r2").await.unwrap();
        let mut in_no_room = Client::connect_authed(&edge, WireFormat::WsBinary, "nobody").await;
        let mut left = Client::connect_authed(&edge, WireFormat::Tcp, "leaver").await;
        left.join("r1").await.unwrap();
        left.leave("r1").await.unwrap();

        let mut sent = Vec::new();
        for i in 0..5 {
            sent.push(
                edge.link
                    .publish_room("r1", 2, "gift", &format!(r#"{{"n":{i}}}"#))
                    .await,
            );
        }
        assert_eq!(member.recv_messages(&room("r1"), 5, WAIT).await, sent);
        in_other_room.expect_silence(QUIET).await;
        in_no_room.expect_silence(Duration::ZERO).await;
        left.expect_silence(Duration::ZERO).await;

        // The other room's member is alive and gets exactly its own room's messages.
        let to_r2 = edge
            .link
            .publish_room("r2", 3, "chat", r#""r2 only""#)
            .await;
        assert_eq!(
            in_other_room.recv_messages(&room("r2"), 1, WAIT).await,
            vec![to_r2]
        );
        member.expect_silence(QUIET).await;
        in_no_room.expect_silence(Duration::ZERO).await;
        left.expect_silence(Duration::ZERO).await;
    });
}

#[test]
fn publisher_json_is_spliced_into_batches_byte_for_byte() {
    // Odd whitespace, escapes, non-ASCII, number forms: a re-encoding edge would change them.
    const PAYLOADS: [&str; 5] = [
        r#"{"b":1,  "a":[1,2]}"#,
        r#""caf\u00e9 ☕ \"quoted\" \\ \/""#,
        "1.50e+1",
        "[ true ,\n\tnull ]",
        r#"{"nested":{"deep":[{"x":"</script>"}]},"emoji":"😀","n":-0.0}"#,
    ];
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let mut members = members_in_every_format(&edge, "r1").await;
        let mut sent = Vec::new();
        for (i, data) in PAYLOADS.iter().enumerate() {
            sent.push(edge.link.publish_room("r1", 3, "raw", data).await);
            assert_eq!(sent[i].data.as_ref(), data.as_bytes());
        }
        for member in &mut members {
            let mut got = Vec::new();
            while got.len() < sent.len() {
                let (msgs, raw) = match member.next(WAIT).await {
                    Incoming::Batch { target, msgs, raw } if target == room("r1") => (msgs, raw),
                    other => panic!("{}: expected a batch for r1, got {other:?}", member.label),
                };
                if member.format == WireFormat::WsJson {
                    let text = std::str::from_utf8(&raw).expect("a text frame is UTF-8");
                    assert_batch_json_shape(text, "r1", &msgs);
                    for msg in &msgs {
                        let payload = PAYLOADS[msg.seq as usize - 1];
                        assert!(
                            text.contains(payload),
                            "the JSON batch does not hold {payload:?} verbatim:\n{text}"
                        );
                    }
                }
                got.extend(msgs);
            }
            assert_eq!(got, sent, "{}", member.label);
        }
    });
}

/// Checks a JSON batch against PROTOCOL.md §2 with an independent parser.
fn assert_batch_json_shape(text: &str, room: &str, msgs: &[PushMessage]) {
    let batch: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON batch ({e}):\n{text}"));
    assert_eq!(batch["op"], "batch", "{text}");
    assert_eq!(batch["room"], room, "{text}");
    let items = batch["msgs"]
        .as_array()
        .unwrap_or_else(|| panic!("no msgs array:\n{text}"));
    assert_eq!(items.len(), msgs.len(), "{text}");
    for (item, msg) in items.iter().zip(msgs) {
        assert_eq!(item["seq"], msg.seq, "{text}");
        assert_eq!(item["p"], msg.priority, "{text}");
        assert_eq!(item["kind"], msg.kind.as_str(), "{text}");
        let data: serde_json::Value = serde_json::from_slice(&msg.data).expect("published JSON");
        assert_eq!(item["data"], data, "{text}");
    }
}
