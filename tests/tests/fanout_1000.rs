//! Fan-out at scale: one room with a thousand members on a mix of transports.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use roomcast_tests::{for_each_driver, Client, Edge, PushMessage, Target, WireFormat};

const MEMBERS: [(WireFormat, usize); 3] = [
    (WireFormat::WsJson, 500),
    (WireFormat::WsBinary, 300),
    (WireFormat::Tcp, 200),
];
const MESSAGES: u64 = 200;
/// Connections set up at the same time.
const CONNECTING_AT_ONCE: usize = 64;

#[test]
fn a_thousand_members_each_get_every_message_exactly_once_in_order() {
    for_each_driver(|io| async move {
        let started = Instant::now();
        let mut edge = Edge::start(io, &["--tick-ms", "50", "--max-connections", "5000"]).await;
        let room = Target::Room("big".into());

        let formats = MEMBERS
            .iter()
            .flat_map(|&(format, n)| std::iter::repeat_n(format, n));
        let edge_ref = &edge;
        let members: Vec<Client> = stream::iter(formats.enumerate())
            .map(|(i, format)| async move {
                let mut client =
                    Client::connect_authed(edge_ref, format, &format!("viewer-{i}")).await;
                client
                    .join("big")
                    .await
                    .unwrap_or_else(|e| panic!("viewer-{i} joins: {e:?}"));
                client
            })
            .buffer_unordered(CONNECTING_AT_ONCE)
            .collect()
            .await;
        assert_eq!(members.len(), 1000);
        let connected = started.elapsed();

        // Every member reads on its own task, from before the first publish.
        let readers: Vec<_> = members
            .into_iter()
            .map(|mut client| {
                let room = room.clone();
                tokio::spawn(async move {
                    let got = client
                        .recv_messages(&room, MESSAGES as usize, Duration::from_secs(15))
                        .await;
                    client.expect_silence(Duration::from_millis(200)).await;
                    (client.label, got)
                })
            })
            .collect();

        // 200 messages of priorities 1–3, in bursts of 10 every 10 ms.
        let mut sent: Vec<PushMessage> = Vec::new();
        for i in 0..MESSAGES {
            let priority = 1 + (i % 3) as u8;
            let kind = ["big_gift", "small_gift", "chat"][usize::from(priority) - 1];
            let data = format!(r#"{{"i":{i},"from":"u{}"}}"#, i * 7 % 1000);
            sent.push(edge.link.publish_room("big", priority, kind, &data).await);
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        for reader in futures_util::future::join_all(readers).await {
            let (label, got) = reader.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            if got != sent {
                let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
                panic!("{label}: got seqs {seqs:?}, expected 1..={MESSAGES} with the published content");
            }
        }
        eprintln!(
            "{io}: 1000 members connected in {connected:?}, all messages delivered after {:?}",
            started.elapsed()
        );
        edge.assert_running();
    });
}
