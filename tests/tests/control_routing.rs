//! Routing through the real control plane (issue 3, "Router"): a room publish goes to the edges
//! holding members of the room and to no other, a user publish to the edges holding that user,
//! a broadcast to every edge; every edge stamps the control plane's numbering; `GET /v1/rooms`
//! and `GET /v1/users` describe what the edges report.

use std::time::Duration;

use roomcast_tests::control::{build_binaries, room_members};
use roomcast_tests::http::Request;
use roomcast_tests::{
    assert_receives, for_each_driver, Client, Control, LinkedEdge, Target, WireFormat, WAIT,
};
use serde_json::json;

/// How long a test watches for a message that must not come.
const QUIET: Duration = Duration::from_millis(500);

fn room(id: &str) -> Target {
    Target::Room(id.to_owned())
}

fn user(id: &str) -> Target {
    Target::User(id.to_owned())
}

/// Control, two edges and five viewers:
///
/// | edge | viewer | format | rooms |
/// |---|---|---|---|
/// | edge-a | `alice` (her H5 page) | WebSocket JSON | show |
/// | edge-a | `bob` | raw TCP | show, side |
/// | edge-b | `carol` | WebSocket binary | show |
/// | edge-b | `alice` (her app) | raw TCP | lobby |
/// | edge-b | `dave` | WebSocket JSON | lobby |
///
/// So `show` is on both edges, `side` only on edge-a, `lobby` only on edge-b, and alice is on
/// both. Built only once control has seen every join (edges report member changes each second).
struct System {
    // Viewers first: dropped before the edges they are connected to.
    alice_h5: Client,
    bob: Client,
    carol: Client,
    alice_app: Client,
    dave: Client,
    _a: LinkedEdge,
    b: LinkedEdge,
    control: Control,
}

async fn system(io: &'static str) -> System {
    let control = Control::start(&[]).await;
    let a = control.start_edge(io, "edge-a", &[]).await;
    let b = control.start_edge(io, "edge-b", &[]).await;
    let mut alice_h5 = Client::connect_authed(&a, WireFormat::WsJson, "alice").await;
    let mut bob = Client::connect_authed(&a, WireFormat::Tcp, "bob").await;
    let mut carol = Client::connect_authed(&b, WireFormat::WsBinary, "carol").await;
    let mut alice_app = Client::connect_authed(&b, WireFormat::Tcp, "alice").await;
    let mut dave = Client::connect_authed(&b, WireFormat::WsJson, "dave").await;
    for (client, rooms) in [
        (&mut alice_h5, &["show"][..]),
        (&mut bob, &["show", "side"][..]),
        (&mut carol, &["show"][..]),
        (&mut alice_app, &["lobby"][..]),
        (&mut dave, &["lobby"][..]),
    ] {
        for r in rooms {
            client
                .join(r)
                .await
                .unwrap_or_else(|e| panic!("{} joins {r}: {e:?}", client.label));
        }
    }
    control
        .wait_room_members("show", &[("edge-a", 2), ("edge-b", 1)])
        .await;
    control.wait_room_members("side", &[("edge-a", 1)]).await;
    control.wait_room_members("lobby", &[("edge-b", 2)]).await;
    System {
        alice_h5,
        bob,
        carol,
        alice_app,
        dave,
        _a: a,
        b,
        control,
    }
}

#[test]
fn a_room_publish_reaches_its_members_on_both_edges_with_one_numbering() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut s = system(io).await;
        let show = room("show");
        let mut sent = Vec::new();
        for (i, (priority, kind)) in [(2, "gift"), (1, "gift"), (3, "chat")]
            .into_iter()
            .enumerate()
        {
            let data = json!({ "i": i, "gift": "rocket", "n": 3 });
            sent.push(s.control.api.publish(&show, priority, kind, data).await);
        }
        let seqs: Vec<u64> = sent.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "one numbering per room, from 1: {sent:#?}");
        for published in &sent {
            assert_eq!(
                published.delivered_edges, 2,
                "show has members on both edges: {published:?}"
            );
        }
        let expected: Vec<_> = sent.iter().collect();
        for member in [&mut s.alice_h5, &mut s.bob, &mut s.carol] {
            assert_receives(member, &show, &expected).await;
        }
        // Viewers in another room get nothing, whichever edge they are on.
        s.alice_app.expect_silence(QUIET).await;
        s.dave.expect_silence(Duration::ZERO).await;
        for member in [&mut s.alice_h5, &mut s.bob, &mut s.carol] {
            member.expect_silence(Duration::ZERO).await;
        }
    });
}

#[test]
fn a_room_publish_goes_only_to_the_edges_holding_members_of_the_room() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut s = system(io).await;
        let api = s.control.api.clone();

        let side = api.room("side").await;
        assert_eq!(side["room"], "side", "{side}");
        assert_eq!(side["online"], 1, "{side}");
        let show = api.room("show").await;
        assert_eq!(show["online"], 3, "{show}");
        assert_eq!(
            room_members(&show),
            [("edge-a".to_owned(), 2), ("edge-b".to_owned(), 1)].into(),
            "{show}"
        );

        // side lives on edge-a only.
        let to_side = api
            .publish(&room("side"), 2, "gift", json!({"to": "side"}))
            .await;
        assert_eq!(
            to_side.delivered_edges, 1,
            "side is on edge-a only: {to_side:?}"
        );
        assert_receives(&mut s.bob, &room("side"), &[&to_side]).await;
        // lobby lives on edge-b only.
        let to_lobby = api
            .publish(&room("lobby"), 3, "chat", json!("hello lobby"))
            .await;
        assert_eq!(
            to_lobby.delivered_edges, 1,
            "lobby is on edge-b only: {to_lobby:?}"
        );
        assert_eq!(to_lobby.seq, 1, "each room has its own numbering");
        for member in [&mut s.alice_app, &mut s.dave] {
            assert_receives(member, &room("lobby"), &[&to_lobby]).await;
        }
        for other in [&mut s.alice_h5, &mut s.carol, &mut s.alice_app, &mut s.dave] {
            other.expect_silence(QUIET).await;
        }
        s.bob.expect_silence(Duration::ZERO).await;

        // A room nobody is in goes nowhere.
        let nowhere = api.publish(&room("empty"), 2, "gift", json!({})).await;
        assert_eq!(nowhere.delivered_edges, 0, "{nowhere:?}");

        // Once carol, the only member on edge-b, leaves, show is edge-a's alone.
        s.carol.leave("show").await.unwrap();
        let show = s.control.wait_room_members("show", &[("edge-a", 2)]).await;
        assert_eq!(show["online"], 2, "{show}");
        let after_leave = api
            .publish(&room("show"), 2, "gift", json!({"after": "leave"}))
            .await;
        assert_eq!(
            after_leave.delivered_edges, 1,
            "edge-b no longer holds show: {after_leave:?}"
        );
        for member in [&mut s.alice_h5, &mut s.bob] {
            assert_receives(member, &room("show"), &[&after_leave]).await;
        }
        s.carol.expect_silence(QUIET).await;
    });
}

#[test]
fn a_user_publish_reaches_the_users_connections_on_whichever_edge() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut s = system(io).await;
        let api = s.control.api.clone();

        let to_alice = api
            .publish(&user("alice"), 1, "notice", json!({"text": "you won"}))
            .await;
        assert_eq!(to_alice.seq, 1, "{to_alice:?}");
        assert_eq!(
            to_alice.delivered_edges, 2,
            "alice is on both edges: {to_alice:?}"
        );
        for device in [&mut s.alice_h5, &mut s.alice_app] {
            assert_receives(device, &user("alice"), &[&to_alice]).await;
        }

        let to_dave = api
            .publish(&user("dave"), 2, "notice", json!({"text": "hi dave"}))
            .await;
        assert_eq!(to_dave.seq, 1, "each user has their own numbering");
        assert_eq!(
            to_dave.delivered_edges, 1,
            "dave is on edge-b only: {to_dave:?}"
        );
        assert_receives(&mut s.dave, &user("dave"), &[&to_dave]).await;

        let to_bob = api
            .publish(&user("bob"), 0, "system", json!({"text": "hi bob"}))
            .await;
        assert_eq!(
            to_bob.delivered_edges, 1,
            "bob is on edge-a only: {to_bob:?}"
        );
        assert_receives(&mut s.bob, &user("bob"), &[&to_bob]).await;

        let to_nobody = api.publish(&user("nobody"), 1, "notice", json!(1)).await;
        assert_eq!(to_nobody.delivered_edges, 0, "{to_nobody:?}");

        for client in [
            &mut s.alice_h5,
            &mut s.bob,
            &mut s.carol,
            &mut s.alice_app,
            &mut s.dave,
        ] {
            client.expect_silence(QUIET).await;
        }
    });
}

#[test]
fn a_broadcast_reaches_every_connection_on_every_edge() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut s = system(io).await;
        // erin is in no room at all.
        let mut erin = Client::connect(&s.b, WireFormat::WsBinary).await;
        erin.authenticate("erin").await;
        let api = s.control.api.clone();
        let first = api
            .publish(
                &Target::Broadcast,
                0,
                "system",
                json!({"text": "maintenance at 02:00"}),
            )
            .await;
        let second = api
            .publish(&Target::Broadcast, 3, "system", json!({"text": "back"}))
            .await;
        assert_eq!((first.seq, second.seq), (1, 2), "{first:?} {second:?}");
        for published in [&first, &second] {
            assert_eq!(published.delivered_edges, 2, "{published:?}");
        }
        for client in [
            &mut s.alice_h5,
            &mut s.bob,
            &mut s.carol,
            &mut s.alice_app,
            &mut s.dave,
            &mut erin,
        ] {
            assert_receives(client, &Target::Broadcast, &[&first, &second]).await;
        }
    });
}

#[test]
fn get_user_lists_the_users_connections_on_both_edges_with_transport_and_rooms() {
    build_binaries();
    for_each_driver(|io| async move {
        let s = system(io).await;
        let api = &s.control.api;

        let alice = api.user("alice").await;
        assert_eq!(alice["user"], "alice", "{alice}");
        let mut connections = alice["connections"]
            .as_array()
            .unwrap_or_else(|| panic!("no connections array: {alice}"))
            .clone();
        connections.sort_by_key(|c| c["edge_id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(connections.len(), 2, "alice has two connections: {alice}");
        let expected = [
            ("edge-a", "ws", "json", &s.alice_h5, vec!["show"]),
            ("edge-b", "tcp", "binary", &s.alice_app, vec!["lobby"]),
        ];
        for (got, (edge_id, transport, encoding, client, rooms)) in connections.iter().zip(expected)
        {
            assert_eq!(got["edge_id"], edge_id, "{alice}");
            assert_eq!(got["transport"], transport, "{alice}");
            assert_eq!(got["encoding"], encoding, "{alice}");
            assert_eq!(
                got["peer"],
                client.local_addr().to_string(),
                "the peer is the client's ip:port: {alice}"
            );
            assert_eq!(got["rooms"], json!(rooms), "{alice}");
        }

        let bob = api.user("bob").await;
        let connections = bob["connections"].as_array().cloned().unwrap_or_default();
        assert_eq!(connections.len(), 1, "{bob}");
        let bob_conn = &connections[0];
        assert_eq!(
            (
                &bob_conn["edge_id"],
                &bob_conn["transport"],
                &bob_conn["encoding"]
            ),
            (&json!("edge-a"), &json!("tcp"), &json!("binary")),
            "{bob}"
        );
        let mut rooms: Vec<String> = serde_json::from_value(bob_conn["rooms"].clone())
            .unwrap_or_else(|e| panic!("rooms is an array of strings ({e}): {bob}"));
        rooms.sort();
        assert_eq!(rooms, ["show", "side"], "{bob}");

        let carol = api.user("carol").await;
        let connections = carol["connections"].as_array().cloned().unwrap_or_default();
        assert_eq!(connections.len(), 1, "{carol}");
        assert_eq!(
            (&connections[0]["transport"], &connections[0]["encoding"]),
            (&json!("ws"), &json!("binary")),
            "{carol}"
        );
    });
}

#[test]
fn the_publishers_json_reaches_viewers_byte_for_byte() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut s = system(io).await;
        // Keys out of order, nesting, escapes: compact JSON that a re-encoding would change.
        let data = r#"{"z":1,"a":[true,null,1.5e3],"nested":{"y":"rocket \"x\"","b":{}}}"#;
        let body = format!(r#"{{"priority":2,"kind":"gift","data":{data}}}"#);
        let response = s
            .control
            .api
            .send(Request::new("POST", "/v1/rooms/show/messages").body("application/json", body))
            .await;
        let answer = response.ok();
        let seq = answer["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{response:?}"));
        for member in [&mut s.alice_h5, &mut s.bob, &mut s.carol] {
            let got = member.recv_messages(&room("show"), 1, WAIT).await;
            assert_eq!(got[0].seq, seq);
            assert_eq!(
                String::from_utf8_lossy(&got[0].data),
                data,
                "{}: data must arrive as the publisher wrote it",
                member.label
            );
        }
    });
}
