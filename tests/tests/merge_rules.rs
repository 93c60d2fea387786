//! Merge rules on published messages (PROTOCOL.md §5 "Merged messages", control/README.md): a
//! message published with `"merge":{"key","op","fields","interval_ms","final"}` is throttled per
//! (channel, key) with a leading and a trailing edge — published at once when its key has no open
//! window, else held (`{"held":true}`) and published merged when the window ends — `latest`
//! keeping the newest, `sum` summing the listed fields exactly. Delivered messages carry
//! `merged` (and `final`), take one `seq` each with no gap, a `final` is published at once after
//! its key's waiting message and is never dropped by budgets or queue shedding, ids dedupe held
//! messages too, and history and recovery replay merged messages as delivered.
//!
//! Everything end to end: the real control plane and edges, every wire format, both drivers.
//! Timings are only ever checked loosely (bounds far from the configured intervals).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roomcast_proto::message::Since;
use roomcast_tests::control::build_binaries;
use roomcast_tests::http::{error_message, poll, Request, Response};
use roomcast_tests::metrics::scrape;
use roomcast_tests::process::free_local_addrs;
use roomcast_tests::raw::connect_with_small_recv_buffer;
use roomcast_tests::{
    for_each_driver, Api, Client, Control, Incoming, LinkedEdge, PushMessage, Target, TcpClient,
    WireFormat, WsClient, WAIT,
};
use serde_json::Value;

/// Long enough for a window that should not end, or a delivery that should not come, to show.
const QUIET: Duration = Duration::from_millis(800);

/// The longest a reader waits for a whole scenario's stream.
const LONG: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// The channel field of a batch entry.
fn channel_field(target: &Target) -> String {
    match target {
        Target::Room(room) => format!(r#""room":"{room}""#),
        Target::User(user) => format!(r#""user":"{user}""#),
        Target::Broadcast => r#""broadcast":true"#.to_owned(),
    }
}

/// The single-message publish path of a channel.
fn path_of(target: &Target) -> String {
    roomcast_tests::control::publish_path(target)
}

/// A message body as raw JSON text, so that `data` keeps the field order written here (a
/// `serde_json::Value` would sort it). `merge` is the rule's JSON text, or None for none.
fn message(priority: u8, kind: &str, data: &str, merge: Option<&str>) -> String {
    match merge {
        Some(rule) => {
            format!(r#"{{"priority":{priority},"kind":"{kind}","data":{data},"merge":{rule}}}"#)
        }
        None => format!(r#"{{"priority":{priority},"kind":"{kind}","data":{data}}}"#),
    }
}

/// `body` (a message object's text) with `"id":id` added.
fn with_id(body: &str, id: &str) -> String {
    format!(r#"{{"id":"{id}",{}"#, &body[1..])
}

/// `body` (a message object's text) as a batch entry for `target`.
fn entry(target: &Target, body: &str) -> String {
    format!("{{{},{}", channel_field(target), &body[1..])
}

/// A `latest` rule's text.
fn latest(key: &str, interval_ms: Option<u64>) -> String {
    match interval_ms {
        Some(ms) => format!(r#"{{"key":"{key}","op":"latest","interval_ms":{ms}}}"#),
        None => format!(r#"{{"key":"{key}","op":"latest"}}"#),
    }
}

/// A `latest` rule's text with `"final":true`.
fn latest_final(key: &str, interval_ms: u64) -> String {
    format!(r#"{{"key":"{key}","op":"latest","interval_ms":{interval_ms},"final":true}}"#)
}

/// A `sum` rule's text over `fields`.
fn sum(key: &str, fields: &[&str], interval_ms: u64) -> String {
    let fields: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        r#"{{"key":"{key}","op":"sum","fields":[{}],"interval_ms":{interval_ms}}}"#,
        fields.join(",")
    )
}

/// POSTs `body` (JSON text) to `target` as it is.
async fn post_text(api: &Api, target: &str, body: &str) -> Response {
    api.send(Request::new("POST", target).body("application/json", body.to_owned()))
        .await
}

/// What the publish API answered for one accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Published now with this `seq`, queued to `edges` edges.
    Seq { seq: u64, edges: u64 },
    /// Waiting in its key's merge window: no `seq` yet.
    Held,
}

impl Answer {
    fn seq(self) -> Option<u64> {
        match self {
            Answer::Seq { seq, .. } => Some(seq),
            Answer::Held => None,
        }
    }
}

/// Reads an accepted (non-duplicate) message's answer: `{"seq":N,"delivered_edges":E}` or
/// `{"held":true,"delivered_edges":0}` without a `seq`.
#[track_caller]
fn answer_of(value: &Value, context: &str) -> Answer {
    assert!(
        value.get("error").is_none() && value.get("duplicate").is_none(),
        "{context}: expected an accepted, first publish: {value}"
    );
    let edges = value["delivered_edges"]
        .as_u64()
        .unwrap_or_else(|| panic!("{context}: no unsigned `delivered_edges`: {value}"));
    if value.get("held").is_some() {
        assert_eq!(value["held"], true, "{context}: {value}");
        assert!(
            value.get("seq").is_none(),
            "{context}: a held message has no seq yet: {value}"
        );
        assert_eq!(
            edges, 0,
            "{context}: a held message went nowhere yet: {value}"
        );
        Answer::Held
    } else {
        let seq = value["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{context}: neither `seq` nor `held`: {value}"));
        Answer::Seq { seq, edges }
    }
}

/// Publishes one message (`body` as text) to `target` and returns the API's answer.
async fn publish(api: &Api, target: &Target, body: &str) -> Answer {
    let response = post_text(api, &path_of(target), body).await;
    answer_of(&response.ok(), &format!("POST {}: {body}", path_of(target)))
}

/// One publish as the publisher saw it: when it sent the request, when the answer came, and
/// the answer.
#[derive(Debug, Clone, Copy)]
struct Timed {
    sent: Instant,
    answered: Instant,
    answer: Answer,
}

/// [`publish`], timed.
async fn publish_timed(api: &Api, target: &Target, body: &str) -> Timed {
    let sent = Instant::now();
    let answer = publish(api, target, body).await;
    Timed {
        sent,
        answered: Instant::now(),
        answer,
    }
}

/// Asserts the throttle's promise as the API shows it, for publishes to one key in order:
/// every publish that the control plane received less than `interval` after it received the
/// previous one finds the key's window open (the previous one's, or the next one, opened when
/// that ended with something waiting) and must wait — only a key with no open window publishes
/// at once. The server's clock for a publish lies between its `sent` and `answered`, so
/// `answered[i] - sent[i - 1] < interval` is enough; a slow host only makes the check apply
/// less often.
#[track_caller]
fn assert_held_within_interval(label: &str, publishes: &[Timed], interval: Duration) {
    for (i, pair) in publishes.windows(2).enumerate() {
        let apart = pair[1].answered.duration_since(pair[0].sent);
        if apart < interval {
            let around: Vec<Answer> = publishes[i.saturating_sub(3)..(i + 5).min(publishes.len())]
                .iter()
                .map(|t| t.answer)
                .collect();
            assert_eq!(
                pair[1].answer,
                Answer::Held,
                "{label}: publish {} reached the control plane at most {apart:?} after publish \
                 {} (window {interval:?}), with the key's window open, yet was published at \
                 once: a second delivery of the key within one interval; answers of publishes \
                 {}..: {around:?}",
                i + 1,
                i,
                i.saturating_sub(3)
            );
        }
    }
}

/// POSTs a batch of `entries` (entry objects as text) and returns its `results`, one per entry.
async fn publish_batch(api: &Api, entries: &[String]) -> Vec<Value> {
    let body = format!(r#"{{"messages":[{}]}}"#, entries.join(","));
    let response = post_text(api, "/v1/messages", &body).await;
    let answer = response.ok();
    let results = answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no `results` array: {response:?}"))
        .clone();
    assert_eq!(
        results.len(),
        entries.len(),
        "one result per entry: {response:?}"
    );
    results
}

// ---------------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------------

/// A delivered message and when the reader got it.
type Arrival = (PushMessage, Instant);

fn data(m: &PushMessage) -> Value {
    serde_json::from_slice(&m.data).unwrap_or_else(|e| {
        panic!(
            "seq {}: data is not JSON ({e}): {}",
            m.seq,
            String::from_utf8_lossy(&m.data)
        )
    })
}

fn text(m: &PushMessage) -> &str {
    std::str::from_utf8(&m.data).expect("data is UTF-8")
}

fn describe<'a>(msgs: impl IntoIterator<Item = &'a PushMessage>) -> String {
    let lines: Vec<String> = msgs
        .into_iter()
        .map(|m| {
            format!(
                "  seq {} p{} {} merged {}{} {}",
                m.seq,
                m.priority,
                m.kind,
                m.merged,
                if m.is_final { " FINAL" } else { "" },
                text(m)
            )
        })
        .collect();
    if lines.is_empty() {
        "  nothing".to_owned()
    } else {
        lines.join("\n")
    }
}

/// Reads `client`'s batches for `target` until `done` accepts what came so far; panics on
/// anything else (a batch of another channel, a reply, a close), or after `wait`.
async fn read_until(
    client: &mut Client,
    target: &Target,
    wait: Duration,
    mut done: impl FnMut(&[PushMessage]) -> bool,
) -> Vec<Arrival> {
    let deadline = Instant::now() + wait;
    let mut got: Vec<Arrival> = Vec::new();
    let mut msgs: Vec<PushMessage> = Vec::new();
    while !done(&msgs) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Batch {
                target: t,
                msgs: batch,
                ..
            }) if t == *target => {
                let now = Instant::now();
                msgs.extend(batch.iter().cloned());
                got.extend(batch.into_iter().map(|m| (m, now)));
            }
            None => panic!(
                "{}: waited {wait:?} on {target:?} and it is not complete; got\n{}",
                client.label,
                describe(&msgs)
            ),
            Some(other) => panic!(
                "{}: reading {target:?}, got {other:?}; before it\n{}",
                client.label,
                describe(&msgs)
            ),
        }
    }
    got
}

/// [`read_until`] without the arrival times.
async fn read_msgs_until(
    client: &mut Client,
    target: &Target,
    wait: Duration,
    done: impl FnMut(&[PushMessage]) -> bool,
) -> Vec<PushMessage> {
    read_until(client, target, wait, done)
        .await
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

/// Reads `client`'s batches until each channel of `want` has at least its count of messages;
/// returns them per channel, in `want`'s order. Panics on anything else, or after [`WAIT`].
async fn read_channels(client: &mut Client, want: &[(&Target, usize)]) -> Vec<Vec<PushMessage>> {
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Vec<PushMessage>> = vec![Vec::new(); want.len()];
    while want.iter().zip(&got).any(|((_, n), g)| g.len() < *n) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Batch { target, msgs, .. }) => {
                let Some(at) = want.iter().position(|(t, _)| **t == target) else {
                    panic!(
                        "{}: a batch for {target:?}:\n{}",
                        client.label,
                        describe(&msgs)
                    );
                };
                got[at].extend(msgs);
            }
            other => panic!(
                "{}: waiting for {want:?}, got {other:?}; so far {got:?}",
                client.label
            ),
        }
    }
    got
}

/// Reads `client`'s batches for `target` until nothing has come for [`QUIET`] (a stalled
/// reader's leftovers); panics on anything else, or when it does not end within [`LONG`].
async fn drain_until_quiet(client: &mut Client, target: &Target) -> Vec<PushMessage> {
    let deadline = Instant::now() + LONG;
    let mut got = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: still receiving after {LONG:?}",
            client.label
        );
        match client.next_within(QUIET).await {
            None => return got,
            Some(Incoming::Batch {
                target: t, msgs, ..
            }) if t == *target => got.extend(msgs),
            Some(other) => panic!(
                "{}: draining {target:?}, got {other:?}; before it\n{}",
                client.label,
                describe(&got)
            ),
        }
    }
}

/// Asserts that `msgs` are numbered `first, first + 1, …`: no gap, no repeat, in order.
#[track_caller]
fn assert_consecutive(label: &str, msgs: &[PushMessage], first: u64) {
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (first..first + msgs.len() as u64).collect();
    assert_eq!(
        seqs,
        want,
        "{label}: seqs are not consecutive from {first}:\n{}",
        describe(msgs)
    );
}

/// Asserts that nothing arrives on any of `clients` for `quiet` (they wait side by side).
async fn expect_silence_all(clients: &mut [Client], quiet: Duration) {
    futures_util::future::join_all(clients.iter_mut().map(|c| c.expect_silence(quiet))).await;
}

/// A task's result, re-raising its panic.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

// ---------------------------------------------------------------------------------------------
// Setting up
// ---------------------------------------------------------------------------------------------

/// One viewer per wire format on `edge` (users `{prefix}-0`, `-1`, `-2`), each joined to
/// `room`; returns them with the room's epoch as the first join reply gave it.
async fn viewers_in(edge: &LinkedEdge, prefix: &str, room: &str) -> (Vec<Client>, String) {
    let mut clients = Vec::new();
    let mut epoch = None;
    for (i, format) in WireFormat::ALL.into_iter().enumerate() {
        let mut client = Client::connect_authed(edge, format, &format!("{prefix}-{i}")).await;
        let (result, details) = client.join_since(room, None).await;
        result.unwrap_or_else(|e| panic!("{} joins {room}: {e:?}", client.label));
        epoch = epoch.or(details.epoch);
        clients.push(client);
    }
    (
        clients,
        epoch.expect("a join reply carries the room's epoch"),
    )
}

/// Control (with `control_args`) and one edge with `viewers_in` room `room`, seen by control.
async fn one_edge_room(
    io: &'static str,
    control_args: &[&str],
    room: &str,
) -> (Control, LinkedEdge, Vec<Client>, String) {
    let control = Control::start(control_args).await;
    let edge = control.start_edge(io, "edge-a", &[]).await;
    let (clients, epoch) = viewers_in(&edge, "viewer", room).await;
    control
        .wait_room_members(room, &[("edge-a", clients.len() as u64)])
        .await;
    (control, edge, clients, epoch)
}

/// The sum over every sample of `name` whose labels include `label` (`reason="queue"`).
fn sum_with_label(page: &roomcast_tests::metrics::Scrape, name: &str, label: &str) -> f64 {
    page.samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(label))
        .map(|(_, v)| v)
        .sum()
}

/// Polls the edge's `/metrics` at `admin` until `roomcast_messages_dropped_total` with
/// `reason` sums above 0; returns the sum.
async fn await_drops(admin: SocketAddr, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    let label = &label;
    poll(
        &format!("roomcast_messages_dropped_total{{{label}}} > 0"),
        WAIT,
        || async move {
            let page = scrape(admin).await;
            let n = sum_with_label(&page, "roomcast_messages_dropped_total", label);
            if n > 0.0 {
                Ok(n)
            } else {
                Err(page
                    .text
                    .lines()
                    .filter(|l| l.starts_with("roomcast_messages_dropped_total"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. latest: leading edge at once, at most one per interval, the last value never lost
// ---------------------------------------------------------------------------------------------

#[test]
fn latest_delivers_the_first_at_once_then_at_most_one_per_interval_and_always_the_last() {
    build_binaries();
    for_each_driver(|io| async move {
        const N: u64 = 30;
        const INTERVAL_MS: u64 = 500;
        let room = Target::Room("live".into());
        let (control, _edge, clients, _) = one_edge_room(io, &[], "live").await;
        let rule = latest("pk:7", Some(INTERVAL_MS));

        // Every viewer reads on its own task from before the first publish, so arrival times
        // are real ones.
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let room = room.clone();
                tokio::spawn(async move {
                    let got = read_until(&mut client, &room, LONG, |msgs| {
                        msgs.last().is_some_and(|m| data(m)["left"] == N)
                    })
                    .await;
                    (client, got)
                })
            })
            .collect();

        // 1..=N, one every ~50 ms: about three intervals' worth.
        let start = Instant::now();
        let mut publishes = Vec::new();
        for v in 1..=N {
            let body = message(
                1,
                "pk",
                &format!(r#"{{"left":{v},"right":0}}"#),
                Some(&rule),
            );
            publishes.push(publish_timed(&control.api, &room, &body).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let span = start.elapsed();
        let answers: Vec<Answer> = publishes.iter().map(|t| t.answer).collect();

        let Answer::Seq { seq: first, edges } = answers[0] else {
            panic!(
                "the first message of a key is published at once: {:?}",
                answers[0]
            );
        };
        assert_eq!(edges, 1, "the first message went to the edge: {answers:?}");
        assert_held_within_interval(
            "latest pk:7",
            &publishes,
            Duration::from_millis(INTERVAL_MS),
        );

        let mut clients = Vec::new();
        let mut delivered: Option<Vec<PushMessage>> = None;
        for reader in futures_util::future::join_all(readers).await {
            let (client, got) = joined(reader);
            let msgs: Vec<PushMessage> = got.iter().map(|(m, _)| m.clone()).collect();
            let label = &client.label;
            // Each delivery with when it came (from the first publish) and the answers, for
            // failure messages.
            let all = format!(
                "{}\narrived at {:?}\nanswers {answers:?}",
                describe(&msgs),
                got.iter()
                    .map(|(m, at)| (m.seq, at.saturating_duration_since(start)))
                    .collect::<Vec<_>>()
            );
            assert_eq!(msgs[0].seq, first, "{label}: the first delivered:\n{all}");
            assert_eq!(
                data(&msgs[0])["left"],
                1,
                "{label}: the first value:\n{all}"
            );
            assert_eq!(
                msgs[0].merged, 1,
                "{label}: the first stands for itself:\n{all}"
            );
            assert_consecutive(label, &msgs, first);
            for m in &msgs {
                assert!(
                    (m.priority, m.kind.as_str(), m.is_final) == (1, "pk", false),
                    "{label}: priority, kind and no final mark as published:\n{all}"
                );
                assert!(
                    m.merged >= 1,
                    "{label}: a merged message says merged ≥ 1:\n{all}"
                );
            }
            let values: Vec<u64> = msgs
                .iter()
                .map(|m| data(m)["left"].as_u64().unwrap())
                .collect();
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "{label}: latest values go forward: {values:?}"
            );
            assert_eq!(values.last(), Some(&N), "{label}: the last value arrives");
            let merged: u64 = msgs.iter().map(|m| u64::from(m.merged)).sum();
            assert_eq!(
                merged, N,
                "{label}: merged counts add up to the publishes:\n{all}"
            );
            // The merged value is the newest of its window: the counts between two deliveries
            // are exactly the values skipped.
            let mut previous = 0;
            for m in &msgs {
                let v = data(m)["left"].as_u64().unwrap();
                assert_eq!(
                    u64::from(m.merged),
                    v - previous,
                    "{label}: seq {} stands for the values after {previous} up to {v}:\n{all}",
                    m.seq
                );
                previous = v;
            }
            // At most one delivery per interval: a leading edge plus one per interval the
            // publishes spanned, and the trailing one.
            let most = 2 + span.as_millis() as u64 / INTERVAL_MS;
            assert!(
                msgs.len() as u64 <= most,
                "{label}: {} deliveries for {span:?} of publishes at {INTERVAL_MS} ms: at most \
                 {most}:\n{all}",
                msgs.len()
            );
            // Deliveries are an interval apart (half of one allowed for scheduling).
            for pair in got.windows(2) {
                let gap = pair[1].1.duration_since(pair[0].1);
                assert!(
                    gap >= Duration::from_millis(INTERVAL_MS / 2),
                    "{label}: seq {} came {gap:?} after seq {} (interval {INTERVAL_MS} ms):\n{all}",
                    pair[1].0.seq,
                    pair[0].0.seq
                );
            }
            // The answers name the messages published at once: their own values.
            for (i, answer) in answers.iter().enumerate() {
                if let Some(seq) = answer.seq() {
                    let m = msgs
                        .iter()
                        .find(|m| m.seq == seq)
                        .unwrap_or_else(|| panic!("{label}: answered seq {seq} not delivered"));
                    assert_eq!(data(m)["left"], i as u64 + 1, "{label}: seq {seq}");
                    assert_eq!(m.merged, 1, "{label}: seq {seq}");
                }
            }
            match &delivered {
                None => delivered = Some(msgs),
                Some(other) => assert_eq!(&msgs, other, "{label}: viewers got different streams"),
            }
            clients.push(client);
        }
        // The key was forgotten after its trailing edge: nothing more comes.
        expect_silence_all(&mut clients, Duration::from_millis(INTERVAL_MS) + QUIET).await;
        eprintln!(
            "latest: {N} publishes over {span:?} delivered as {} messages",
            delivered.map_or(0, |d| d.len())
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2. sum: exact across two edges, merged counts add up, seqs continuous with plain messages
// ---------------------------------------------------------------------------------------------

/// The `count` of the `i`-th (1-based) combo message: small, zero, negative, and above 2^53
/// (where a float sum would lose the last digit).
fn combo_count(i: u64) -> i64 {
    match i % 7 {
        0 => 9_007_199_254_740_993,
        3 => -2,
        5 => 0,
        _ => (i % 13) as i64 + 1,
    }
}

fn combo_coins(i: u64) -> i64 {
    (i % 5) as i64 * 10
}

/// The combo's data as published, and as a merged message carries it (with the sums): field
/// order `user, count, gift, coins, i`, which is not sorted.
fn combo_data(count: i64, coins: i64, i: u64) -> String {
    format!(r#"{{"user":"u42","count":{count},"gift":"rocket","coins":{coins},"i":{i}}}"#)
}

#[test]
fn sum_is_exact_for_members_on_two_edges_and_merged_counts_add_up() {
    build_binaries();
    for_each_driver(|io| async move {
        const BATCHES: u64 = 8;
        const PER_BATCH: u64 = 25;
        const INTERVAL_MS: u64 = 300;
        let control = Control::start(&[]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        let mut clients = Vec::new();
        for (i, (edge, format)) in [
            (&a, WireFormat::WsJson),
            (&a, WireFormat::Tcp),
            (&b, WireFormat::WsBinary),
            (&b, WireFormat::WsJson),
        ]
        .into_iter()
        .enumerate()
        {
            let mut client = Client::connect_authed(edge, format, &format!("fan-{i}")).await;
            client.join("show").await.unwrap();
            clients.push(client);
        }
        control
            .wait_room_members("show", &[("edge-a", 2), ("edge-b", 2)])
            .await;
        let room = Target::Room("show".into());
        let rule = sum("combo:u42:rocket", &["count", "coins"], INTERVAL_MS);

        // Batches of combos with a plain chat message every fifth entry, ~120 ms apart: a few
        // windows, each with several combos waiting.
        let mut combos: Vec<(i64, i64)> = Vec::new(); // (count, coins) of combo i = index + 1
        let mut chats = 0u64;
        // (entry, answer): which combo (Some(i)) or chat (None, with its number) it was.
        let mut answered: Vec<(Result<u64, u64>, Answer)> = Vec::new();
        let mut combo_publishes: Vec<Timed> = Vec::new();
        let start = Instant::now();
        for _ in 0..BATCHES {
            let mut entries = Vec::new();
            let mut what = Vec::new();
            for k in 0..PER_BATCH {
                if k % 5 == 4 {
                    chats += 1;
                    let body = message(3, "chat", &format!(r#"{{"chat":{chats}}}"#), None);
                    entries.push(entry(&room, &body));
                    what.push(Err(chats));
                } else {
                    let i = combos.len() as u64 + 1;
                    let (count, coins) = (combo_count(i), combo_coins(i));
                    combos.push((count, coins));
                    let body = message(2, "combo", &combo_data(count, coins, i), Some(&rule));
                    entries.push(entry(&room, &body));
                    what.push(Ok(i));
                }
            }
            let sent = Instant::now();
            let results = publish_batch(&control.api, &entries).await;
            let at = Instant::now();
            for (which, result) in what.into_iter().zip(&results) {
                let answer = answer_of(result, &format!("batch entry {which:?}"));
                if which.is_err() {
                    assert!(
                        matches!(answer, Answer::Seq { edges: 2, .. }),
                        "a plain message is published at once to both edges: {result}"
                    );
                } else {
                    combo_publishes.push(Timed {
                        sent,
                        answered: at,
                        answer,
                    });
                }
                answered.push((which, answer));
            }
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        let span = start.elapsed();
        assert_held_within_interval(
            "sum combo:u42:rocket",
            &combo_publishes,
            Duration::from_millis(INTERVAL_MS),
        );
        let total_combos = combos.len() as u64;
        let total_count: i64 = combos.iter().map(|c| c.0).sum();
        let total_coins: i64 = combos.iter().map(|c| c.1).sum();
        assert!(
            matches!(answered[0].1, Answer::Seq { seq: 1, edges: 2 }),
            "the first combo opens the window and is published at once as seq 1: {:?}",
            answered[0]
        );

        let mut streams = Vec::new();
        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, LONG, |msgs| {
                let merged: u64 = msgs
                    .iter()
                    .filter(|m| m.kind == "combo")
                    .map(|m| u64::from(m.merged))
                    .sum();
                let chat = msgs.iter().filter(|m| m.kind == "chat").count() as u64;
                merged >= total_combos && chat >= chats
            })
            .await;
            let label = &client.label;
            let all = describe(&msgs);
            assert_consecutive(label, &msgs, 1);

            // Plain chat messages: each exactly once, in order, unmarked.
            let got_chats: Vec<u64> = msgs
                .iter()
                .filter(|m| m.kind == "chat")
                .map(|m| {
                    assert_eq!(
                        (m.merged, m.is_final),
                        (0, false),
                        "{label}: a plain message"
                    );
                    data(m)["chat"].as_u64().unwrap()
                })
                .collect();
            assert_eq!(
                got_chats,
                (1..=chats).collect::<Vec<_>>(),
                "{label}:\n{all}"
            );

            // Combos: each delivered one is the newest of a run of published ones, with their
            // counts and coins summed exactly and the newest's other fields in their order.
            let delivered: Vec<&PushMessage> = msgs.iter().filter(|m| m.kind == "combo").collect();
            let mut previous = 0u64;
            let (mut count, mut coins, mut merged) = (0i64, 0i64, 0u64);
            for m in &delivered {
                let i = data(m)["i"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{label}: combo without `i`:\n{all}"));
                assert!(i > previous, "{label}: combos out of order:\n{all}");
                let run = &combos[previous as usize..i as usize];
                let want_count: i64 = run.iter().map(|c| c.0).sum();
                let want_coins: i64 = run.iter().map(|c| c.1).sum();
                assert_eq!(
                    text(m),
                    combo_data(want_count, want_coins, i),
                    "{label}: seq {} merges combos {}..={i} (merged {}):\n{all}",
                    m.seq,
                    previous + 1,
                    m.merged
                );
                assert_eq!(
                    u64::from(m.merged),
                    i - previous,
                    "{label}: seq {} stands for combos {}..={i}:\n{all}",
                    m.seq,
                    previous + 1
                );
                assert!(
                    (m.priority, m.is_final) == (2, false),
                    "{label}: seq {}: priority 2, not final:\n{all}",
                    m.seq
                );
                previous = i;
                count += data(m)["count"].as_i64().unwrap();
                coins += data(m)["coins"].as_i64().unwrap();
                merged += u64::from(m.merged);
            }
            assert_eq!(
                previous, total_combos,
                "{label}: the last combo arrives:\n{all}"
            );
            assert_eq!(count, total_count, "{label}: delivered counts sum exactly");
            assert_eq!(coins, total_coins, "{label}: delivered coins sum exactly");
            assert_eq!(merged, total_combos, "{label}: merged counts add up");
            let most = 2 + span.as_millis() as u64 / INTERVAL_MS;
            assert!(
                delivered.len() as u64 <= most,
                "{label}: {} combo deliveries over {span:?} at {INTERVAL_MS} ms: at most {most}",
                delivered.len()
            );

            // What the API answered with a seq is that message, as it was published.
            for (which, answer) in &answered {
                let Some(seq) = answer.seq() else { continue };
                let m = msgs
                    .iter()
                    .find(|m| m.seq == seq)
                    .unwrap_or_else(|| panic!("{label}: answered seq {seq} never came"));
                match which {
                    Ok(i) => {
                        let (c, k) = combos[*i as usize - 1];
                        assert_eq!(text(m), combo_data(c, k, *i), "{label}: seq {seq}");
                        assert_eq!(m.merged, 1, "{label}: seq {seq} was published at once");
                    }
                    Err(chat) => assert_eq!(data(m)["chat"], *chat, "{label}: seq {seq}"),
                }
            }
            streams.push(msgs);
        }
        for (client, stream) in clients.iter().zip(&streams) {
            assert_eq!(
                stream, &streams[0],
                "{} and {} (on the other edge or format) got different streams",
                client.label, clients[0].label
            );
        }
        // Nothing more: no second trailing edge, no duplicate of a window.
        expect_silence_all(&mut clients, Duration::from_millis(INTERVAL_MS) + QUIET).await;
        eprintln!(
            "sum: {total_combos} combos and {chats} chats over {span:?} delivered as {} messages",
            streams[0].len()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2b. the trailing edge: a message arriving as a window ends waits for the next window
// ---------------------------------------------------------------------------------------------

#[test]
fn a_message_arriving_as_its_keys_window_ends_waits_for_the_next_window() {
    build_binaries();
    for_each_driver(|io| async move {
        const INTERVAL_MS: u64 = 100;
        const PUBLISHING: Duration = Duration::from_millis(1500);
        let room = Target::Room("race".into());
        let (control, _edge, mut clients, _) = one_edge_room(io, &[], "race").await;
        let rule = latest("score:1", Some(INTERVAL_MS));

        // Back to back, as fast as the API answers (about a millisecond each): some publishes
        // reach the control plane just as a window ends, before it has published what waited.
        // Such a publish belongs to the window that opens then and must wait like any other.
        let start = Instant::now();
        let mut publishes = Vec::new();
        let mut v = 0u64;
        while start.elapsed() < PUBLISHING {
            v += 1;
            let body = message(3, "score", &format!(r#"{{"v":{v}}}"#), Some(&rule));
            publishes.push(publish_timed(&control.api, &room, &body).await);
        }
        let span = start.elapsed();
        let published = v;

        let mut streams = Vec::new();
        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, WAIT, |m| {
                m.last().is_some_and(|m| data(m)["v"] == published)
            })
            .await;
            let label = &client.label;
            let all = describe(&msgs);
            assert_consecutive(label, &msgs, 1);
            let merged: u64 = msgs.iter().map(|m| u64::from(m.merged)).sum();
            assert_eq!(merged, published, "{label}: merged counts add up:\n{all}");
            streams.push((label.clone(), msgs));
        }
        let delivered = streams[0].1.len();
        let immediate = publishes
            .iter()
            .filter(|t| t.answer != Answer::Held)
            .count();
        eprintln!(
            "race: {published} publishes over {span:?} into {INTERVAL_MS} ms windows: {delivered} \
             deliveries, {immediate} published at once"
        );
        assert_held_within_interval(
            "latest score:1",
            &publishes,
            Duration::from_millis(INTERVAL_MS),
        );
        let most = 2 + span.as_millis() as u64 / INTERVAL_MS;
        for (label, msgs) in &streams {
            assert!(
                msgs.len() as u64 <= most,
                "{label}: {} deliveries for {span:?} of publishes at {INTERVAL_MS} ms: at most \
                 {most}",
                msgs.len()
            );
        }
        expect_silence_all(&mut clients, QUIET).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 3. final: releases the waiting message then itself at once, ends the window; history and
//    recovery replay merged messages as delivered
// ---------------------------------------------------------------------------------------------

#[test]
fn a_final_publishes_the_waiting_value_then_itself_at_once_and_ends_the_window() {
    build_binaries();
    for_each_driver(|io| async move {
        const INTERVAL_MS: u64 = 5000;
        let (control, edge, mut clients, epoch) = one_edge_room(io, &[], "pk-room").await;
        let api = &control.api;
        let room = Target::Room("pk-room".into());
        let rule = latest("pk:7", Some(INTERVAL_MS));
        let pk = |left: u64| format!(r#"{{"left":{left},"right":950}}"#);

        let start = Instant::now();
        let first = publish(api, &room, &message(1, "pk", &pk(1), Some(&rule))).await;
        let second = publish(api, &room, &message(1, "pk", &pk(2), Some(&rule))).await;
        let third = publish(api, &room, &message(1, "pk", &pk(3), Some(&rule))).await;
        let final_data = r#"{"left":5100,"right":4800,"winner":"left"}"#;
        let last = publish(
            api,
            &room,
            &message(
                1,
                "pk",
                final_data,
                Some(&latest_final("pk:7", INTERVAL_MS)),
            ),
        )
        .await;
        assert_eq!(first, Answer::Seq { seq: 1, edges: 1 }, "the first at once");
        assert_eq!(
            (second, third),
            (Answer::Held, Answer::Held),
            "the next two wait in the window"
        );
        assert_eq!(
            last,
            Answer::Seq { seq: 3, edges: 1 },
            "the final is published at once, after the waiting value (seq 2)"
        );

        let mut stream = None;
        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, WAIT, |m| m.len() >= 3).await;
            let took = start.elapsed();
            let label = &client.label;
            let all = describe(&msgs);
            assert!(
                took < Duration::from_millis(INTERVAL_MS / 2),
                "{label}: the final and the value before it came {took:?} after the first \
                 publish: they must not wait for the {INTERVAL_MS} ms window:\n{all}"
            );
            assert_eq!(msgs.len(), 3, "{label}:\n{all}");
            assert_consecutive(label, &msgs, 1);
            let marks: Vec<(String, u32, bool)> = msgs
                .iter()
                .map(|m| (text(m).to_owned(), m.merged, m.is_final))
                .collect();
            assert_eq!(
                marks,
                vec![
                    (pk(1), 1, false),
                    (pk(3), 2, false),
                    (final_data.to_owned(), 1, true)
                ],
                "{label}: 1, then 3 standing for 2 and 3, then the final:\n{all}"
            );
            assert!(
                msgs.iter().all(|m| m.priority == 1 && m.kind == "pk"),
                "{all}"
            );
            stream = Some(msgs);
        }
        let mut stream = stream.unwrap();

        // The final ended the window: nothing comes when it would have ended (5 s after the
        // first publish), or later.
        let until = start + Duration::from_millis(INTERVAL_MS) + QUIET;
        expect_silence_all(
            &mut clients,
            until.saturating_duration_since(Instant::now()),
        )
        .await;

        // Another key: a final with nothing waiting goes at once, and the key starts afresh
        // after it (the next message is published at once, not held).
        let rule8 = latest("pk:8", Some(INTERVAL_MS));
        let a = publish(api, &room, &message(1, "pk", &pk(10), Some(&rule8))).await;
        let b = publish(
            api,
            &room,
            &message(1, "pk", &pk(11), Some(&latest_final("pk:8", INTERVAL_MS))),
        )
        .await;
        let c = publish(api, &room, &message(1, "pk", &pk(12), Some(&rule8))).await;
        assert_eq!(
            [a, b, c],
            [4, 5, 6].map(|seq| Answer::Seq { seq, edges: 1 }),
            "a final with nothing waiting, and a message after a final, are published at once"
        );
        let mut more = None;
        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, WAIT, |m| m.len() >= 3).await;
            let label = &client.label;
            let marks: Vec<(u64, String, u32, bool)> = msgs
                .iter()
                .map(|m| (m.seq, text(m).to_owned(), m.merged, m.is_final))
                .collect();
            assert_eq!(
                marks,
                vec![
                    (4, pk(10), 1, false),
                    (5, pk(11), 1, true),
                    (6, pk(12), 1, false)
                ],
                "{label}"
            );
            more = Some(msgs);
        }
        stream.extend(more.unwrap());
        expect_silence_all(&mut clients, QUIET).await;

        // History and recovery replay the merged messages as they were delivered: `merged` and
        // `final` included, in every format.
        for client in &mut clients {
            let (result, page) = client.history("pk-room", 0, 100).await;
            assert_eq!(result, Ok(()), "{}: history", client.label);
            let msgs = page.msgs.unwrap_or_default();
            assert_eq!(
                msgs,
                stream,
                "{}: history of pk-room:\n{}\nexpected\n{}",
                client.label,
                describe(&msgs),
                describe(&stream)
            );
        }
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let mut late = Client::connect_authed(&edge, format, &format!("late-{i}")).await;
            let since = Since {
                epoch: epoch.clone(),
                seq: 0,
            };
            let (result, details) = late.join_since("pk-room", Some(since)).await;
            assert_eq!(result, Ok(()), "{}: join with since", late.label);
            assert_eq!(details.recovered, Some(Ok(())), "{}", late.label);
            let msgs = late.recv_messages(&room, stream.len(), WAIT).await;
            assert_eq!(
                msgs,
                stream,
                "{}: recovered:\n{}\nexpected\n{}",
                late.label,
                describe(&msgs),
                describe(&stream)
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 4. a final is never shed from a slow reader's queue, nor dropped by a level's budget
// ---------------------------------------------------------------------------------------------

/// Publishes `batches` batches of `per_batch` ~1 KiB priority-3 chat messages to `room`, one
/// batch every 20 ms; returns the last seq.
async fn flood(api: &Api, room: &Target, batches: usize, per_batch: usize, from: usize) -> u64 {
    let pad = "x".repeat(1000);
    let mut last = 0;
    for b in 0..batches {
        let entries: Vec<String> = (0..per_batch)
            .map(|k| {
                let n = from + b * per_batch + k;
                entry(
                    room,
                    &message(3, "chat", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#), None),
                )
            })
            .collect();
        for result in publish_batch(api, &entries).await {
            if let Answer::Seq { seq, .. } = answer_of(&result, "flood") {
                last = seq;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[test]
fn a_final_is_never_shed_from_a_slow_readers_queue() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let admin = free_local_addrs(1)[0];
        let admin_arg = admin.to_string();
        #[rustfmt::skip]
        let edge = control.start_edge(io, "edge-a", &[
            "--admin-listen", &admin_arg,
            "--queue-soft-bytes", "65536",
            "--queue-hard-bytes", "67108864",
            // The stalled readers resume long before this: only shedding touches them.
            "--write-stall-timeout-ms", "120000",
        ])
        .await;
        let room = Target::Room("flood".into());

        // Two readers that stop reading after their join (4 KiB receive buffers), and one that
        // keeps up.
        let tcp = connect_with_small_recv_buffer(edge.tcp_addr, 4096).await;
        let mut stalled_tcp = Client::over_tcp(TcpClient::over(tcp));
        let ws = connect_with_small_recv_buffer(edge.ws_addr, 4096).await;
        let ws = WsClient::upgrade(ws)
            .await
            .expect("upgrade the stalled WebSocket");
        let mut stalled_ws = Client::over_ws(WireFormat::WsBinary, ws);
        for (i, stalled) in [&mut stalled_tcp, &mut stalled_ws].into_iter().enumerate() {
            stalled.authenticate(&format!("stalled-{i}")).await;
            stalled.join("flood").await.unwrap();
        }
        let mut healthy = Client::connect_authed(&edge, WireFormat::WsJson, "healthy").await;
        healthy.join("flood").await.unwrap();
        control.wait_room_members("flood", &[("edge-a", 3)]).await;

        // The healthy reader reads until the final, on its own task.
        let healthy_room = room.clone();
        let healthy_reader = tokio::spawn(async move {
            let msgs = read_msgs_until(&mut healthy, &healthy_room, LONG, |m| {
                m.iter().any(|m| m.is_final)
            })
            .await;
            (healthy, msgs)
        });

        // ~1 MB of chat, then the final, then ~1 MB more: the stalled readers' queues stay far
        // over the soft bound, and the final is among the oldest of their queued frames while
        // the second flood sheds.
        let before = flood(&control.api, &room, 40, 25, 0).await;
        let final_data = r#"{"left":5100,"right":4800,"winner":"left"}"#;
        let rule = latest_final("pk:7", 2000);
        let the_final = publish(
            &control.api,
            &room,
            &message(3, "pk", final_data, Some(&rule)),
        )
        .await;
        assert_eq!(
            the_final,
            Answer::Seq {
                seq: before + 1,
                edges: 1
            },
            "a final to a fresh key is published at once"
        );
        let last = flood(&control.api, &room, 40, 25, 1000).await;
        assert_eq!(last, before + 1 + 1000, "every flood message was published");

        let (_healthy, got) = joined(healthy_reader.await);
        let fin = got.iter().find(|m| m.is_final).unwrap();
        assert_eq!(
            (fin.seq, fin.merged, text(fin)),
            (before + 1, 1, final_data)
        );

        // The edge shed from the stalled queues.
        let shed = await_drops(admin, "queue").await;

        // The stalled readers resume: whatever was shed, the final is there, marked.
        for stalled in [&mut stalled_tcp, &mut stalled_ws] {
            let msgs = drain_until_quiet(stalled, &room).await;
            let label = &stalled.label;
            assert!(
                msgs.windows(2).all(|w| w[0].seq < w[1].seq),
                "{label}: in order"
            );
            assert!(
                (msgs.len() as u64) < last,
                "{label}: got all {last} messages: nothing was shed, the test proves nothing"
            );
            let finals: Vec<&PushMessage> = msgs.iter().filter(|m| m.is_final).collect();
            let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
            assert_eq!(
                finals.len(),
                1,
                "{label}: the final was shed from a slow reader's queue; it got {} of {last} \
                 messages, seqs around the final ({}): {:?}",
                msgs.len(),
                before + 1,
                seqs.iter()
                    .filter(|s| s.abs_diff(before + 1) < 200)
                    .collect::<Vec<_>>()
            );
            let fin = finals[0];
            assert_eq!(
                (
                    fin.seq,
                    fin.priority,
                    fin.kind.as_str(),
                    fin.merged,
                    text(fin)
                ),
                (before + 1, 3, "pk", 1, final_data),
                "{label}"
            );
            eprintln!(
                "{label}: got {} of {last} messages (the final among them); edge shed {shed}",
                msgs.len()
            );
        }
    });
}

#[test]
fn a_final_is_never_dropped_by_a_levels_budget_while_plain_messages_of_its_priority_are() {
    build_binaries();
    for_each_driver(|io| async move {
        // One viewer puts a room at level 2, whose budget is one message per priority per 1 s
        // tick, and whose history keeps only priority 0 (and finals).
        #[rustfmt::skip]
        let control = Control::start(&[
            "--level-thresholds", "1,1000,10000",
            "--level-ticks-ms", "100,1000,1000,1000",
            "--level2-budgets", "1,1,1",
            "--history-levels", "300:300:3,300:300:0,300:300:3,300:300:3",
        ])
        .await;
        let admin = free_local_addrs(1)[0];
        let admin_arg = admin.to_string();
        let edge = control
            .start_edge(io, "edge-a", &["--admin-listen", &admin_arg])
            .await;
        let (mut clients, _) = viewers_in(&edge, "viewer", "arena").await;
        let api = &control.api;
        poll("arena at level 2", WAIT, || async move {
            let view = api.room("arena").await;
            if view["level"] == 2 && view["online"] == 3 {
                Ok(())
            } else {
                Err(format!("{view}"))
            }
        })
        .await;
        let room = Target::Room("arena".into());

        // Ten plain priority-1 gifts and a final of priority 1, in one request: the budget
        // lets one gift through per tick; the final always.
        let mut entries: Vec<String> = (1..=10)
            .map(|i| {
                entry(
                    &room,
                    &message(1, "gift", &format!(r#"{{"gift":{i}}}"#), None),
                )
            })
            .collect();
        let final_data = r#"{"left":5100,"right":4800,"winner":"left"}"#;
        let rule = latest_final("pk:9", 2000);
        entries.push(entry(&room, &message(1, "pk", final_data, Some(&rule))));
        let results = publish_batch(api, &entries).await;
        for (i, result) in results.iter().enumerate() {
            assert_eq!(
                answer_of(result, "budget batch"),
                Answer::Seq {
                    seq: i as u64 + 1,
                    edges: 1
                },
                "entry {i}"
            );
        }

        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, WAIT, |m| m.iter().any(|m| m.is_final)).await;
            let label = client.label.clone();
            let label = &label;
            let all = describe(&msgs);
            let fin = msgs.last().unwrap();
            assert_eq!(
                (fin.seq, fin.priority, fin.merged, fin.is_final, text(fin)),
                (11, 1, 1, true, final_data),
                "{label}: the final came, last:\n{all}"
            );
            let gifts = msgs.iter().filter(|m| m.kind == "gift").count();
            assert!(
                gifts < 10,
                "{label}: all 10 gifts came through a budget of 1 per tick: the budget was not \
                 applied and the test proves nothing:\n{all}"
            );
            assert!(
                msgs.windows(2).all(|w| w[0].seq < w[1].seq),
                "{label}: in order:\n{all}"
            );
            // Stored whatever the level's lowest stored priority.
            let (result, page) = client.history("arena", 0, 100).await;
            assert_eq!(result, Ok(()), "{label}: history");
            let stored = page.msgs.unwrap_or_default();
            assert!(
                stored
                    .iter()
                    .any(|m| m.seq == 11 && m.is_final && m.merged == 1),
                "{label}: the final is not in the history (level 2 keeps priority 0 and \
                 finals):\n{}",
                describe(&stored)
            );
            assert!(
                stored.iter().all(|m| m.kind != "gift"),
                "{label}: level 2 keeps no priority-1 gift:\n{}",
                describe(&stored)
            );
        }
        let dropped = await_drops(admin, "budget").await;
        eprintln!("budget: the edge dropped {dropped} messages over budget");
        expect_silence_all(&mut clients, QUIET).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 5. bad rules are refused with a 400 naming the field; in a batch, per entry
// ---------------------------------------------------------------------------------------------

/// Bad messages (as text) and a part of the error message each must produce.
fn bad_rules() -> Vec<(String, &'static str)> {
    let long_key = "k".repeat(129);
    let seventeen: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
    let seventeen: Vec<&str> = seventeen.iter().map(String::as_str).collect();
    let m = |data: &str, rule: &str| message(2, "combo", data, Some(rule));
    vec![
        (
            m(r#"{"count":1}"#, r#"{"key":"k","op":"max"}"#),
            "merge.op must be latest or sum",
        ),
        (m(r#"{"count":1}"#, r#"{"key":"k"}"#), "merge.op"),
        (m(r#"{"count":1}"#, r#"{"key":"k","op":7}"#), "merge.op"),
        (
            m(r#"{"n":1}"#, &sum("k", &["count"], 100)),
            "data has no field `count` to sum",
        ),
        (
            m(r#"{"count":"7"}"#, &sum("k", &["count"], 100)),
            "data.count must be a number to sum",
        ),
        (
            m(r#"{"count":null}"#, &sum("k", &["count"], 100)),
            "data.count must be a number to sum",
        ),
        (m("[1]", &sum("k", &["count"], 100)), "data"),
        (m("7", &sum("k", &["count"], 100)), "data"),
        (
            m(r#"{"count":1}"#, r#"{"key":"bad key","op":"latest"}"#),
            "merge.key must be a string of 1-128 bytes",
        ),
        (
            m(r#"{"count":1}"#, r#"{"key":"","op":"latest"}"#),
            "merge.key must be a string of 1-128 bytes",
        ),
        (
            m(r#"{"count":1}"#, &latest(&long_key, None)),
            "merge.key must be a string of 1-128 bytes",
        ),
        (
            m(r#"{"count":1}"#, r#"{"key":7,"op":"latest"}"#),
            "merge.key",
        ),
        (m(r#"{"count":1}"#, r#"{"op":"latest"}"#), "merge.key"),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","fields":["count"]}"#,
            ),
            "merge.fields",
        ),
        (
            m(r#"{"count":1}"#, r#"{"key":"k","op":"sum"}"#),
            "merge.fields",
        ),
        (m(r#"{"count":1}"#, &sum("k", &[], 100)), "merge.fields"),
        (
            m(r#"{"count":1}"#, &sum("k", &["count", "count"], 100)),
            "merge.fields",
        ),
        (m(r#"{"f0":1}"#, &sum("k", &seventeen, 100)), "merge.fields"),
        (
            m(r#"{"count":1}"#, r#"{"key":"k","op":"latest","bogus":1}"#),
            "bogus",
        ),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","interval_ms":0}"#,
            ),
            "merge.interval_ms",
        ),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","interval_ms":3600001}"#,
            ),
            "merge.interval_ms",
        ),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","interval_ms":1.5}"#,
            ),
            "merge.interval_ms",
        ),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","interval_ms":"100"}"#,
            ),
            "merge.interval_ms",
        ),
        (
            m(
                r#"{"count":1}"#,
                r#"{"key":"k","op":"latest","final":"yes"}"#,
            ),
            "merge.final",
        ),
        (m(r#"{"count":1}"#, r#""latest""#), "merge"),
        (m(r#"{"count":1}"#, "null"), "merge"),
    ]
}

#[test]
fn bad_merge_rules_are_refused_with_400_naming_the_field_single_and_in_a_batch() {
    build_binaries();
    for_each_driver(|io| async move {
        let (control, _edge, mut clients, _) = one_edge_room(io, &[], "r1").await;
        let api = &control.api;
        let r1 = Target::Room("r1".into());
        let channels = [
            r1.clone(),
            Target::User("viewer-0".into()),
            Target::Broadcast,
        ];

        for target in &channels {
            for (body, names) in bad_rules() {
                let response = post_text(api, &path_of(target), &body).await;
                let message = response.error(400, "bad_request");
                assert!(
                    message.contains(names),
                    "POST {}: {body}\nrefused with {message:?}, which does not say {names:?}",
                    path_of(target)
                );
            }
        }
        // Refused: published nowhere, no seq taken.
        expect_silence_all(&mut clients, QUIET).await;

        // A batch: each bad entry gets its own error, the good ones go out.
        let good_sum = message(
            2,
            "combo",
            r#"{"user":"u42","count":3}"#,
            Some(&sum("combo:u42", &["count"], 200)),
        );
        let good_latest = message(1, "pk", r#"{"left":1}"#, Some(&latest("pk:1", None)));
        let bad = bad_rules();
        let entries = vec![
            entry(&r1, &good_sum),
            entry(&r1, &bad[0].0),
            entry(&channels[1], &good_latest),
            entry(&channels[2], &bad[3].0),
            entry(&r1, &bad[8].0),
            entry(&channels[2], &good_latest),
            entry(&r1, &bad[18].0),
        ];
        let results = publish_batch(api, &entries).await;
        for (i, names) in [(1, bad[0].1), (3, bad[3].1), (4, bad[8].1), (6, bad[18].1)] {
            let message = error_message(&results[i], "bad_request")
                .unwrap_or_else(|why| panic!("entry {i}: {why}: {}", results[i]));
            assert!(
                message.contains(names),
                "batch entry {i}: {}\nrefused with {message:?}, which does not say {names:?}",
                entries[i]
            );
        }
        let user = &channels[1];
        for (i, target) in [(0, &r1), (2, user), (5, &channels[2])] {
            assert_eq!(
                answer_of(&results[i], &format!("batch entry {i}")),
                Answer::Seq { seq: 1, edges: 1 },
                "batch entry {i}: the first message of {target:?} and of its key"
            );
        }
        let broadcast = &channels[2];
        let as_seen = |msgs: &[PushMessage]| -> Vec<(u64, String, u32)> {
            msgs.iter()
                .map(|m| (m.seq, text(m).to_owned(), m.merged))
                .collect()
        };
        for (i, client) in clients.iter_mut().enumerate() {
            let mut want = vec![(&r1, 1), (broadcast, 1)];
            if i == 0 {
                want.push((user, 1));
            }
            let got = read_channels(client, &want).await;
            let label = &client.label;
            assert_eq!(
                as_seen(&got[0]),
                vec![(1, r#"{"user":"u42","count":3}"#.to_owned(), 1)],
                "{label}: the good room entry, and nothing of the bad ones"
            );
            assert_eq!(
                as_seen(&got[1]),
                vec![(1, r#"{"left":1}"#.to_owned(), 1)],
                "{label}: the good broadcast entry"
            );
            if i == 0 {
                assert_eq!(
                    as_seen(&got[2]),
                    vec![(1, r#"{"left":1}"#.to_owned(), 1)],
                    "{label}: the good user entry"
                );
            }
        }
        expect_silence_all(&mut clients, QUIET).await;

        // The limits themselves are accepted: a 128-byte key, 16 fields, 1 ms and one hour.
        let sixteen: Vec<String> = (0..16).map(|i| format!("f{i}")).collect();
        let sixteen_refs: Vec<&str> = sixteen.iter().map(String::as_str).collect();
        let sixteen_data = format!(
            "{{{}}}",
            sixteen
                .iter()
                .map(|f| format!("\"{f}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let quiet_room = Target::Room("nobody-here".into());
        let limits = [
            message(1, "pk", "1", Some(&latest(&"k".repeat(128), None))),
            message(2, "c", &sixteen_data, Some(&sum("k16", &sixteen_refs, 1))),
            message(1, "pk", "2", Some(&latest("k1", Some(1)))),
            message(1, "pk", "3", Some(&latest("k3600", Some(3_600_000)))),
            message(
                1,
                "pk",
                "4",
                Some(r#"{"key":"kf","op":"latest","final":false}"#),
            ),
            message(
                1,
                "pk",
                "5",
                Some(r#"{"key":"kt","op":"latest","final":true}"#),
            ),
        ];
        for (i, body) in limits.iter().enumerate() {
            let answer = publish(api, &quiet_room, body).await;
            assert_eq!(
                answer,
                Answer::Seq {
                    seq: i as u64 + 1,
                    edges: 0
                },
                "{body}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 6. dedupe: a repeated id answers duplicate, and is not merged in again
// ---------------------------------------------------------------------------------------------

#[test]
fn a_repeated_id_is_a_duplicate_whether_its_first_was_published_or_held() {
    build_binaries();
    for_each_driver(|io| async move {
        const INTERVAL_MS: u64 = 1000;
        let (control, _edge, mut clients, _) = one_edge_room(io, &[], "likes").await;
        let api = &control.api;
        let room = Target::Room("likes".into());
        let rule = sum("likes:room", &["count"], INTERVAL_MS);
        let like = |id: &str, count: i64| {
            with_id(
                &message(3, "likes", &format!(r#"{{"count":{count}}}"#), Some(&rule)),
                id,
            )
        };
        let post = |body: String| async move {
            post_text(api, &path_of(&Target::Room("likes".into())), &body)
                .await
                .ok()
        };

        // The first opens the window and is published; its repeat is a duplicate of its seq.
        let first = post(like("like-1", 5)).await;
        assert_eq!(
            answer_of(&first, "like-1"),
            Answer::Seq { seq: 1, edges: 1 }
        );
        let again = post(like("like-1", 5)).await;
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(
            again["seq"], 1,
            "a duplicate names the first's seq: {again}"
        );
        assert_eq!(again["delivered_edges"], 0, "{again}");

        // A held one; its repeat is a duplicate, held, without a seq.
        let held = post(like("like-2", 7)).await;
        assert_eq!(answer_of(&held, "like-2"), Answer::Held);
        let again = post(like("like-2", 7)).await;
        assert_eq!(
            (&again["duplicate"], &again["held"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "the repeat of a held message: {again}"
        );
        assert!(again.get("seq").is_none(), "{again}");
        assert_eq!(again["delivered_edges"], 0, "{again}");

        // The same id twice in one batch: the first waits, the second is its duplicate.
        let entries = [like("like-3", 11), like("like-3", 11)].map(|b| entry(&room, &b));
        let results = publish_batch(api, &entries).await;
        assert_eq!(
            answer_of(&results[0], "like-3"),
            Answer::Held,
            "{results:?}"
        );
        assert_eq!(
            (&results[1]["duplicate"], &results[1]["held"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{results:?}"
        );

        // Delivered: like-1, then like-2 and like-3 summed once each (duplicates not added).
        for client in &mut clients {
            let msgs = read_msgs_until(client, &room, WAIT, |m| m.len() >= 2).await;
            let got: Vec<(u64, &str, u32)> =
                msgs.iter().map(|m| (m.seq, text(m), m.merged)).collect();
            assert_eq!(
                got,
                vec![(1, r#"{"count":5}"#, 1), (2, r#"{"count":18}"#, 2)],
                "{}: repeats must not be merged in again",
                client.label
            );
        }
        // Once the window has ended, the repeat of a held id still is a duplicate, and opens
        // nothing.
        let again = post(like("like-2", 7)).await;
        assert_eq!(again["duplicate"], true, "after the window: {again}");
        assert!(
            again.get("seq").is_none() || again["seq"] == 2,
            "a duplicate names no other message: {again}"
        );
        expect_silence_all(&mut clients, Duration::from_millis(INTERVAL_MS) + QUIET).await;
        let next = post(like("like-4", 1)).await;
        assert_eq!(
            answer_of(&next, "like-4"),
            Answer::Seq { seq: 3, edges: 1 },
            "the key was forgotten: a new message goes at once, right after the merged one"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 7. user and broadcast channels merge too (level 1's tick without interval_ms)
// ---------------------------------------------------------------------------------------------

#[test]
fn user_and_broadcast_publishes_merge_per_channel_on_every_edge() {
    build_binaries();
    for_each_driver(|io| async move {
        const N: u64 = 20;
        let control = Control::start(&[]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        let alice_h5 = Client::connect_authed(&a, WireFormat::WsJson, "alice").await;
        let alice_app = Client::connect_authed(&b, WireFormat::Tcp, "alice").await;
        let bob = Client::connect_authed(&b, WireFormat::WsBinary, "bob").await;
        let mut clients = vec![alice_h5, alice_app, bob];
        let api = &control.api;
        poll("alice on both edges", WAIT, || async move {
            let response = api.try_send(Request::new("GET", "/v1/users/alice")).await?;
            let view = response.json();
            match view["connections"].as_array().map(Vec::len) {
                Some(2) if response.status == 200 => Ok(()),
                _ => Err(format!("{response:?}")),
            }
        })
        .await;

        // A user's channel, the default window (level 1's tick, 100 ms): values every 20 ms.
        let alice = Target::User("alice".into());
        let rule = latest("score", None);
        let start = Instant::now();
        let mut publishes = Vec::new();
        for v in 1..=N {
            let body = message(1, "score", &format!(r#"{{"v":{v}}}"#), Some(&rule));
            publishes.push(publish_timed(api, &alice, &body).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let span = start.elapsed();
        let answers: Vec<Answer> = publishes.iter().map(|t| t.answer).collect();
        // Level 1's tick, 100 ms, is the window of a rule without `interval_ms`.
        assert_held_within_interval("user alice, score", &publishes, Duration::from_millis(100));
        assert_eq!(answers[0], Answer::Seq { seq: 1, edges: 2 }, "{answers:?}");
        let mut streams = Vec::new();
        for client in &mut clients[..2] {
            let msgs = read_msgs_until(client, &alice, WAIT, |m| {
                m.last().is_some_and(|m| data(m)["v"] == N)
            })
            .await;
            let label = &client.label;
            let all = describe(&msgs);
            assert_consecutive(label, &msgs, 1);
            let merged: u64 = msgs.iter().map(|m| u64::from(m.merged)).sum();
            assert_eq!(merged, N, "{label}: merged counts add up:\n{all}");
            assert!(
                msgs.len() < N as usize,
                "{label}: {N} publishes 20 ms apart in 100 ms windows were not merged:\n{all}"
            );
            let most = 2 + span.as_millis() as u64 / 100;
            assert!(
                msgs.len() as u64 <= most,
                "{label}: {} deliveries over {span:?} in 100 ms windows (at most {most}):\n{all}",
                msgs.len()
            );
            streams.push(msgs);
        }
        assert_eq!(
            streams[0], streams[1],
            "alice's two connections got different streams"
        );

        // Broadcast, in batches: everyone on both edges gets the exact sum.
        let rule = sum("likes:all", &["likes"], 200);
        let mut total = 0i64;
        let mut published = 0u64;
        for round in 0..3i64 {
            let entries: Vec<String> = (0..10i64)
                .map(|k| {
                    let likes = round * 100 + k * k;
                    total += likes;
                    published += 1;
                    entry(
                        &Target::Broadcast,
                        &message(3, "likes", &format!(r#"{{"likes":{likes}}}"#), Some(&rule)),
                    )
                })
                .collect();
            for result in publish_batch(api, &entries).await {
                answer_of(&result, "broadcast entry");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut streams = Vec::new();
        for client in &mut clients {
            let msgs = read_msgs_until(client, &Target::Broadcast, WAIT, |m| {
                m.iter().map(|m| u64::from(m.merged)).sum::<u64>() >= published
            })
            .await;
            let label = &client.label;
            let all = describe(&msgs);
            assert_consecutive(label, &msgs, 1);
            let likes: i64 = msgs
                .iter()
                .map(|m| data(m)["likes"].as_i64().unwrap())
                .sum();
            assert_eq!(likes, total, "{label}: the broadcast sum is exact:\n{all}");
            let merged: u64 = msgs.iter().map(|m| u64::from(m.merged)).sum();
            assert_eq!(merged, published, "{label}:\n{all}");
            streams.push(msgs);
        }
        assert!(
            streams.iter().all(|s| s == &streams[0]),
            "every connection gets the same broadcast stream"
        );
        let kinds: BTreeSet<&str> = streams[0].iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(kinds, BTreeSet::from(["likes"]));
        expect_silence_all(&mut clients, QUIET).await;
    });
}
