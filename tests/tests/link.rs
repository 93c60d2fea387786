//! The control ↔ edge link (PROTOCOL.md §6): register, re-dial after a drop, load reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use roomcast_tests::edge::{EDGE_ID, WORKERS};
use roomcast_tests::{
    for_each_driver, members_in_every_format, Client, Edge, LoadReport, Target, WireFormat, WAIT,
};

#[test]
fn the_register_frame_describes_the_edge() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &["--max-connections", "1234"]).await;
        let register = &edge.register;
        assert_eq!(register.edge_id, EDGE_ID);
        assert_eq!(register.workers, WORKERS);
        assert_eq!(register.capacity, 1234);
        for addr in [edge.ws_addr, edge.tcp_addr] {
            assert_eq!(addr.ip().to_string(), "127.0.0.1", "{register:?}");
            assert_ne!(
                addr.port(),
                0,
                "the real port, not the requested 0: {register:?}"
            );
        }
        assert_ne!(edge.ws_addr, edge.tcp_addr);
        if !register.admin_addr.is_empty() {
            register
                .admin_addr
                .parse::<SocketAddr>()
                .expect("admin_addr is ip:port or empty");
        }
    });
}

#[test]
fn the_edge_redials_a_dropped_link_and_its_clients_stay_connected() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let first_register = edge.register.clone();
        let mut members = members_in_every_format(&edge, "r1").await;
        let room = Target::Room("r1".into());
        let sent = edge
            .link
            .publish_room("r1", 2, "gift", r#"{"before":"drop"}"#)
            .await;
        for member in &mut members {
            assert_eq!(
                member.recv_messages(&room, 1, WAIT).await,
                vec![sent.clone()]
            );
        }

        for round in 1..=2u64 {
            edge.link.drop_link();
            // Clients do not notice the control plane going away.
            for member in &mut members {
                member.ping().await.unwrap();
            }
            let register = tokio::time::timeout(WAIT, edge.link.accept_register())
                .await
                .unwrap_or_else(|_| {
                    panic!("the edge did not re-dial within {WAIT:?} (drop {round})")
                });
            assert_eq!(
                register, first_register,
                "the edge re-registers as the same edge"
            );

            let sent = edge
                .link
                .publish_room("r1", 3, "chat", &format!(r#"{{"after_drop":{round}}}"#))
                .await;
            assert_eq!(
                sent.seq,
                1 + round,
                "the control plane's numbering continues"
            );
            for member in &mut members {
                assert_eq!(
                    member.recv_messages(&room, 1, WAIT).await,
                    vec![sent.clone()],
                    "{}",
                    member.label
                );
            }
        }
        edge.assert_running();
    });
}

/// The edge's room and user counts as the control plane sees them: full reports replace the
/// picture, the others update it (a count of 0 means gone).
#[derive(Debug, Default, PartialEq, Eq)]
struct LoadPicture {
    connections: u32,
    rooms: HashMap<String, u32>,
    users: HashMap<String, u32>,
}

impl LoadPicture {
    fn apply(&mut self, report: &LoadReport) {
        self.connections = report.connections;
        if report.full {
            self.rooms.clear();
            self.users.clear();
        }
        for (map, entries) in [
            (&mut self.rooms, &report.rooms),
            (&mut self.users, &report.users),
        ] {
            for (id, count) in entries {
                match count {
                    0 => map.remove(id),
                    n => map.insert(id.clone(), *n),
                };
            }
        }
    }
}

fn picture(connections: u32, rooms: &[(&str, u32)], users: &[(&str, u32)]) -> LoadPicture {
    let map = |pairs: &[(&str, u32)]| pairs.iter().map(|(id, n)| (id.to_string(), *n)).collect();
    LoadPicture {
        connections,
        rooms: map(rooms),
        users: map(users),
    }
}

/// Applies load reports until the picture equals `expected`; panics after `WAIT`.
async fn wait_for_picture(edge: &mut Edge, seen: &mut LoadPicture, expected: &LoadPicture) {
    if seen == expected {
        return;
    }
    edge.link
        .load_reports_until(WAIT, |report| {
            seen.apply(report);
            *seen == *expected
        })
        .await;
}

#[test]
fn load_reports_come_every_second_with_connection_room_and_user_counts() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;

        // The first report after register is full: an empty edge.
        let first = edge.link.next_load_report(Duration::from_secs(3)).await;
        assert!(
            first.full,
            "the first report after register must be full: {first:?}"
        );
        let mut seen = LoadPicture::default();
        seen.apply(&first);
        assert_eq!(seen, picture(0, &[], &[]), "{first:?}");

        // Alice on the app (TCP) and the web (WebSocket), bob on the web.
        let mut alice_app = Client::connect_authed(&edge, WireFormat::Tcp, "alice").await;
        let mut alice_web = Client::connect_authed(&edge, WireFormat::WsJson, "alice").await;
        let mut bob = Client::connect_authed(&edge, WireFormat::WsBinary, "bob").await;
        for client in [&mut alice_app, &mut alice_web, &mut bob] {
            client.join("r1").await.unwrap();
        }
        alice_web.join("r2").await.unwrap();
        let expected = picture(3, &[("r1", 3), ("r2", 1)], &[("alice", 2), ("bob", 1)]);
        wait_for_picture(&mut edge, &mut seen, &expected).await;

        // Reports that follow are deltas, about a second apart.
        let mut previous = edge.link.last_arrival();
        for _ in 0..3 {
            let report = edge.link.next_load_report(Duration::from_secs(3)).await;
            let gap = edge.link.last_arrival() - previous;
            previous = edge.link.last_arrival();
            assert!(
                !report.full,
                "only the first report after register is full: {report:?}"
            );
            assert!(
                (Duration::from_millis(500)..=Duration::from_millis(2000)).contains(&gap),
                "load reports {gap:?} apart"
            );
            seen.apply(&report);
            assert_eq!(
                seen, expected,
                "nothing changed, yet the picture did: {report:?}"
            );
        }

        // Leaving and disconnecting show up as changes, r2 as gone.
        bob.leave("r1").await.unwrap();
        alice_web.leave("r2").await.unwrap();
        alice_app.close().await;
        let expected = picture(2, &[("r1", 1)], &[("alice", 1), ("bob", 1)]);
        wait_for_picture(&mut edge, &mut seen, &expected).await;

        // After a re-dial the first report is full again and complete on its own.
        edge.link.drop_link();
        tokio::time::timeout(WAIT, edge.link.accept_register())
            .await
            .expect("the edge re-dials within 10 s");
        let after_redial = edge.link.next_load_report(Duration::from_secs(3)).await;
        assert!(
            after_redial.full,
            "the first report after re-register must be full: {after_redial:?}"
        );
        let mut fresh = LoadPicture::default();
        fresh.apply(&after_redial);
        assert_eq!(fresh, expected, "{after_redial:?}");
    });
}
