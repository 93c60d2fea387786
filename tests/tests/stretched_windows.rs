//! Windows that follow the fan-out (PROTOCOL.md §5): while the edge is still writing a channel's
//! previous batch, the next window stays open — even with no merge window at all (tick 0) — and
//! closes once that batch is written. A reader that falls behind then gets what piled up meanwhile
//! in fewer, bigger frames: every message exactly once, intact, in publish order.

use std::time::Duration;

use roomcast_tests::raw::connect_with_small_recv_buffer;
use roomcast_tests::{for_each_driver, Client, Edge, Incoming, PushMessage, Target, TcpClient};

const MESSAGES: usize = 60;
/// 60 × 2 KiB is far more than the reader's socket buffers hold, and well within the edge's queue
/// soft bound (256 KiB), so nothing may be shed.
const SIZE: usize = 2048;

fn payload(i: usize) -> String {
    let head = format!(r#"{{"i":{i},"pad":""#);
    format!("{head}{}\"}}", "x".repeat(SIZE - head.len() - 2))
}

#[test]
fn with_no_window_a_reader_that_falls_behind_gets_merged_frames_with_every_message_in_order() {
    for_each_driver(|io| async move {
        #[rustfmt::skip]
        let mut edge = Edge::start(io, &[
            "--tick-ms", "0",
            "--socket-send-buffer-bytes", "16384",
        ])
        .await;
        let room = Target::Room("r1".into());
        // The only member reads through a 4 KiB receive buffer, and not at all while we publish.
        let tcp = connect_with_small_recv_buffer(edge.tcp_addr, 4096).await;
        let mut reader = Client::over_tcp(TcpClient::over(tcp));
        reader.authenticate("reader").await;
        reader.join("r1").await.expect("join");

        let mut sent: Vec<PushMessage> = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            sent.push(edge.link.publish_room("r1", 3, "chat", &payload(i)).await);
        }

        let mut frames = 0;
        let mut got: Vec<PushMessage> = Vec::new();
        while got.len() < MESSAGES {
            match reader.next_within(Duration::from_secs(15)).await {
                Some(Incoming::Batch { target, msgs, .. }) if target == room => {
                    frames += 1;
                    got.extend(msgs);
                }
                other => panic!(
                    "{io}: after {} of {MESSAGES} messages, expected a batch, got {other:?}",
                    got.len()
                ),
            }
        }
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = sent.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, expected, "{io}: every message once, in publish order");
        assert!(got == sent, "{io}: a message arrived altered");
        // With a fixed tick of 0 every publish would be a frame of its own; here the messages that
        // arrived while a batch was still being written rode together.
        assert!(
            frames < MESSAGES,
            "{io}: {frames} frames for {MESSAGES} messages: no window stretched"
        );
        assert!(
            reader
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "{io}: nothing after the last message"
        );
        edge.assert_running();
    });
}
