//! Rate levels (issue 3, "Rate levels and backoff"): a room's level follows its global online
//! count (summed over edges), raising at once and lowering only after the dwell, is visible in
//! `GET /v1/rooms/{room}`, and is pushed to the edges, whose merge window becomes the level's
//! tick.

use std::time::Duration;

use roomcast_tests::control::build_binaries;
use roomcast_tests::http::{poll, Request};
use roomcast_tests::{
    for_each_driver, Client, Control, Incoming, LinkedEdge, Target, WireFormat, WAIT,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Thresholds small enough for a handful of viewers: levels 2, 3, 4 at 2, 4, 6 online.
const THRESHOLDS: &str = "2,4,6";
/// The default ticks of levels 1–4.
const TICKS_MS: [u64; 4] = [100, 250, 500, 1000];

/// Waits until `GET /v1/rooms/{room}` shows `online`, `level` and `tick_ms`, and returns it.
async fn wait_level(control: &Control, room: &str, online: u64, level: u64) -> Value {
    let api = &control.api;
    let target = format!("/v1/rooms/{room}");
    let target = &target;
    let tick_ms = TICKS_MS[level as usize - 1];
    poll(
        &format!("room {room}: online {online}, level {level}, tick {tick_ms} ms"),
        WAIT,
        || async move {
            let response = api.try_send(Request::new("GET", target)).await?;
            let answer: Value = response.json();
            if answer["online"] == online
                && answer["level"] == level
                && answer["tick_ms"] == tick_ms
            {
                Ok(answer)
            } else {
                Err(format!("{response:?}"))
            }
        },
    )
    .await
}

/// Connects `n` more viewers to `edge`, joined to `room`, numbered from `first`.
async fn add_viewers(
    edge: &LinkedEdge,
    room: &str,
    first: usize,
    n: usize,
    into: &mut Vec<Client>,
) {
    for i in first..first + n {
        let format = WireFormat::ALL[i % 3];
        let mut viewer = Client::connect_authed(edge, format, &format!("viewer-{i}")).await;
        viewer.join(room).await.unwrap();
        into.push(viewer);
    }
}

#[test]
fn a_rooms_level_rises_with_its_online_count_over_all_edges_and_sets_the_edges_tick() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&["--level-thresholds", THRESHOLDS]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        let mut viewers = Vec::new();

        add_viewers(&a, "show", 0, 1, &mut viewers).await;
        wait_level(&control, "show", 1, 1).await;
        // 3 online, split over both edges: level 2.
        add_viewers(&b, "show", 1, 2, &mut viewers).await;
        wait_level(&control, "show", 3, 2).await;
        add_viewers(&a, "show", 3, 2, &mut viewers).await;
        wait_level(&control, "show", 5, 3).await;
        add_viewers(&b, "show", 5, 2, &mut viewers).await;
        let show = wait_level(&control, "show", 7, 4).await;
        assert_eq!(show["edges"].as_array().map(Vec::len), Some(2), "{show}");

        // The edges now merge show's publishes over a 1 s tick: the first of three quick
        // publishes goes out at once, the other two together one tick later.
        let room = Target::Room("show".into());
        for viewer in &mut viewers {
            viewer.expect_silence(Duration::ZERO).await;
        }
        for i in 0..3 {
            control.api.publish(&room, 3, "chat", json!(i)).await;
        }
        for (i, viewer) in viewers.iter_mut().enumerate() {
            let first = next_batch(viewer, &room).await;
            let first_at = Instant::now();
            assert_eq!(first.len(), 1, "{}: {first:?}", viewer.label);
            let second = next_batch(viewer, &room).await;
            let gap = first_at.elapsed();
            assert_eq!(
                second.len(),
                2,
                "{}: merged into one batch: {second:?}",
                viewer.label
            );
            // Viewers are read one after another, so only the first one's gap is a measure.
            if i == 0 {
                assert!(
                    gap >= Duration::from_millis(600),
                    "the second batch came {gap:?} after the first: not a 1 s tick"
                );
            }
        }
    });
}

/// The messages of the next batch for `target`; panics on anything else.
async fn next_batch(client: &mut Client, target: &Target) -> Vec<roomcast_tests::PushMessage> {
    match client.next(WAIT).await {
        Incoming::Batch {
            target: t, msgs, ..
        } if t == *target => msgs,
        other => panic!(
            "{}: expected a batch for {target:?}, got {other:?}",
            client.label
        ),
    }
}

#[test]
fn a_rooms_level_falls_only_after_the_count_stays_low_for_the_dwell() {
    build_binaries();
    for_each_driver(|io| async move {
        const DWELL_MS: u64 = 2000;
        let dwell = DWELL_MS.to_string();
        let control =
            Control::start(&["--level-thresholds", THRESHOLDS, "--level-dwell-ms", &dwell]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let mut viewers = Vec::new();
        add_viewers(&a, "show", 0, 3, &mut viewers).await;
        wait_level(&control, "show", 3, 2).await;

        // Two leave: 1 online, under level 2's lowering margin, but the level holds for the
        // dwell.
        for viewer in viewers.iter_mut().skip(1) {
            viewer.leave("show").await.unwrap();
        }
        let low = control.wait_room_members("show", &[("edge-a", 1)]).await;
        let low_seen = Instant::now();
        assert_eq!(
            (low["level"].as_u64(), low["tick_ms"].as_u64()),
            (Some(2), Some(250)),
            "the level fell at once: {low}"
        );
        wait_level(&control, "show", 1, 1).await;
        let took = low_seen.elapsed();
        assert!(
            took >= Duration::from_millis(DWELL_MS - 500),
            "the level fell {took:?} after the count did, before the {DWELL_MS} ms dwell"
        );
        // Levels are re-evaluated once a second, so allow that much (and a little) over.
        assert!(
            took <= Duration::from_millis(DWELL_MS + 2000),
            "the level fell {took:?} after the count did, long after the {DWELL_MS} ms dwell"
        );
        eprintln!("the level fell {took:?} after the count did (dwell {DWELL_MS} ms)");

        // The room is still served at its new level.
        let room = Target::Room("show".into());
        let first = control.api.publish(&room, 3, "chat", json!(1)).await;
        assert_eq!(first.delivered_edges, 1);
        let got = viewers[0].recv_messages(&room, 1, WAIT).await;
        assert_eq!(got[0].seq, first.seq);
    });
}
