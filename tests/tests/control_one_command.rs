//! The whole system from one command (issue 3, "One command on one machine"): `roomcast-control`
//! with its embedded edge; a newcomer mints a token, asks dispatch where to connect, joins and
//! sees a published message. Also its API document.

use roomcast_tests::control::{build_binaries, dispatch_addrs, healthy_edge_ids};
use roomcast_tests::{
    assert_error, assert_receives, for_each_driver, unix_now, Client, Control, Target, TcpClient,
    WireFormat, WsClient,
};
use serde_json::{json, Value};

#[test]
fn one_command_mints_tokens_dispatches_and_delivers_through_its_embedded_edge() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded(io, &[]).await;
        let embedded = control
            .embedded_edge
            .expect("started with an embedded edge");
        control.wait_ready().await;
        let edges = control.api.edges().await;
        let ids = healthy_edge_ids(&edges);
        assert_eq!(ids.len(), 1, "exactly the embedded edge: {edges:?}");
        let edge_id = ids.into_iter().next().unwrap();
        assert_eq!(
            edges[0]["ws_url"],
            format!("ws://{}/ws", embedded.ws_addr),
            "{edges:?}"
        );
        assert_eq!(edges[0]["workers"], 2, "--edge-workers 2: {edges:?}");

        let (token, expires_at) = control.api.mint_token("viewer", 600, &["r1"]).await;
        let now = unix_now();
        assert!(
            (now + 590..=now + 610).contains(&expires_at),
            "expires_at {expires_at} is not about now + 600 ({now})"
        );

        // Where to connect, without an API key, as an app would ask.
        let public = control.api.without_key();
        let ws_addrs = dispatch_addrs("ws", &public.dispatch("ws").await);
        assert_eq!(ws_addrs, [embedded.ws_addr].into());
        let tcp_addrs = dispatch_addrs("tcp", &public.dispatch("tcp").await);
        assert_eq!(tcp_addrs, [embedded.tcp_addr].into());

        let ws_addr = ws_addrs.into_iter().next().unwrap();
        let ws = WsClient::connect(ws_addr)
            .await
            .unwrap_or_else(|e| panic!("connect to the dispatched {ws_addr}: {e}"));
        let mut browser = Client::over_ws(WireFormat::WsJson, ws);
        assert_eq!(
            browser.auth(&token).await,
            Ok(()),
            "the minted token is accepted"
        );
        assert_eq!(browser.join("r1").await, Ok(()));
        // The token's rooms claim is enforced.
        assert_error(browser.join("r2").await, "room_forbidden");

        let tcp_addr = tcp_addrs.into_iter().next().unwrap();
        let tcp = TcpClient::connect(tcp_addr)
            .await
            .unwrap_or_else(|e| panic!("connect to the dispatched {tcp_addr}: {e}"));
        let mut app = Client::over_tcp(tcp);
        assert_eq!(app.auth(&token).await, Ok(()));
        assert_eq!(app.join("r1").await, Ok(()));

        control.wait_room_members("r1", &[(&edge_id, 2)]).await;
        let api = &control.api;
        let hello = api
            .publish(
                &Target::Room("r1".into()),
                2,
                "gift",
                json!({"gift": "rocket", "n": 1}),
            )
            .await;
        assert_eq!((hello.seq, hello.delivered_edges), (1, 1), "{hello:?}");
        let notice = api
            .publish(
                &Target::User("viewer".into()),
                1,
                "notice",
                json!({"text": "hi"}),
            )
            .await;
        assert_eq!(notice.delivered_edges, 1, "{notice:?}");
        for client in [&mut browser, &mut app] {
            assert_receives(client, &Target::Room("r1".into()), &[&hello]).await;
            assert_receives(client, &Target::User("viewer".into()), &[&notice]).await;
        }

        // A token from another secret is refused by the embedded edge.
        let mut stranger = Client::connect(&embedded, WireFormat::WsJson).await;
        let forged = roomcast_tests::tokens::token_signed_with_wrong_secret("viewer");
        assert_error(stranger.auth(&forged).await, "invalid_token");
    });
}

#[test]
fn the_openapi_document_describes_every_route() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded(io, &[]).await;
        // Public, like the probes.
        let response = control.api.without_key().get("/openapi.json").await;
        let doc = response.ok();
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(
            version.starts_with("3."),
            "an OpenAPI 3 document: {}",
            doc["openapi"]
        );
        let paths = doc["paths"]
            .as_object()
            .unwrap_or_else(|| panic!("no paths object in {doc}"));
        // Path parameters may have any name: compare with them blanked.
        let blank = |path: &str| {
            let mut out = String::new();
            let mut in_param = false;
            for c in path.chars() {
                match c {
                    '{' => {
                        in_param = true;
                        out.push_str("{}");
                    }
                    '}' => in_param = false,
                    _ if in_param => {}
                    _ => out.push(c),
                }
            }
            out
        };
        let documented: Vec<(String, &Value)> =
            paths.iter().map(|(p, ops)| (blank(p), ops)).collect();
        for (path, method) in [
            ("/v1/rooms/{}/messages", "post"),
            ("/v1/users/{}/messages", "post"),
            ("/v1/broadcast", "post"),
            ("/v1/messages", "post"),
            ("/v1/rooms/{}", "get"),
            ("/v1/users/{}", "get"),
            ("/v1/edges", "get"),
            ("/v1/dispatch", "get"),
            ("/v1/tokens", "post"),
            ("/healthz", "get"),
            ("/readyz", "get"),
        ] {
            let ops = documented
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, ops)| *ops)
                .unwrap_or_else(|| panic!("{path} is not documented; paths: {:?}", paths.keys()));
            assert!(
                ops.get(method).is_some(),
                "{method} {path} is not documented: {ops}"
            );
        }
    });
}
