//! A room's online count, pushed (issue 12, PROTOCOL.md §5): every member of a room receives
//! `room` pushes with the room's connections (`online`) and distinct users (`users`) over every
//! edge, updated after joins and leaves, a user on two devices counted once, and nothing pushed
//! while nothing changes. Two edges, every wire format, both drivers.

use std::time::Duration;

use roomcast_tests::control::build_binaries;
use roomcast_tests::http::poll;
use roomcast_tests::{for_each_driver, Client, Control, LinkedEdge, WireFormat, WAIT};
use serde_json::Value;
use tokio::time::Instant;

/// Pushes at most every 200 ms at every level, so a test sees a change within a few hundred
/// milliseconds of the edges' reports (each second).
const INTERVALS: &str = "200,200,200,200";

/// Longer than an edge report interval plus a push interval, twice over: a push that was going
/// to come would have come.
const QUIET: Duration = Duration::from_millis(2_500);

/// Reads `client`'s room counts until one of `room` says `online` and `users`, and returns the
/// others it read first (room, online, users); panics with them after [`WAIT`].
async fn await_count(
    client: &mut Client,
    room: &str,
    online: u32,
    users: u32,
) -> Vec<(String, u32, u32)> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_room_count(left).await {
            Some(c) if c.room == room && c.online == online && c.users == users => return seen,
            Some(c) => seen.push((c.room, c.online, c.users)),
            None => panic!(
                "{}: no count of {room} with online {online} and users {users} within {WAIT:?}; \
                 got {seen:?}",
                client.label
            ),
        }
    }
}

/// Waits until `GET /v1/rooms/{room}` shows `online` and `users`.
async fn await_room(control: &Control, room: &str, online: u64, users: u64) {
    let api = &control.api;
    poll(
        &format!("{room} at online {online}, users {users}"),
        WAIT,
        || async move {
            let view: Value = api.room(room).await;
            let got = (view["online"].as_u64(), view["users"].as_u64());
            if got == (Some(online), Some(users)) {
                Ok(())
            } else {
                Err(format!("{view}"))
            }
        },
    )
    .await;
}

async fn joined(edge: &LinkedEdge, format: WireFormat, user: &str, room: &str) -> Client {
    let mut client = Client::connect_authed(edge, format, user).await;
    client
        .join(room)
        .await
        .unwrap_or_else(|e| panic!("{} joins {room}: {e:?}", client.label));
    client
}

#[test]
fn members_on_two_edges_get_the_room_s_connections_and_distinct_users() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&["--online-interval-ms", INTERVALS]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        // Alice watches `live` on her H5 page (edge-a) and in her app (edge-b).
        let mut alice_h5 = joined(&a, WireFormat::WsJson, "alice", "live").await;
        let mut bob = joined(&a, WireFormat::Tcp, "bob", "live").await;
        let mut carol = joined(&b, WireFormat::WsBinary, "carol", "live").await;
        let mut alice_app = joined(&b, WireFormat::Tcp, "alice", "live").await;
        let mut dave = joined(&b, WireFormat::WsJson, "dave", "other").await;

        // Four connections, three users: alice counts once.
        await_room(&control, "live", 4, 3).await;
        for viewer in [&mut alice_h5, &mut bob, &mut carol, &mut alice_app] {
            await_count(viewer, "live", 4, 3).await;
        }
        let before = await_count(&mut dave, "other", 1, 1).await;
        assert!(
            before.iter().all(|(room, ..)| room == "other"),
            "dave is not in live: {before:?}"
        );

        // A join on edge-a: everyone's count follows, the newcomer's too.
        let mut eve = joined(&a, WireFormat::WsBinary, "eve", "live").await;
        for viewer in [
            &mut alice_h5,
            &mut bob,
            &mut carol,
            &mut alice_app,
            &mut eve,
        ] {
            await_count(viewer, "live", 5, 4).await;
        }

        // Bob leaves: one connection and one user less.
        bob.leave("live").await.unwrap();
        for viewer in [&mut alice_h5, &mut carol, &mut alice_app, &mut eve] {
            await_count(viewer, "live", 4, 3).await;
        }
        // Alice closes her app: one connection less, but she is still there on H5.
        alice_app.close().await;
        for viewer in [&mut alice_h5, &mut carol, &mut eve] {
            await_count(viewer, "live", 3, 3).await;
        }
        await_room(&control, "live", 3, 3).await;

        // Nothing changes: nothing is pushed.
        for viewer in [&mut alice_h5, &mut bob, &mut carol, &mut eve, &mut dave] {
            viewer.take_room_counts();
        }
        futures_util::future::join_all(
            [&mut alice_h5, &mut bob, &mut carol, &mut eve, &mut dave]
                .into_iter()
                .map(|viewer| viewer.expect_silence(QUIET)),
        )
        .await;
        for viewer in [&mut alice_h5, &mut carol, &mut eve, &mut dave] {
            let counts = viewer.take_room_counts();
            assert!(
                counts.is_empty(),
                "{}: pushed with nothing changed: {counts:?}",
                viewer.label
            );
        }
        // Bob left `live` and dave never was in it: neither got its counts since.
        let stray: Vec<_> = bob
            .take_room_counts()
            .into_iter()
            .chain(dave.take_room_counts())
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    });
}
