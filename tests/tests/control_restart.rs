//! A control plane crash and restart (issue 3, "Router"; PROTOCOL.md §6): edges keep their
//! viewers while control is away, re-register with the restarted control, which rebuilds its
//! room and user maps from their reports and continues every channel's numbering where it
//! stopped.

use std::time::Duration;

use roomcast_tests::control::build_binaries;
use roomcast_tests::{
    assert_receives, assert_receives_all, for_each_driver, Client, ClientOp, Control, Target,
    WireFormat,
};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn restarting_control_keeps_every_connection_and_continues_the_numbering() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut control = Control::start(&[]).await;
        let mut a = control.start_edge(io, "edge-a", &[]).await;
        let mut b = control.start_edge(io, "edge-b", &[]).await;
        // alice on both edges, bob on edge-b; all in show.
        let mut alice_h5 = Client::connect_authed(&a, WireFormat::WsJson, "alice").await;
        let mut bob = Client::connect_authed(&b, WireFormat::Tcp, "bob").await;
        let mut alice_app = Client::connect_authed(&b, WireFormat::WsBinary, "alice").await;
        for client in [&mut alice_h5, &mut bob, &mut alice_app] {
            client.join("show").await.unwrap();
        }
        control
            .wait_room_members("show", &[("edge-a", 1), ("edge-b", 2)])
            .await;

        let show = Target::Room("show".into());
        let alice = Target::User("alice".into());
        let api = control.api.clone();
        let show_1 = api.publish(&show, 2, "gift", json!({"n": 1})).await;
        let show_2 = api.publish(&show, 3, "chat", json!("two")).await;
        let alice_1 = api
            .publish(&alice, 1, "notice", json!({"text": "one"}))
            .await;
        let all_1 = api
            .publish(&Target::Broadcast, 0, "system", json!({"n": 1}))
            .await;
        assert_eq!(
            [show_1.seq, show_2.seq, alice_1.seq, all_1.seq],
            [1, 2, 1, 1]
        );
        for client in [&mut alice_h5, &mut alice_app] {
            let expected = [
                (&show, &[&show_1, &show_2][..]),
                (&alice, &[&alice_1][..]),
                (&Target::Broadcast, &[&all_1][..]),
            ];
            assert_receives_all(client, &expected).await;
        }
        let expected = [
            (&show, &[&show_1, &show_2][..]),
            (&Target::Broadcast, &[&all_1][..]),
        ];
        assert_receives_all(&mut bob, &expected).await;

        control.kill();
        // The edges keep serving while control is away: their viewers notice nothing, and a
        // newcomer can still connect. Its auth and join (a user and a room new to the edge) are
        // answered once the restarted control plane has them routed (PROTOCOL.md §5).
        tokio::time::sleep(Duration::from_millis(500)).await;
        for client in [&mut alice_h5, &mut bob, &mut alice_app] {
            client
                .ping()
                .await
                .expect("still connected while control is away");
        }
        let mut newcomer = Client::connect(&a, WireFormat::Tcp).await;
        let auth_seq = newcomer.next_op_seq();
        newcomer
            .send(&ClientOp::Auth {
                seq: auth_seq,
                token: roomcast_tests::tokens::token("newcomer"),
                since: None,
            })
            .await;
        let join_seq = newcomer.next_op_seq();
        newcomer
            .send(&ClientOp::Join {
                seq: join_seq,
                room: "late".into(),
                since: None,
            })
            .await;
        newcomer.expect_silence(QUIET).await;
        a.assert_running();
        b.assert_running();

        control.restart().await;
        assert_eq!(
            newcomer.reply_to(auth_seq).await,
            Ok(()),
            "auth after the restart"
        );
        assert_eq!(
            newcomer.reply_to(join_seq).await,
            Ok(()),
            "join after the restart"
        );
        control.wait_ready().await;
        control
            .wait_healthy_edges(&["edge-a", "edge-b"], Duration::from_secs(10))
            .await;
        // Rebuilt from the edges' full reports (which also carry their last seqs).
        control
            .wait_room_members("show", &[("edge-a", 1), ("edge-b", 2)])
            .await;
        control.wait_room_members("late", &[("edge-a", 1)]).await;

        let show_3 = api.publish(&show, 2, "gift", json!({"n": 3})).await;
        let alice_2 = api
            .publish(&alice, 1, "notice", json!({"text": "two"}))
            .await;
        let all_2 = api
            .publish(&Target::Broadcast, 0, "system", json!({"n": 2}))
            .await;
        assert_eq!(
            [show_3.seq, alice_2.seq, all_2.seq],
            [3, 2, 2],
            "the numbering continues after the restart, it does not start again at 1"
        );
        assert_eq!(show_3.delivered_edges, 2, "{show_3:?}");
        assert_eq!(alice_2.delivered_edges, 2, "{alice_2:?}");
        assert_eq!(all_2.delivered_edges, 2, "{all_2:?}");
        let late_1 = api
            .publish(&Target::Room("late".into()), 3, "chat", json!("hi"))
            .await;
        assert_eq!(late_1.delivered_edges, 1, "{late_1:?}");

        for client in [&mut alice_h5, &mut alice_app] {
            let expected = [
                (&show, &[&show_3][..]),
                (&alice, &[&alice_2][..]),
                (&Target::Broadcast, &[&all_2][..]),
            ];
            assert_receives_all(client, &expected).await;
        }
        let expected = [(&show, &[&show_3][..]), (&Target::Broadcast, &[&all_2][..])];
        assert_receives_all(&mut bob, &expected).await;
        let late = Target::Room("late".into());
        let expected = [(&late, &[&late_1][..]), (&Target::Broadcast, &[&all_2][..])];
        assert_receives_all(&mut newcomer, &expected).await;
        for client in [&mut alice_h5, &mut bob, &mut alice_app, &mut newcomer] {
            client.expect_silence(QUIET).await;
            client
                .ping()
                .await
                .expect("still connected after the restart");
        }
    });
}

#[test]
fn an_edge_started_while_control_is_down_registers_once_control_is_up() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut control = Control::start(&[]).await;
        control.kill();
        let edge =
            roomcast_tests::LinkedEdge::spawn(io, &control.link_addr.to_string(), "edge-a", &[]);
        // Let it fail a few dials and back off.
        tokio::time::sleep(Duration::from_millis(800)).await;
        control.restart().await;
        control
            .wait_healthy_edges(&["edge-a"], Duration::from_secs(10))
            .await;
        let mut viewer = Client::connect_authed(&edge, WireFormat::WsJson, "viewer").await;
        viewer.join("r1").await.unwrap();
        control.wait_room_members("r1", &[("edge-a", 1)]).await;
        let sent = control
            .api
            .publish(&Target::Room("r1".into()), 2, "gift", json!({"n": 1}))
            .await;
        assert_eq!((sent.seq, sent.delivered_edges), (1, 1), "{sent:?}");
        assert_receives(&mut viewer, &Target::Room("r1".into()), &[&sent]).await;
    });
}
