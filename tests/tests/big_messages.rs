//! Big messages (PROTOCOL.md §5): a healthy reader receives every message whatever its size and
//! however many bytes one window's batch holds, and a batch over the frame bound is split into
//! several frames, each message in exactly one of them, in publish order.

use std::time::{Duration, Instant};

use roomcast_tests::{for_each_driver, Client, Edge, Incoming, PushMessage, Target, WireFormat};

const READERS: usize = 6;
/// Publishes per second of the streams.
const RATE: u32 = 200;
/// The edge's bound on the messages of one batch frame (`MAX_FRAME_MESSAGE_BYTES`).
const FRAME_BOUND: usize = 64 * 1024;
/// How long a reader may wait for the next frame of a stream.
const READ_WAIT: Duration = Duration::from_secs(15);

fn room(id: &str) -> Target {
    Target::Room(id.to_owned())
}

/// A JSON value of about `size` bytes that names its message.
fn payload(i: usize, size: usize) -> String {
    let head = format!(r#"{{"i":{i},"pad":""#);
    let pad = "x".repeat(size.saturating_sub(head.len() + 2));
    format!("{head}{pad}\"}}")
}

/// Connects `READERS` members of `room_id`, cycling through the wire formats.
async fn readers(edge: &Edge, room_id: &str) -> Vec<Client> {
    let mut readers = Vec::new();
    for i in 0..READERS {
        let format = WireFormat::ALL[i % 3];
        let mut client = Client::connect_authed(edge, format, &format!("reader-{i}")).await;
        client.join(room_id).await.expect("join the room");
        readers.push(client);
    }
    readers
}

/// Reads batches for `target` until `count` messages came; returns them grouped as they arrived.
async fn read_batches(client: &mut Client, target: &Target, count: usize) -> Vec<Vec<PushMessage>> {
    let mut batches: Vec<Vec<PushMessage>> = Vec::new();
    let mut got = 0;
    while got < count {
        match client.next_within(READ_WAIT).await {
            Some(Incoming::Batch {
                target: t, msgs, ..
            }) if t == *target => {
                got += msgs.len();
                batches.push(msgs);
            }
            other => {
                let seqs: Vec<u64> = batches.iter().flatten().map(|m| m.seq).collect();
                panic!(
                    "{}: after {got} of {count} messages (seqs {}), expected a batch, got {other:?}",
                    client.label,
                    summarize(&seqs)
                );
            }
        }
    }
    batches
}

/// `1..=400` style ranges of a seq list, so a failure shows what went missing.
fn summarize(seqs: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end = seqs[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}..={end}")
        });
        i += 1;
    }
    format!("[{}] ({} messages)", out.join(", "), seqs.len())
}

/// Streams `count` messages of `size` bytes at `RATE` per second to a room of `READERS` members
/// and checks that every member got all of them, in order and intact.
async fn stream_reaches_every_reader(edge: &mut Edge, room_id: &str, size: usize, count: usize) {
    let target = room(room_id);
    let mut tasks = Vec::new();
    for mut client in readers(edge, room_id).await {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let batches = read_batches(&mut client, &target, count).await;
            (client.label, batches)
        }));
    }
    let mut sent = Vec::with_capacity(count);
    let start = Instant::now();
    let every = Duration::from_secs(1) / RATE;
    for i in 0..count {
        sent.push(
            edge.link
                .publish_room(room_id, 2 + (i % 2) as u8, "big", &payload(i, size))
                .await,
        );
        tokio::time::sleep_until((start + every * (i as u32 + 1)).into()).await;
    }
    for task in futures_util::future::join_all(tasks).await {
        let (label, batches) = task.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let got: Vec<PushMessage> = batches.into_iter().flatten().collect();
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = sent.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            expected,
            "{label}: {size}-byte messages: got {}, expected {}",
            summarize(&seqs),
            summarize(&expected)
        );
        for (got, sent) in got.iter().zip(&sent) {
            assert!(got == sent, "{label}: message {} arrived altered", sent.seq);
        }
    }
}

#[test]
fn healthy_readers_get_every_big_message_with_the_default_queue_bounds() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        // 16 KiB at 200/s: a 100 ms window holds ~320 KiB, over the 256 KiB soft bound.
        stream_reaches_every_reader(&mut edge, "small-big", 16 * 1024, 400).await;
        // 64 KiB at 200/s: a window holds ~1.3 MiB, over the 1 MiB hard bound too.
        stream_reaches_every_reader(&mut edge, "big-big", 64 * 1024, 100).await;
        edge.assert_running();
    });
}

#[test]
fn a_window_over_the_frame_bound_arrives_as_several_frames_each_message_once() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--tick-ms", "1000"]).await;
        let target = room("split");
        let mut members = readers(&edge, "split").await;

        // The first publish to a quiet room goes out at once and starts the 1 s tick; the next
        // ones collect in one window.
        let opener = edge.link.publish_room("split", 3, "open", "1").await;
        for member in &mut members {
            let got = read_batches(member, &target, 1).await;
            assert_eq!(got, vec![vec![opener.clone()]], "{}", member.label);
        }
        // 12 × 16 KiB, one 100 KiB message (over the bound alone), then 4 × 16 KiB: ~356 KiB.
        let mut sizes = vec![16 * 1024; 12];
        sizes.push(100 * 1024);
        sizes.extend([16 * 1024; 4]);
        let mut sent = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            sent.push(
                edge.link
                    .publish_room("split", 3, "big", &payload(i, size))
                    .await,
            );
        }

        let mut groupings = Vec::new();
        for member in &mut members {
            let batches = read_batches(member, &target, sent.len()).await;
            let label = &member.label;
            assert!(
                batches.len() >= 3,
                "{label}: a ~356 KiB window came as {} frame(s), expected it split at 64 KiB",
                batches.len()
            );
            for batch in &batches {
                let bytes: usize = batch.iter().map(|m| m.data.len()).sum();
                assert!(
                    batch.len() == 1 || bytes <= FRAME_BOUND,
                    "{label}: a frame of {} messages holds {bytes} bytes of data, over the bound",
                    batch.len()
                );
            }
            let got: Vec<&PushMessage> = batches.iter().flatten().collect();
            let expected: Vec<&PushMessage> = sent.iter().collect();
            assert!(
                got == expected,
                "{label}: expected each message exactly once in publish order, got seqs {:?}",
                got.iter().map(|m| m.seq).collect::<Vec<_>>()
            );
            // The 100 KiB message is a frame of its own.
            assert!(
                batches
                    .iter()
                    .any(|b| b.len() == 1 && b[0].seq == sent[12].seq),
                "{label}: the 100 KiB message shares a frame"
            );
            groupings.push((
                label.clone(),
                batches
                    .iter()
                    .map(|b| b.iter().map(|m| m.seq).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            ));
        }
        // One split per window, shared by every wire format.
        for (label, grouping) in &groupings[1..] {
            assert_eq!(
                grouping, &groupings[0].1,
                "{label} and {} got the window split differently",
                groupings[0].0
            );
        }
        edge.assert_running();
    });
}
