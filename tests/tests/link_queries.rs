//! What the control plane asks an edge over the link (PROTOCOL.md §6): a user's connections, and
//! the last sequence number of each channel in full load reports.

use std::time::Duration;

use roomcast_tests::{for_each_driver, Client, Edge, Target, WireFormat, WAIT};

#[test]
fn query_user_lists_every_connection_of_the_user_with_its_encoding_peer_and_rooms() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        let mut ws = Client::connect_authed(&edge, WireFormat::WsJson, "u1").await;
        let mut tcp = Client::connect_authed(&edge, WireFormat::Tcp, "u1").await;
        let _other = Client::connect_authed(&edge, WireFormat::WsBinary, "u2").await;
        assert_eq!(ws.join("r1").await, Ok(()));
        assert_eq!(ws.join("r2").await, Ok(()));
        assert_eq!(tcp.join("r3").await, Ok(()));

        let answer = edge.link.query_user(7, "u1").await;
        assert_eq!(answer.request, 7);
        assert_eq!(answer.user, "u1");
        let mut conns = answer.conns;
        conns.sort_by_key(|c| c.format.index());
        assert_eq!(conns.len(), 2, "{conns:?}");
        assert_eq!(conns[0].format, WireFormat::WsJson);
        assert_eq!(conns[0].peer, ws.local_addr().to_string());
        let mut rooms = conns[0].rooms.clone();
        rooms.sort();
        assert_eq!(rooms, ["r1", "r2"]);
        assert_eq!(conns[1].format, WireFormat::Tcp);
        assert_eq!(conns[1].peer, tcp.local_addr().to_string());
        assert_eq!(conns[1].rooms, ["r3"]);

        let nobody = edge.link.query_user(8, "nobody").await;
        assert_eq!((nobody.request, nobody.conns.len()), (8, 0));
    });
}

#[test]
fn a_full_load_report_carries_the_last_seq_of_each_channel_the_edge_holds() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--tick-ms", "0"]).await;
        let mut member = Client::connect_authed(&edge, WireFormat::Tcp, "u1").await;
        assert_eq!(member.join("r1").await, Ok(()));
        let room = Target::Room("r1".into());
        let mut last = None;
        for n in 0..3 {
            last = Some(
                edge.link
                    .publish_room("r1", 2, "chat", &n.to_string())
                    .await,
            );
        }
        let last = last.expect("published");
        member.recv_messages(&room, 3, WAIT).await;

        // Re-dial: the first report after register is full and names r1's last seq.
        edge.link.drop_link();
        tokio::time::timeout(WAIT, edge.link.accept_register())
            .await
            .expect("the edge re-dials");
        let reports = edge
            .link
            .load_reports_until(Duration::from_secs(5), |r| r.full)
            .await;
        let full = reports.last().expect("a full report");
        assert!(
            full.seqs.contains(&(room.clone(), last.seq)),
            "seqs {:?} should hold r1 at {}",
            full.seqs,
            last.seq
        );
        let later = edge
            .link
            .load_reports_until(Duration::from_secs(5), |r| !r.full)
            .await;
        assert!(
            later.last().expect("a report").seqs.is_empty(),
            "only full reports carry seqs"
        );
    });
}

/// Well under the 5 s regular report interval the test sets.
const EARLY: Duration = Duration::from_millis(2500);

#[test]
fn a_room_appearing_on_the_edge_is_reported_at_once_not_at_the_next_regular_report() {
    for_each_driver(|io| async move {
        // Regular reports every 5 s: a report naming the new channel well before that is the early
        // membership report. (Its exact 20 ms delay is pinned by the hub core's unit tests; here
        // the bound only has to tell the two kinds of report apart on a loaded machine.)
        let mut edge = Edge::start(io, &["--report-interval-ms", "5000"]).await;
        edge.link
            .load_reports_until(Duration::from_secs(7), |r| r.full)
            .await;
        let authed_at = tokio::time::Instant::now();
        let mut member = Client::connect_authed(&edge, WireFormat::WsJson, "u9").await;
        // The user's channel is reported before its auth is answered (PROTOCOL.md §5).
        edge.link
            .load_reports_until(EARLY, |r| {
                r.users.iter().any(|(user, n)| user == "u9" && *n >= 1)
            })
            .await;
        let elapsed = edge.link.last_arrival().duration_since(authed_at);
        assert!(elapsed < EARLY, "{elapsed:?}");
        let joined_at = tokio::time::Instant::now();
        assert_eq!(member.join("fresh").await, Ok(()));
        let reports = edge
            .link
            .load_reports_until(EARLY, |r| {
                r.rooms.iter().any(|(room, n)| room == "fresh" && *n >= 1)
            })
            .await;
        let elapsed = edge.link.last_arrival().duration_since(joined_at);
        assert!(elapsed < EARLY, "{elapsed:?}: {reports:?}");

        // Leaving is reported early too (0 = gone), so the control plane stops routing here.
        assert_eq!(member.leave("fresh").await, Ok(()));
        edge.link
            .load_reports_until(EARLY, |r| {
                r.rooms.iter().any(|(room, n)| room == "fresh" && *n == 0)
            })
            .await;
    });
}
