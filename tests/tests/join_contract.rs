//! The delivery contract (PROTOCOL.md §5): a successful `join` reply is a subscription in place,
//! and so is a successful `auth` reply for the user's own channel. A platform that publishes the
//! instant the reply arrives — a welcome notice, a room snapshot — must reach the viewer, on a
//! fresh room, a fresh user, several edges, a slow link and across a control-plane restart.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use roomcast_tests::control::build_binaries;
use roomcast_tests::proxy::DelayProxy;
use roomcast_tests::{
    assert_receives, for_each_driver, Api, Client, ClientOp, Control, EdgeAddresses, Incoming,
    LinkedEdge, Published, Target, WireFormat,
};
use serde_json::json;

/// Fresh connections per scenario, and how many run at once.
const ROUNDS: usize = 1000;
const AT_ONCE: usize = 32;

/// One viewer's round: a fresh user authenticates and is published to at once; it joins a fresh
/// room and the room is published to at once; both messages must arrive.
async fn auth_join_publish_at_once(api: &Api, edge: &LinkedEdge, tag: &str, i: usize) {
    let format = WireFormat::ALL[i % 3];
    let user = format!("{tag}-u{i}");
    let mut client = Client::connect(edge, format).await;
    client.authenticate(&user).await;
    let to_user = Target::User(user.clone());
    let welcome = api
        .publish_retrying(&to_user, 1, "welcome", json!({ "i": i }))
        .await;
    let room = format!("{tag}-r{i}");
    client
        .join(&room)
        .await
        .unwrap_or_else(|e| panic!("{user} joins {room}: {e:?}"));
    let to_room = Target::Room(room);
    let snapshot = api
        .publish_retrying(&to_room, 2, "snapshot", json!({ "i": i }))
        .await;
    assert_eq!(
        (welcome.delivered_edges, snapshot.delivered_edges),
        (1, 1),
        "{user}: the API routed a publish made after the reply to no edge"
    );
    assert_receives(&mut client, &to_user, &[&welcome]).await;
    assert_receives(&mut client, &to_room, &[&snapshot]).await;
}

#[test]
fn a_publish_the_instant_a_join_or_auth_reply_arrives_reaches_the_viewer() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        let edges = [&a, &b];
        let api = &control.api;
        stream::iter(0..ROUNDS)
            .for_each_concurrent(AT_ONCE, |i| async move {
                auth_join_publish_at_once(api, edges[i % 2], "fresh", i).await;
            })
            .await;
    });
}

#[test]
fn the_contract_holds_on_a_slow_link() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        // 40 ms each way between the edge and the control plane: every first join waits a
        // round trip, and a publish right after the reply still finds the edge routed.
        let proxy = DelayProxy::start(control.link_addr, Duration::from_millis(40)).await;
        let edge = control
            .start_edge_via(io, "edge-slow", proxy.addr, &[])
            .await;
        let api = &control.api;
        let edge = &edge;
        stream::iter(0..ROUNDS / 5)
            .for_each_concurrent(AT_ONCE, |i| async move {
                auth_join_publish_at_once(api, edge, "slow", i).await;
            })
            .await;
    });
}

#[test]
fn joins_across_a_control_restart_get_one_reply_and_every_later_publish() {
    build_binaries();
    for_each_driver(|io| async move {
        // The grace holds publishes after the restart until the edges have re-registered.
        let mut control = Control::start(&["--startup-grace-ms", "2000"]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        let api = control.api.clone();
        let done = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let retried = Arc::new(AtomicUsize::new(0));
        let mut viewers = Vec::new();
        for worker in 0..8 {
            let (api, done, rounds, retried) = (
                api.clone(),
                Arc::clone(&done),
                Arc::clone(&rounds),
                Arc::clone(&retried),
            );
            let edge = if worker % 2 == 0 {
                a.addresses()
            } else {
                b.addresses()
            };
            viewers.push(tokio::spawn(async move {
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    let tag = format!("w{worker}");
                    if !join_publish_retrying(&api, &edge, &tag, i, &retried).await {
                        continue;
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        control.kill();
        tokio::time::sleep(Duration::from_millis(400)).await;
        control.restart().await;
        tokio::time::sleep(Duration::from_millis(3000)).await;
        done.store(true, Ordering::Relaxed);
        for viewer in viewers {
            viewer
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        let rounds = rounds.load(Ordering::Relaxed);
        eprintln!(
            "{io}: {rounds} join-then-publish rounds across the restart, {} joins retried",
            retried.load(Ordering::Relaxed)
        );
        assert!(rounds >= 40, "too few rounds ({rounds}) to mean anything");
    });
}

/// A viewer's round that tolerates the control plane being away: a fresh connection joins a
/// fresh room (retrying a join refused `unavailable`), then the room is published to at once
/// and the message must arrive. False when the connection had to be given up (retry).
async fn join_publish_retrying(
    api: &Api,
    edge: &EdgeAddresses,
    tag: &str,
    i: usize,
    retried: &AtomicUsize,
) -> bool {
    let format = WireFormat::ALL[i % 3];
    let mut client = Client::connect(edge, format).await;
    // A user channel new to the edge waits for the control plane too: `auth` is answered ok
    // after the re-registration, or refused `unavailable` and the connection closed (1013).
    let seq = client.next_op_seq();
    let token = roomcast_tests::tokens::token(&format!("{tag}-u{i}"));
    if client
        .call(ClientOp::Auth {
            seq,
            token,
            since: None,
        })
        .await
        .is_err()
    {
        retried.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let room = format!("{tag}-r{i}");
    loop {
        match client.join(&room).await {
            Ok(()) => break,
            Err((code, _)) if code == "unavailable" => {
                retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(other) => panic!("join {room}: {other:?}"),
        }
    }
    let target = Target::Room(room);
    let published = api
        .publish_retrying(&target, 2, "snapshot", json!({ "i": i }))
        .await;
    assert_eq!(
        published.delivered_edges, 1,
        "{target:?}: a publish made after the join reply was routed to no edge"
    );
    assert_receives(&mut client, &target, &[&published]).await;
    true
}

#[test]
fn a_broadcast_the_instant_an_auth_reply_arrives_reaches_the_viewer() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        // One viewer at a time, so each is the first authenticated connection of its format on
        // its worker (the edge starts sending broadcasts of that format there) and the only one
        // the broadcast reaches.
        for i in 0..60 {
            let edge = if i % 2 == 0 { &a } else { &b };
            let mut client = Client::connect(edge, WireFormat::ALL[i % 3]).await;
            client.authenticate(&format!("bc-u{i}")).await;
            let notice = control
                .api
                .publish_retrying(&Target::Broadcast, 0, "system", json!({ "i": i }))
                .await;
            receives_after_earlier_broadcasts(&mut client, &notice).await;
            client.close().await;
        }
    });
}

/// Waits for `notice` on the broadcast channel. Broadcasts published before the viewer's `auth`
/// reply (for the previous viewers) may reach it too — the contract promises only what is
/// published after — so those are skipped; anything else, or a later broadcast first, fails.
async fn receives_after_earlier_broadcasts(client: &mut Client, notice: &Published) {
    let deadline = tokio::time::Instant::now() + roomcast_tests::WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Batch {
                target: Target::Broadcast,
                msgs,
                ..
            }) => {
                for msg in msgs {
                    if msg.seq == notice.seq {
                        assert!(notice.matches(&msg), "{}: {msg:?}", client.label);
                        return;
                    }
                    assert!(
                        msg.seq < notice.seq,
                        "{}: broadcast {} came before {notice:?}",
                        client.label,
                        msg.seq
                    );
                }
            }
            other => panic!("{}: waiting for {notice:?}, got {other:?}", client.label),
        }
    }
}

#[test]
fn a_join_or_auth_the_control_plane_does_not_confirm_in_time_is_refused_and_undone() {
    for_each_driver(|io| async move {
        let mut edge = roomcast_tests::Edge::start(io, &["--join-confirm-timeout-ms", "300"]).await;
        let mut viewer = Client::connect_authed(&edge, WireFormat::WsJson, "patient").await;

        // The control plane answers the barrier too late: the join is refused `unavailable`, and
        // the viewer is not left in the room.
        edge.link.set_sync_delay(Duration::from_secs(2));
        let refused = viewer.join("late-room").await;
        assert_eq!(
            refused.as_ref().map_err(|(code, _)| code.as_str()),
            Err("unavailable"),
            "{refused:?}"
        );
        edge.link
            .publish_room("late-room", 1, "gift", r#"{"n":1}"#)
            .await;
        viewer.expect_silence(Duration::from_millis(300)).await;

        // A new user's `auth` the same way: `unavailable`, then closed with 1013.
        let mut newcomer = Client::connect(&edge, WireFormat::Tcp).await;
        let seq = newcomer.next_op_seq();
        let token = roomcast_tests::tokens::token("newcomer");
        let refused = newcomer
            .call(ClientOp::Auth {
                seq,
                token,
                since: None,
            })
            .await;
        assert_eq!(
            refused.as_ref().map_err(|(code, _)| code.as_str()),
            Err("unavailable"),
            "{refused:?}"
        );
        let (code, _) = newcomer.expect_close(Duration::from_secs(5)).await;
        assert_eq!(code, 1013);

        // A prompt control plane again: the retried join succeeds and the room reaches it.
        edge.link.set_sync_delay(Duration::ZERO);
        assert_eq!(viewer.join("late-room").await, Ok(()));
        let sent = edge
            .link
            .publish_room("late-room", 1, "gift", r#"{"n":2}"#)
            .await;
        let got = viewer
            .recv_messages(&Target::Room("late-room".into()), 1, Duration::from_secs(5))
            .await;
        assert_eq!(got, vec![sent]);
        edge.assert_running();
    });
}
