//! `GET /v1/users/{user}` across edges: send each edge a `query user` link frame with a request
//! id unique in this process, and match the `user connections` answers the link readers hand
//! back. Edges that do not answer in time are reported, not waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use roomcast_proto::client::WireFormat;
use roomcast_proto::link::{self, ConnInfo, LinkFrame, QueryUser, UserConns};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::router::QueryTarget;

/// Pending user queries, keyed by request id.
#[derive(Default)]
pub struct UserQueries {
    next_request: AtomicU32,
    pending: Mutex<HashMap<u32, oneshot::Sender<UserConns>>>,
}

/// One connection of the user, as `GET /v1/users/{user}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnView {
    pub edge_id: String,
    /// `ws` or `tcp`.
    pub transport: &'static str,
    /// `json` or `binary`.
    pub encoding: &'static str,
    /// The client's `ip:port` as the edge sees it.
    pub peer: String,
    pub rooms: Vec<String>,
}

impl ConnView {
    fn new(edge_id: &str, conn: ConnInfo) -> ConnView {
        let (transport, encoding) = match conn.format {
            WireFormat::WsJson => ("ws", "json"),
            WireFormat::WsBinary => ("ws", "binary"),
            WireFormat::Tcp => ("tcp", "binary"),
        };
        ConnView {
            edge_id: edge_id.to_owned(),
            transport,
            encoding,
            peer: conn.peer,
            rooms: conn.rooms,
        }
    }
}

/// The answer to one user lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub user: String,
    pub connections: Vec<ConnView>,
    /// Edges asked that did not answer within the timeout (their connections are unknown).
    pub unanswered_edges: Vec<String>,
}

impl UserQueries {
    pub fn new() -> UserQueries {
        UserQueries::default()
    }

    /// Asks every edge in `targets` for `user`'s connections and waits up to `timeout` for all
    /// answers. `user` must be a valid id.
    pub async fn ask(&self, user: &str, targets: Vec<QueryTarget>, timeout: Duration) -> UserView {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting = Vec::with_capacity(targets.len());
        for target in targets {
            let request = self.next_request.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.lock().insert(request, tx);
            let frame = LinkFrame::QueryUser(QueryUser {
                request,
                user: user.to_owned(),
            });
            let mut out = BytesMut::new();
            let sent = match link::encode(&frame, &mut out) {
                Ok(()) => target.link.send(out.freeze()),
                Err(error) => {
                    tracing::error!(%error, "cannot encode a user query");
                    false
                }
            };
            waiting.push((target.edge_id, request, sent.then_some(rx)));
        }
        let mut view = UserView {
            user: user.to_owned(),
            connections: Vec::new(),
            unanswered_edges: Vec::new(),
        };
        for (edge_id, request, rx) in waiting {
            let answer = match rx {
                Some(rx) => tokio::time::timeout_at(deadline, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            match answer {
                Some(answer) if answer.user == user => view
                    .connections
                    .extend(answer.conns.into_iter().map(|c| ConnView::new(&edge_id, c))),
                _ => {
                    self.lock().remove(&request);
                    view.unanswered_edges.push(edge_id);
                }
            }
        }
        view
    }

    /// Hands an edge's `user connections` frame to the lookup waiting for it. Answers nobody
    /// waits for any more (timed out) are dropped.
    pub fn answer(&self, conns: UserConns) {
        if let Some(tx) = self.lock().remove(&conns.request) {
            let _ = tx.send(conns);
        }
    }

    /// Lookups still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<UserConns>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::{router, FakeEdge};
    use std::sync::Arc;

    #[tokio::test]
    async fn matches_answers_by_request_and_lists_silent_edges() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 10);
        let mut e2 = FakeEdge::register(&r, "e2", 10);
        let queries = Arc::new(UserQueries::new());
        let q = Arc::clone(&queries);
        let targets = r.query_targets();
        let lookup =
            tokio::spawn(async move { q.ask("u1", targets, Duration::from_millis(300)).await });
        // e1 answers its query; e2 stays silent.
        let query = loop {
            let frames = e1.frames();
            if let Some(LinkFrame::QueryUser(q)) = frames.into_iter().next() {
                break q;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(query.user, "u1");
        queries.answer(UserConns {
            request: query.request,
            user: "u1".into(),
            conns: vec![ConnInfo {
                format: WireFormat::Tcp,
                peer: "127.0.0.1:5555".into(),
                rooms: vec!["r1".into()],
            }],
        });
        let view = lookup.await.unwrap();
        assert_eq!(
            view.connections,
            vec![ConnView {
                edge_id: "e1".into(),
                transport: "tcp",
                encoding: "binary",
                peer: "127.0.0.1:5555".into(),
                rooms: vec!["r1".into()],
            }]
        );
        assert_eq!(view.unanswered_edges, vec!["e2".to_string()]);
        assert!(matches!(e2.frames().as_slice(), [LinkFrame::QueryUser(_)]));
        assert_eq!(queries.pending(), 0, "timed-out requests are forgotten");
    }
}
