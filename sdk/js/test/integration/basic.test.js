// Against the real roomcast-control (control plane + embedded edge): connect through dispatch,
// join, receive, online counts, merged messages, send and its errors, receipts, tokens, binary.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RoomcastClient, RoomcastError } from "../../dist/index.js";
import { System, sleep, until } from "./system.js";

let sys;
const clients = [];
before(async () => {
  sys = await new System().start();
});
after(async () => {
  for (const c of clients) c.close();
  await sys?.stop();
});

function client(user, opts = {}) {
  const c = new RoomcastClient({ dispatchUrl: sys.dispatchUrl, getToken: () => sys.token(user), WebSocket, ...opts });
  c.errors = [];
  c.on("error", (e) => c.errors.push(e));
  clients.push(c);
  return c;
}
function collect(ch) {
  const got = [];
  ch.on("message", (m) => got.push(m));
  return got;
}

test("connect via dispatch, join, receive in order, online counts, merged and final messages", async () => {
  const c = client("u1");
  const states = [];
  c.on("state", (s) => states.push(`${s.prev}>${s.state}`));
  await c.connect();
  assert.equal(c.address, sys.wsUrl, "the dispatched address");
  assert.deepEqual(states, ["disconnected>connecting", "connecting>connected"]);
  const room = c.room("basic-1");
  const got = collect(room);
  const stats = [];
  room.on("stats", (s) => stats.push(s));
  const joined = await room.join();
  assert.equal(joined.lastSeq, 0);
  assert.match(joined.epoch, /^[A-Za-z0-9_-]+$/);
  for (let i = 1; i <= 3; i++) assert.equal((await sys.publish("basic-1", { i })).seq, i);
  await until(() => got.length === 3, "three messages");
  assert.deepEqual(got.map((m) => [m.seq, m.kind, m.data.i, m.replayed]), [[1, "chat", 1, false], [2, "chat", 2, false], [3, "chat", 3, false]]);
  await until(() => stats.length > 0, "the room's online count", 10_000);
  assert.deepEqual(stats.at(-1), { online: 1, users: 1 });
  // merge rules: the first of a key at once, the rest of the window as one message, a final
  const combo = { merge: { key: "combo:u9", op: "sum", fields: ["count"], interval_ms: 300 }, kind: "combo" };
  await sys.publish("basic-1", { count: 1 }, combo);
  await sys.publish("basic-1", { count: 2 }, combo);
  await sys.publish("basic-1", { count: 3 }, combo);
  await sys.publish("basic-1", { winner: "left" }, { kind: "pk", priority: 1, merge: { key: "pk:1", op: "latest", final: true } });
  await until(() => got.length === 6, "the merged messages");
  // combo 1 at once; 2 and 3 wait for the window; the pk final (another key) at once; then 2+3 as one
  const tail = got.slice(3).map((m) => [m.kind, m.merged, m.final, m.data.count ?? m.data.winner]);
  assert.deepEqual(tail, [["combo", 1, false, 1], ["pk", 1, true, "left"], ["combo", 2, false, 5]]);
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(c.errors, []);
});

test("send: published with msgSeq and echoed with from; rate_limited carries retryAfterMs; not_joined", async () => {
  const c = client("u2");
  await c.connect();
  const room = c.room("basic-send");
  const got = collect(room);
  await assert.rejects(room.send("chat", { text: "early" }), (e) => e instanceof RoomcastError && e.code === "not_joined");
  await room.join();
  const r = await room.send("chat", { text: "666" });
  assert.deepEqual(r, { broadcast: true, msgSeq: 1 });
  await until(() => got.length === 1, "the echo");
  assert.equal(got[0].from, "u2");
  assert.deepEqual(got[0].data, { text: "666" });
  assert.equal(got[0].priority, 3);
  // the edge's default bucket: 5 at once, 2 per second
  const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => room.send("chat", { i })));
  const refused = results.filter((x) => x.status === "rejected").map((x) => x.reason);
  assert.ok(refused.length >= 3, `${refused.length} refused`);
  for (const e of refused) {
    assert.equal(e.code, "rate_limited");
    assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 1000, `retryAfterMs ${e.retryAfterMs}`);
  }
  const wait = Math.max(...refused.map((e) => e.retryAfterMs));
  await sleep(wait + 50);
  assert.equal((await room.send("chat", { again: true })).broadcast, true);
  await assert.rejects(room.send("shout", {}), (e) => e.code === "bad_request", "a kind the edge does not accept");
});

test("binary encoding: join, receive (from, merged), send", async () => {
  const c = client("u3", { encoding: "binary" });
  await c.connect();
  const room = c.room("basic-bin");
  const got = collect(room);
  await room.join();
  await sys.publish("basic-bin", { emoji: "🎁", n: [1, 2] }, { kind: "gift", priority: 1 });
  const sent = await room.send("like", { n: 1 });
  assert.equal(sent.broadcast, true);
  await until(() => got.length === 2, "two messages");
  assert.deepEqual(got[0].data, { emoji: "🎁", n: [1, 2] });
  assert.equal(got[0].priority, 1);
  assert.equal(got[1].from, "u3");
  assert.equal(got[1].seq, sent.msgSeq);
  const page = await room.history(0, 10);
  assert.equal(page.complete, true);
  assert.deepEqual(page.messages.map((m) => m.seq), [1, 2]);
});

test("receipts: automatic ack by default, manual ack with autoAck off", async () => {
  const auto = client("u4");
  await auto.connect();
  const got = collect(auto.user);
  const { seq } = await sys.publishUser("u4", { coins: 100 }, { kind: "reward", ack: true });
  await until(() => got.length === 1, "the user message");
  assert.equal(got[0].ackRequested, true);
  assert.equal(got[0].channel, "user");
  await until(async () => (await sys.receipt("u4", seq)).acknowledged, "the receipt");

  const manual = client("u5", { autoAck: false });
  await manual.connect();
  const got5 = collect(manual.user);
  const m = await sys.publishUser("u5", { coins: 5 }, { kind: "reward", ack: true });
  await until(() => got5.length === 1, "the user message");
  await sleep(300);
  assert.equal((await sys.receipt("u5", m.seq)).acknowledged, false, "not before ack()");
  got5[0].ack();
  await until(async () => (await sys.receipt("u5", m.seq)).acknowledged, "the manual receipt");
});

test("tokens: an expired token is replaced after 4001; a token refused twice stops the client", async () => {
  const expired = await sys.token("u6", 1);
  await sleep(2100); // exp has second resolution
  let calls = 0;
  const c = client("u6", { getToken: async () => (++calls === 1 ? expired : sys.token("u6")), backoff: { baseMs: 200 } });
  const recon = [];
  c.on("reconnect", (e) => recon.push(e));
  await c.connect();
  assert.equal(calls, 2);
  assert.equal(recon[0].code, 4001);
  assert.ok(recon[0].delayMs >= 100 && recon[0].delayMs <= 200);

  let bad = 0;
  const b = client("u7", { getToken: () => (++bad, "not.a.token"), backoff: { baseMs: 200 } });
  const states = [];
  b.on("state", (s) => states.push(s));
  await assert.rejects(b.connect(), (e) => e.code === "4001");
  assert.equal(bad, 2, "one new token, then stop");
  assert.deepEqual(states.at(-1), { state: "disconnected", prev: "connecting", code: 4001, reason: "unauthenticated" });
});
