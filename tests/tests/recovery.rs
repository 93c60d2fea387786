//! History and recovery (PROTOCOL.md §5), black-box against the real control plane and edges:
//! a viewer that reconnects with `since` resumes exactly where it stopped — the missed messages,
//! in order, then the live ones, with no duplicate and no hole — while the platform keeps
//! publishing through the reconnect; a recovery that cannot be exact says why and replays
//! nothing; a restarted control plane changes the epoch; `history` reads what is stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_proto::client::ReplyDetails;
use roomcast_proto::message::{RecoveryFailure, Since};
use roomcast_tests::control::build_binaries;
use roomcast_tests::proxy::DelayProxy;
use roomcast_tests::tokens::token;
use roomcast_tests::{
    for_each_driver, Api, Client, Control, Incoming, LinkedEdge, Target, WireFormat, WAIT,
};
use serde_json::json;

/// Messages the platform publishes into the room in the exactness test.
const PUBLISHED: u64 = 2400;

/// The position a reply gives: `(epoch, last_seq)`.
#[track_caller]
fn position(details: &ReplyDetails) -> (String, u64) {
    (
        details.epoch.clone().expect("the reply carries `epoch`"),
        details.last_seq.expect("the reply carries `last_seq`"),
    )
}

/// Publishes `count` messages into `room` in batches of 20, a batch every few milliseconds,
/// numbered in `data.n` from 1; returns when all were accepted.
async fn publish_steadily(api: Api, room: String, count: u64, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while n < count && !stop.load(Ordering::Relaxed) {
        let messages: Vec<_> = (0..20.min(count - n))
            .map(|i| json!({ "room": room, "priority": 2, "kind": "gift", "data": { "n": n + i + 1 } }))
            .collect();
        n += messages.len() as u64;
        let response = api
            .post("/v1/messages", &json!({ "messages": messages }))
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Reads the room's messages, checking each is the next `seq`, until `upto` messages have been
/// read in this call or the stream reaches `last`; returns the next expected `seq`.
async fn read_in_order(
    client: &mut Client,
    room: &Target,
    mut next: u64,
    upto: u64,
    last: u64,
) -> u64 {
    let mut read = 0;
    while read < upto && next <= last {
        match client.next(WAIT).await {
            Incoming::Batch { target, msgs, .. } if target == *room => {
                for m in msgs {
                    assert_eq!(
                        m.seq, next,
                        "{}: expected seq {next}, got {} (a duplicate or a hole)",
                        client.label, m.seq
                    );
                    next += 1;
                    read += 1;
                }
            }
            Incoming::Batch { .. } | Incoming::Room { .. } => {}
            other => panic!("{}: waiting for seq {next}, got {other:?}", client.label),
        }
    }
    next
}

/// One viewer in `format` drops its connection again and again while the room is published to,
/// each time reconnecting to the other edge and joining with `since`. With `bystanders`, another
/// member on each edge keeps the room there; without, the viewer is the room's only member and
/// its edge is unrouted and routed again for the room at every reconnect.
async fn resume_through_reconnects(
    api: &Api,
    edges: [&LinkedEdge; 2],
    format: WireFormat,
    bystanders: bool,
) {
    let room_name = format!("resume-{}-{bystanders}", format.index());
    let room = Target::Room(room_name.clone());
    let user = format!("viewer-{}", format.index());
    // A bystander on each edge keeps the room there, so batches keep reaching the edge while
    // the viewer's recovery is on its way (its messages are read and dropped).
    let mut bystander_tasks = Vec::new();
    for (i, edge) in edges.iter().enumerate().filter(|_| bystanders) {
        let mut bystander = Client::connect_authed(*edge, format, &format!("bystander-{i}")).await;
        assert_eq!(bystander.join(&room_name).await, Ok(()));
        bystander_tasks.push(tokio::spawn(async move {
            while bystander
                .next_within(Duration::from_secs(30))
                .await
                .is_some()
            {}
        }));
    }
    let mut client = Client::connect_authed(edges[0], format, &user).await;
    let (result, details) = client.join_since(&room_name, None).await;
    assert_eq!(result, Ok(()));
    let (epoch, last) = position(&details);
    assert_eq!(details.recovered, None, "no `since`, no recovery");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_steadily(
        api.clone(),
        room_name.clone(),
        PUBLISHED,
        Arc::clone(&stop),
    ));
    let final_seq = last + PUBLISHED;
    let mut next = last + 1;
    let (mut cycles, mut replayed) = (0u64, 0u64);
    while next <= final_seq {
        next = read_in_order(&mut client, &room, next, 40 + 37 * (cycles % 5), final_seq).await;
        if next > final_seq {
            break;
        }
        // Gone without a goodbye, away for a moment (or none), back on the other edge.
        drop(client);
        if bystanders {
            tokio::time::sleep(Duration::from_millis(10 * (cycles % 4))).await;
        }
        cycles += 1;
        client = Client::connect_authed(edges[(cycles % 2) as usize], format, &user).await;
        let since = Since {
            epoch: epoch.clone(),
            seq: next - 1,
        };
        let (result, details) = client.join_since(&room_name, Some(since)).await;
        assert_eq!(result, Ok(()));
        assert_eq!(
            details.recovered,
            Some(Ok(())),
            "cycle {cycles}: {details:?}"
        );
        let (again, resumed_to) = position(&details);
        assert_eq!(again, epoch, "the epoch holds while the control plane runs");
        assert!(
            resumed_to + 1 >= next,
            "the reply's last_seq is never before the position"
        );
        replayed += resumed_to + 1 - next;
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("the publisher");
    for bystander in bystander_tasks {
        bystander.abort();
    }
    eprintln!("{format:?}: {cycles} reconnects, {replayed} messages replayed, all {PUBLISHED} once and in order");
    assert!(
        cycles >= 5,
        "too few reconnects ({cycles}) to mean anything"
    );
    assert!(
        replayed > 0,
        "no reconnect missed anything: the test proved nothing"
    );
}

#[test]
fn a_viewer_that_reconnects_resumes_exactly_while_the_room_is_published_to() {
    build_binaries();
    for_each_driver(|io| async move {
        // Short windows, and a slow link to edge b: its recoveries take a round trip of 60 ms,
        // during which the room's batches keep arriving there and must be held back from the
        // recovering viewer and stitched to its replay.
        // History and the recovery cap far above what a reconnect can miss here, however slow
        // the host: a refusal in this test is a failure, not a `too_many`.
        #[rustfmt::skip]
        let control = Control::start(&[
            "--level-ticks-ms", "20,250,500,1000",
            "--history-levels", "5000:300:3,5000:300:3,5000:300:3,5000:300:3",
            "--recover-max-messages", "5000",
            "--recover-max-bytes", "4194304",
        ])
        .await;
        let proxy = DelayProxy::start(control.link_addr, Duration::from_millis(30)).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge_via(io, "edge-b", proxy.addr, &[]).await;
        for format in WireFormat::ALL {
            resume_through_reconnects(&control.api, [&a, &b], format, true).await;
        }
    });
}

#[test]
fn the_only_viewer_of_a_room_reconnecting_at_once_resumes_exactly() {
    build_binaries();
    for_each_driver(|io| async move {
        // The viewer leaves its edge's only membership and is back within a millisecond, behind
        // a slow link: publishes the control plane routed before it heard of the leave reach the
        // edge after the viewer is back, the ones it numbered while the edge was unrouted never
        // do, and the recovery must fill that hole rather than skip it.
        #[rustfmt::skip]
        let control = Control::start(&[
            "--level-ticks-ms", "200,250,500,1000",
            "--history-levels", "5000:300:3,5000:300:3,5000:300:3,5000:300:3",
            "--recover-max-messages", "5000",
            "--recover-max-bytes", "4194304",
        ])
        .await;
        let proxy = DelayProxy::start(control.link_addr, Duration::from_millis(25)).await;
        let edge = control
            .start_edge_via(io, "edge-slow", proxy.addr, &[])
            .await;
        for format in WireFormat::ALL {
            resume_through_reconnects(&control.api, [&edge, &edge], format, false).await;
        }
    });
}

/// Publishes `count` messages of `priority` into `room` and returns the last `seq`, once
/// `viewer` (a member on the edge under test) has received them all: then no window of the
/// edge still holds one, and a join's reply is at the last `seq`.
async fn publish_n(api: &Api, viewer: &mut Client, room: &str, count: u64, priority: u8) -> u64 {
    let target = Target::Room(room.into());
    let mut published = Vec::new();
    for _ in 0..count {
        published.push(
            api.publish(&target, priority, "gift", json!({ "x": 1 }))
                .await
                .seq,
        );
    }
    let got: Vec<u64> = viewer
        .recv_messages(&target, count as usize, WAIT)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(
        got, published,
        "the live viewer gets every message once, in order"
    );
    published.last().copied().unwrap_or(0)
}

/// Joins `room` with `since` on a fresh connection and returns the reply's details, checking
/// that nothing is replayed when the recovery is refused.
async fn rejoin(edge: &LinkedEdge, format: WireFormat, room: &str, since: Since) -> ReplyDetails {
    let mut client = Client::connect_authed(edge, format, "rejoiner").await;
    let (result, details) = client.join_since(room, Some(since)).await;
    assert_eq!(result, Ok(()));
    if matches!(details.recovered, Some(Err(_))) {
        client.expect_silence(Duration::from_millis(300)).await;
    }
    details
}

#[test]
fn a_recovery_that_cannot_be_exact_says_why_and_replays_nothing() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[
            "--recover-max-messages",
            "20",
            "--history-levels",
            "30:300:2,500:300:3,1000:180:3,1000:120:2",
        ])
        .await;
        let edge = control.start_edge(io, "edge-a", &[]).await;
        let api = &control.api;
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let room = format!("refused-{i}");
            let mut viewer = Client::connect_authed(&edge, format, "viewer").await;
            let (_, details) = viewer.join_since(&room, None).await;
            let (epoch, start) = position(&details);
            let at = |seq: u64| Since {
                epoch: epoch.clone(),
                seq,
            };

            // Another epoch: the position is from another stream.
            let bogus = Since {
                epoch: "nope".into(),
                seq: start,
            };
            let got = rejoin(&edge, format, &room, bogus).await;
            assert_eq!(got.recovered, Some(Err(RecoveryFailure::EpochChanged)));
            assert_eq!(position(&got), (epoch.clone(), start));

            // More missing than the cap (20).
            let last = publish_n(api, &mut viewer, &room, 25, 2).await;
            let got = rejoin(&edge, format, &room, at(start)).await;
            assert_eq!(got.recovered, Some(Err(RecoveryFailure::TooMany)));
            assert_eq!(position(&got).1, last);
            // Within the cap it recovers.
            let got = rejoin(&edge, format, &room, at(last - 20)).await;
            assert_eq!(got.recovered, Some(Ok(())));

            // Level 1 stores P0-P2 only: a missed chat line cannot be replayed.
            let before = publish_n(api, &mut viewer, &room, 1, 2).await;
            publish_n(api, &mut viewer, &room, 1, 3).await;
            let last = publish_n(api, &mut viewer, &room, 1, 2).await;
            let got = rejoin(&edge, format, &room, at(before)).await;
            assert_eq!(got.recovered, Some(Err(RecoveryFailure::NotStored)));
            assert_eq!(position(&got).1, last);
        }
    });
}

#[test]
fn messages_older_than_the_history_are_too_old() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[
            "--history-levels",
            "5:300:3,500:300:3,1000:180:3,1000:120:2",
        ])
        .await;
        let edge = control.start_edge(io, "edge-a", &[]).await;
        let mut viewer = Client::connect_authed(&edge, WireFormat::WsJson, "viewer").await;
        let (_, details) = viewer.join_since("old", None).await;
        let (epoch, start) = position(&details);
        let last = publish_n(&control.api, &mut viewer, "old", 8, 1).await;
        let got = rejoin(
            &edge,
            WireFormat::Tcp,
            "old",
            Since {
                epoch: epoch.clone(),
                seq: start,
            },
        )
        .await;
        assert_eq!(got.recovered, Some(Err(RecoveryFailure::TooOld)));
        let got = rejoin(
            &edge,
            WireFormat::WsBinary,
            "old",
            Since {
                epoch,
                seq: last - 5,
            },
        )
        .await;
        assert_eq!(got.recovered, Some(Ok(())), "the last five are kept");
    });
}

#[test]
fn a_restarted_control_plane_changes_the_epoch_and_says_so() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut control = Control::start(&["--startup-grace-ms", "3000"]).await;
        let edge = control.start_edge(io, "edge-a", &[]).await;
        let mut viewer = Client::connect_authed(&edge, WireFormat::WsBinary, "viewer").await;
        let (_, details) = viewer.join_since("r", None).await;
        let (old_epoch, _) = position(&details);
        let last = publish_n(&control.api, &mut viewer, "r", 3, 1).await;
        control.restart().await;
        // The edge re-registers within the grace; a publish then is numbered on from the edges.
        let next = control
            .api
            .publish_retrying(&Target::Room("r".into()), 1, "gift", json!({}))
            .await;
        assert_eq!(
            next.seq,
            last + 1,
            "numbering continues from the edges' reports"
        );
        let got = rejoin(
            &edge,
            WireFormat::WsJson,
            "r",
            Since {
                epoch: old_epoch.clone(),
                seq: last,
            },
        )
        .await;
        assert_eq!(got.recovered, Some(Err(RecoveryFailure::EpochChanged)));
        let (new_epoch, at) = position(&got);
        assert_ne!(new_epoch, old_epoch);
        assert_eq!(at, last + 1);
    });
}

#[test]
fn the_user_channel_resumes_with_auth_and_history_reads_a_joined_room() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let edge = control.start_edge(io, "edge-a", &[]).await;
        let api = &control.api;
        for format in WireFormat::ALL {
            let user = format!("u-{}", format.index());
            let mut client = Client::connect(&edge, format).await;
            let (result, details) = client.auth_since(&token(&user), None).await;
            assert_eq!(result, Ok(()));
            let (epoch, start) = position(&details);
            drop(client);
            let to_user = Target::User(user.clone());
            for i in 0..3 {
                api.publish(&to_user, 1, "notice", json!({ "i": i })).await;
            }
            let mut client = Client::connect(&edge, format).await;
            let since = Since { epoch, seq: start };
            let (result, details) = client.auth_since(&token(&user), Some(since)).await;
            assert_eq!(result, Ok(()));
            assert_eq!(details.recovered, Some(Ok(())));
            let seqs: Vec<u64> = client
                .recv_messages(&to_user, 3, WAIT)
                .await
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(seqs, vec![start + 1, start + 2, start + 3]);

            // `history` of a joined room, and of one the connection is not in.
            let room = format!("h-{}", format.index());
            let (_, joined) = client.join_since(&room, None).await;
            let (_, from) = position(&joined);
            let last = publish_n(api, &mut client, &room, 6, 2).await;
            let (result, page) = client.history(&room, from + 2, 3).await;
            assert_eq!(result, Ok(()));
            let got: Vec<u64> = page
                .msgs
                .unwrap_or_default()
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(got, vec![from + 3, from + 4, from + 5]);
            assert_eq!(page.complete, Some(true));
            assert_eq!(page.last_seq, Some(last));
            let (result, _) = client.history("elsewhere", 0, 3).await;
            roomcast_tests::assert_error(result, "not_joined");
        }
    });
}
