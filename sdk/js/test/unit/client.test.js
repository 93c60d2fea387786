// The client against a scripted fake server, with explicit time: states, reconnects and their
// delays, the close-code table, tokens, rooms, recovery, gaps, sends, acks, both encodings.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RoomcastClient, RoomcastError } from "../../dist/index.js";
import { FakeClock, FakeServer, fakeToken, flush, msg, record } from "./fake.js";

function setup(opts = {}, { ttlMs = 3600_000 } = {}) {
  const clock = new FakeClock();
  const server = new FakeServer();
  const tokens = [];
  const client = new RoomcastClient({
    url: ["ws://a/ws", "ws://b/ws"],
    getToken: () => {
      const t = fakeToken("u1", clock.now() + ttlMs);
      tokens.push(t);
      return t;
    },
    WebSocket: server.WebSocket,
    clock,
    random: () => 0.5,
    ...opts,
  });
  client.on("error", () => {});
  return { clock, server, client, tokens };
}

async function connected(opts, extra) {
  const ctx = setup(opts, extra);
  const p = ctx.client.connect();
  await flush();
  await p;
  return ctx;
}

test("connect: disconnected → connecting → connected, auth first, one state event per change", async () => {
  const { client, server } = setup();
  const states = record(client, ["state"]);
  assert.equal(client.state, "disconnected");
  const p = client.connect();
  assert.equal(client.state, "connecting");
  await flush();
  await p;
  assert.equal(client.state, "connected");
  assert.deepEqual(states.map(([, s]) => `${s.prev}>${s.state}`), ["disconnected>connecting", "connecting>connected"]);
  assert.deepEqual(server.last.ops().map((o) => o.op), ["auth"]);
  assert.equal(server.last.ops()[0].seq, 1);
  assert.equal(client.address, "ws://a/ws");
  assert.equal(client.user.id, "u1");
  client.close();
  assert.deepEqual(states.at(-1)[1], { state: "disconnected", prev: "connected", code: 1000, reason: "closed by the client" });
});

test("rooms: join resolves subscribed; messages, stats and state events; leave", async () => {
  const { client, server } = await connected();
  server.positions.set("room:r1", { epoch: "R1", last_seq: 10 });
  const room = client.room("r1");
  assert.equal(client.room("r1"), room, "one object per id");
  const log = record(room, ["state", "message", "stats"]);
  const joined = await room.join();
  assert.deepEqual(joined, { epoch: "R1", lastSeq: 10 });
  assert.deepEqual(server.last.ops("join")[0], { op: "join", seq: 2, room: "r1" });
  server.last.push({ op: "room", room: "r1", online: 7, users: 5 });
  server.last.push({ op: "batch", room: "r1", msgs: [msg(11), msg(12, { merged: 7, p: 1 }), msg(13, { final: true, merged: 1 }), msg(14, { from: "u9" })] });
  server.last.push({ op: "batch", room: "other", msgs: [msg(1)] });
  const kinds = log.map(([e, x]) => (e === "message" ? `m${x.seq}` : e === "state" ? x.state : `stats${x.online}/${x.users}`));
  assert.deepEqual(kinds, ["subscribing", "subscribed", "stats7/5", "m11", "m12", "m13", "m14"]);
  const ms = log.filter(([e]) => e === "message").map(([, m]) => m);
  assert.equal(ms[1].merged, 7);
  assert.equal(ms[1].priority, 1);
  assert.equal(ms[2].final, true);
  assert.equal(ms[3].from, "u9");
  assert.equal(ms[0].merged, undefined);
  assert.equal(ms[0].channel, "room");
  assert.equal(ms[0].target, "r1");
  assert.deepEqual(room.stats, { online: 7, users: 5 });
  assert.deepEqual(room.position, { epoch: "R1", seq: 14 });
  await room.leave();
  assert.equal(room.state, "unsubscribed");
  assert.equal(room.position, undefined);
  assert.deepEqual(server.last.ops("leave")[0], { op: "leave", seq: 3, room: "r1" });
  server.last.push({ op: "batch", room: "r1", msgs: [msg(15)] });
  assert.equal(log.filter(([e]) => e === "message").length, 4, "nothing after leave");
  client.close();
});

test("join before connect waits for the connection", async () => {
  const { client, server } = setup();
  const p = client.room("r1").join();
  assert.equal(client.room("r1").state, "subscribing");
  client.connect();
  await flush();
  await p;
  assert.deepEqual(server.last.ops().map((o) => o.op), ["auth", "join"]);
  client.close();
});

test("a drop: rooms go subscribing with the close code; reconnect after the jittered delay; rejoin with since; replay before live, once", async () => {
  const { client, server, clock } = await connected();
  const room = client.room("r1");
  await room.join();
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1), msg(2), msg(3)] });
  const log = record(room, ["state", "message"]);
  const recon = record(client, ["reconnect", "state"]);
  server.last.serverClose(4008, "slow");
  assert.deepEqual(log[0], ["state", { state: "subscribing", prev: "subscribed", code: 4008, reason: "slow" }]);
  assert.deepEqual(recon[0], ["state", { state: "connecting", prev: "connected", code: 4008, reason: "slow" }]);
  assert.deepEqual(recon[1], ["reconnect", { attempt: 1, delayMs: 550, code: 4008, reason: "slow" }]);
  server.positions.set("room:r1", { epoch: "E1", last_seq: 5 });
  await clock.advance(549);
  assert.equal(server.sockets.length, 1, "no attempt before the delay");
  await clock.advance(1);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.url, "ws://b/ws", "the next address");
  assert.deepEqual(server.last.ops("join")[0].since, { epoch: "E1", seq: 3 });
  server.last.push({ op: "batch", room: "r1", msgs: [msg(4), msg(5)] });
  server.last.push({ op: "batch", room: "r1", msgs: [msg(5), msg(6)] });
  const ms = log.filter(([e]) => e === "message").map(([, m]) => [m.seq, m.replayed]);
  assert.deepEqual(ms, [[4, true], [5, true], [6, false]]);
  assert.equal(room.state, "subscribed");
  client.close();
});

test("backoff: delays grow while attempts fail, are never below the floor, and reset only after a successful auth", async () => {
  const { client, server, clock } = setup({ backoff: { baseMs: 1000, capMs: 8000, minMs: 100 } });
  server.handler = (sock, op) => {
    if (op.op === "auth") sock.serverClose(1013, "try again later");
  };
  const recon = record(client, ["reconnect"]);
  client.connect();
  await flush();
  for (let i = 0; i < 6; i++) await clock.advance(recon.at(-1)[1].delayMs);
  const delays = recon.map(([, e]) => e.delayMs);
  // random 0.5: 100 + 0.5 * (ceiling - 100), ceilings 1000, 2000, 4000, 8000, 8000 ...
  assert.deepEqual(delays.slice(0, 6), [550, 1050, 2050, 4050, 4050, 4050]);
  assert.deepEqual(recon.map(([, e]) => e.attempt).slice(0, 6), [1, 2, 3, 4, 5, 6]);
  // now the server accepts: the counter resets on the auth reply, not on the socket opening
  server.handler = (sock, op) => server.defaultHandler(sock, op);
  await clock.advance(recon.at(-1)[1].delayMs);
  assert.equal(client.state, "connected");
  server.last.serverClose(1001, "shutdown");
  assert.deepEqual(recon.at(-1)[1], { attempt: 1, delayMs: 550, code: 1001, reason: "shutdown" });
  client.close();
});

test("no zero-delay loop: a server that accepts auth and closes at once is retried no faster than the floor", async () => {
  const { client, server, clock } = setup({ random: () => 0 });
  server.handler = (sock, op) => {
    server.defaultHandler(sock, op);
    if (op.op === "auth") queueMicrotask(() => sock.serverClose(4008, "slow"));
  };
  client.connect();
  await flush();
  const start = clock.now();
  for (let i = 0; i < 20; i++) await clock.advance(100);
  assert.ok(server.sockets.length <= 21, `${server.sockets.length} sockets in ${clock.now() - start} ms`);
  assert.ok(server.sockets.length >= 20);
  client.close();
  assert.equal(clock.timers.size, 0, "close leaves no timer behind");
});

test("a socket that never opens is given up after connectTimeoutMs, and the next address tried", async () => {
  const { client, server, clock } = setup({ connectTimeoutMs: 3000 });
  server.autoOpen = false;
  const recon = record(client, ["reconnect"]);
  client.connect();
  await flush();
  await clock.advance(2999);
  assert.equal(recon.length, 0);
  await clock.advance(1);
  assert.equal(recon[0][1].code, 1006);
  assert.match(recon[0][1].reason, /no connection within 3000 ms/);
  assert.deepEqual(server.sockets[0].closedByClient, { code: 1000, reason: "bye" });
  server.autoOpen = true;
  await clock.advance(recon[0][1].delayMs);
  assert.equal(server.last.url, "ws://b/ws");
  assert.equal(client.state, "connected");
  client.close();
});

test("a failed handshake (refused, HTTP 503 edge full) moves to the next address", async () => {
  const { client, server, clock } = setup();
  server.autoOpen = false;
  client.connect();
  await flush();
  server.sockets[0].fail();
  server.autoOpen = true;
  await clock.advance(550);
  assert.deepEqual(server.urls, ["ws://a/ws", "ws://b/ws"]);
  assert.equal(client.state, "connected");
  client.close();
});

test("4001: a new token, then reconnect; a second refusal in a row stops", async () => {
  const { client, server, clock, tokens } = setup();
  let refuse = 1;
  server.handler = (sock, op) => {
    if (op.op === "auth" && refuse-- > 0) {
      sock.error(op.seq, "token_expired", "token expired");
      sock.serverClose(4001, "unauthenticated");
      return;
    }
    server.defaultHandler(sock, op);
  };
  const p = client.connect();
  await flush();
  assert.equal(tokens.length, 1);
  await clock.advance(550);
  await p;
  assert.equal(tokens.length, 2, "getToken called again after the refusal");
  assert.equal(server.last.ops("auth")[0].token, tokens[1]);
  // a connected session dropped with 4001 refreshes too; then two refusals in a row stop it
  refuse = 1;
  const states = record(client, ["state"]);
  server.last.serverClose(4001, "unauthenticated");
  await clock.advance(60_000);
  assert.equal(client.state, "disconnected");
  assert.deepEqual(states.at(-1)[1], { state: "disconnected", prev: "connecting", code: 4001, reason: "unauthenticated" });
  assert.equal(tokens.length, 3, "the close took a new token, which was refused too: stop");
  assert.equal(clock.timers.size, 0, "stopped: no retry pending");
});

test("connect() rejects when the client stops", async () => {
  const { client, server, clock, tokens } = setup();
  server.handler = (sock, op) => {
    if (op.op === "auth") {
      sock.error(op.seq, "invalid_token", "bad signature");
      sock.serverClose(4001, "unauthenticated");
    }
  };
  const p = assert.rejects(client.connect(), (e) => e instanceof RoomcastError && e.code === "4001");
  await clock.advance(60_000);
  await p;
  assert.equal(tokens.length, 2);
  assert.equal(server.sockets.length, 2);
});

test("a token close to its expiry is replaced before it is used for a reconnect", async () => {
  const { client, server, clock, tokens } = await connected({}, { ttlMs: 60_000 });
  server.last.serverClose(1006, "");
  await clock.advance(550);
  assert.equal(tokens.length, 1, "still valid: reused");
  await clock.advance(60_000);
  server.last.serverClose(1006, "");
  await clock.advance(550);
  assert.equal(tokens.length, 2, "expired: a new one");
  assert.equal(server.last.ops("auth")[0].token, tokens[1]);
  client.close();
});

test("the platform's close codes stop (4403 banned) unless the app's table says otherwise", async () => {
  {
    const { client, server, clock } = await connected();
    const room = client.room("r1");
    const p = room.join();
    await p;
    const log = record(room, ["state"]);
    server.last.serverClose(4403, "banned");
    assert.equal(client.state, "disconnected");
    assert.deepEqual(log.at(-1)[1], { state: "unsubscribed", prev: "subscribing", code: 4403, reason: "banned" });
    await clock.advance(60_000);
    assert.equal(server.sockets.length, 1);
  }
  {
    const { client, server, clock } = await connected({ closeActions: { 4403: "reconnect" } });
    server.last.serverClose(4403, "banned");
    await clock.advance(550);
    assert.equal(server.sockets.length, 2);
    assert.equal(client.state, "connected");
    client.close();
  }
});

test("dispatch: addresses in order, a fresh list after a connected session ends, backoff when dispatch fails", async () => {
  const clock = new FakeClock();
  const server = new FakeServer();
  const answers = [
    { status: 200, body: { transport: "ws", addresses: ["ws://x/ws", "ws://y/ws"] } },
    { status: 503, body: { error: { code: "unavailable" } } },
    { status: 200, body: { transport: "ws", addresses: ["ws://z/ws"] } },
  ];
  const urls = [];
  const fetch = async (url) => {
    urls.push(url);
    const a = answers.shift();
    return { ok: a.status === 200, status: a.status, json: async () => a.body };
  };
  const client = new RoomcastClient({
    dispatchUrl: "http://api:9090/v1/dispatch", fetch, WebSocket: server.WebSocket, clock, random: () => 0.5,
    getToken: () => fakeToken("u1", clock.now() + 3600_000),
  });
  const errors = record(client, ["error", "reconnect"]);
  server.autoOpen = false;
  client.connect();
  await flush();
  assert.deepEqual(urls, ["http://api:9090/v1/dispatch?transport=ws"]);
  server.sockets[0].fail();
  server.autoOpen = true;
  await clock.advance(550);
  assert.deepEqual(server.urls, ["ws://x/ws", "ws://y/ws"]);
  assert.equal(client.state, "connected");
  server.last.serverClose(1001, "shutdown");
  await clock.advance(550); // dispatch answers 503: the old list is walked meanwhile
  assert.equal(urls.length, 2);
  assert.deepEqual(server.urls, ["ws://x/ws", "ws://y/ws", "ws://x/ws"]);
  assert.ok(errors.some(([e, x]) => e === "error" && /503/.test(x.message)));
  server.last.serverClose(1001, "shutdown");
  await clock.advance(550);
  assert.equal(server.last.url, "ws://z/ws");
  client.close();
});

test("a live gap fetches history; the fill is delivered in order and once, unstored seqs reported lost", async () => {
  const { client, server } = await connected();
  const room = client.room("r1");
  await room.join();
  const log = record(room, ["message", "lost"]);
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1), msg(2), msg(5)] });
  const h = server.last.ops("history");
  assert.deepEqual(h, [{ op: "history", seq: 3, room: "r1", since: 2, limit: 2 }]);
  server.last.push({ op: "batch", room: "r1", msgs: [msg(6)] });
  server.last.reply(h[0].seq, { epoch: "E1", last_seq: 6, complete: false, msgs: [msg(3), msg(5)] });
  const seen = log.map(([e, x]) => (e === "message" ? `${x.seq}${x.replayed ? "r" : ""}` : `lost${x.from}-${x.to}`));
  assert.deepEqual(seen, ["1", "2", "3r", "lost4-4", "5", "6"]);
  client.close();
});

test("gap fetches: one per room, at most 4 in flight on the connection; gapFill off reports lost at once", async () => {
  const { client, server } = await connected();
  const rooms = ["a", "b", "c", "d", "e"].map((id) => client.room(id));
  await Promise.all(rooms.map((r) => r.join()));
  for (const r of rooms) server.last.push({ op: "batch", room: r.id, msgs: [msg(1), msg(3)] });
  server.last.push({ op: "batch", room: "a", msgs: [msg(5)] });
  let h = server.last.ops("history");
  assert.deepEqual(h.map((o) => o.room), ["a", "b", "c", "d"]);
  server.last.reply(h[0].seq, { epoch: "E1", last_seq: 5, complete: true, msgs: [msg(2), msg(3), msg(4), msg(5)] });
  h = server.last.ops("history");
  assert.deepEqual(h.map((o) => o.room), ["a", "b", "c", "d", "e"], "the waiting room goes when a slot frees");
  assert.deepEqual(rooms[0].position, { epoch: "E1", seq: 5 });
  client.close();

  const c2 = await connected({ gapFill: false });
  const r = c2.client.room("r");
  await r.join();
  const log = record(r, ["message", "lost"]);
  c2.server.last.push({ op: "batch", room: "r", msgs: [msg(1), msg(4)] });
  assert.equal(c2.server.last.ops("history").length, 0);
  assert.deepEqual(log.map(([e, x]) => (e === "lost" ? [x.from, x.to, x.count] : x.seq)), [1, [2, 3, 2], 4]);
  c2.client.close();
});

test("a gap fetch that finds nothing pauses that room's fetches (gapFillPauseMs): later gaps are lost at once, then fetched again", async () => {
  const { client, server, clock } = await connected({ gapFillPauseMs: 10_000 });
  const room = client.room("big");
  await room.join();
  const log = record(room, ["message", "lost"]);
  const show = () => log.map(([e, x]) => (e === "lost" ? `lost${x.from}-${x.to}` : x.seq));
  server.last.push({ op: "batch", room: "big", msgs: [msg(1), msg(4)] });
  let h = server.last.ops("history");
  assert.equal(h.length, 1);
  server.last.reply(h[0].seq, { epoch: "E1", last_seq: 4, complete: false, msgs: [msg(4)] }); // chat not stored
  server.last.push({ op: "batch", room: "big", msgs: [msg(6)] });
  assert.equal(server.last.ops("history").length, 1, "paused: not asked");
  assert.deepEqual(show(), [1, "lost2-3", 4, "lost5-5", 6]);
  await clock.advance(10_000);
  server.last.push({ op: "batch", room: "big", msgs: [msg(8)] });
  h = server.last.ops("history");
  assert.equal(h.length, 2, "asked again after the pause");
  server.last.reply(h[1].seq, { epoch: "E1", last_seq: 8, complete: true, msgs: [msg(7), msg(8)] });
  assert.deepEqual(show().slice(-2), [7, 8]);
  client.close();
});

test("recovered:false raises reload (the app reloads state), then the stream goes on from last_seq", async () => {
  const { client, server, clock } = await connected();
  const room = client.room("r1");
  await room.join();
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1), msg(2)] });
  const log = record(room, ["reload", "message", "state"]);
  server.positions.set("room:r1", { epoch: "E2", last_seq: 40 });
  server.last.serverClose(1006, "");
  await clock.advance(550);
  assert.deepEqual(server.last.ops("join")[0].since, { epoch: "E1", seq: 2 });
  server.last.push({ op: "batch", room: "r1", msgs: [msg(41)] });
  const got = log.map(([e, x]) => (e === "reload" ? `reload:${x.reason}:${x.epoch}:${x.lastSeq}` : e === "state" ? x.state : x.seq));
  assert.deepEqual(got, ["subscribing", "subscribed", "reload:epoch_changed:E2:40", 41]);
  client.close();
});

test("user channel: auth resumes with since; ack automatic (default) and manual; acks made offline are sent after reconnect", async () => {
  const { client, server, clock } = await connected();
  const got = [];
  client.user.on("message", (m) => got.push(m));
  server.last.push({ op: "batch", user: "u1", msgs: [msg(1, { ack: true, kind: "reward" }), msg(2)] });
  assert.equal(got[0].ackRequested, true);
  assert.equal(got[0].channel, "user");
  assert.equal(got[1].ackRequested, false);
  assert.deepEqual(server.last.ops("ack"), [{ op: "ack", seq: 2, msg_seq: 1 }]);
  got[0].ack(); // idempotent
  assert.equal(server.last.ops("ack").length, 1);
  server.last.serverClose(1006, "");
  await clock.advance(550);
  assert.deepEqual(server.last.ops("auth")[0].since, { epoch: "E1", seq: 2 });
  client.close();

  const c2 = await connected({ autoAck: false });
  const got2 = [];
  c2.client.user.on("message", (m) => got2.push(m));
  c2.server.last.push({ op: "batch", user: "u1", msgs: [msg(1, { ack: true })] });
  assert.equal(c2.server.last.ops("ack").length, 0, "manual: nothing until ack()");
  c2.server.last.serverClose(1006, "");
  got2[0].ack(); // while disconnected: queued
  await c2.clock.advance(550);
  assert.deepEqual(c2.server.last.ops("ack"), [{ op: "ack", seq: 2, msg_seq: 1 }]);
  c2.client.close();
});

test("room messages never ask for acks; broadcast gaps are reported lost", async () => {
  const { client, server } = await connected();
  const room = client.room("r1");
  await room.join();
  const rm = [];
  room.on("message", (m) => rm.push(m));
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1, { ack: true })] });
  assert.equal(rm[0].ackRequested, false);
  const b = record(client.broadcast, ["message", "lost"]);
  server.last.push({ op: "batch", broadcast: true, msgs: [msg(7, { p: 0 })] });
  server.last.push({ op: "batch", broadcast: true, msgs: [msg(9, { p: 0 })] });
  assert.deepEqual(b.map(([e, x]) => (e === "lost" ? `lost${x.from}` : x.seq)), [7, "lost8", 9]);
  client.close();
});

test("a ping every 25 s; silence for deadTimeoutMs drops the connection and reconnects", async () => {
  const { client, server, clock } = await connected();
  await clock.advance(100_000);
  assert.equal(server.last.ops("ping").length, 4);
  assert.equal(server.sockets.length, 1, "pings answered: alive");
  server.handler = () => {}; // the server goes silent
  const recon = record(client, ["reconnect"]);
  await clock.advance(39_999);
  assert.equal(recon.length, 0);
  await clock.advance(1);
  assert.equal(recon.length, 1);
  assert.match(recon[0][1].reason, /dead connection: nothing received for 40000 ms/);
  client.close();
});

test("send: msgSeq or broadcast:false; errors carry code, retryAfterMs, platformCode; local refusals", async () => {
  const { client, server, clock } = await connected();
  const room = client.room("r1");
  await assert.rejects(room.send("chat", {}), (e) => e.code === "not_joined" && e.local);
  await room.join();
  const answer = (fn) => {
    server.handler = (sock, op) => (op.op === "send" ? fn(sock, op) : server.defaultHandler(sock, op));
  };
  answer((s, op) => s.reply(op.seq, { msg_seq: 1043 }));
  assert.deepEqual(await room.send("chat", { text: "666" }), { broadcast: true, msgSeq: 1043 });
  assert.deepEqual(server.last.ops("send")[0], { op: "send", seq: 3, room: "r1", kind: "chat", data: { text: "666" } });
  answer((s, op) => s.reply(op.seq, { broadcast: false }));
  assert.deepEqual(await room.send("like", 1), { broadcast: false });
  answer((s, op) => s.error(op.seq, "rejected", "you are muted", { platform_code: "muted" }));
  await assert.rejects(room.send("chat", "x"), (e) => e instanceof RoomcastError && e.code === "rejected" && e.platformCode === "muted" && e.message === "you are muted");
  answer((s, op) => s.error(op.seq, "rate_limited", "over this connection's send rate", { retry_after_ms: 400 }));
  await assert.rejects(room.send("chat", "x"), (e) => e.code === "rate_limited" && e.retryAfterMs === 400 && !e.local);
  const sent = server.last.ops("send").length;
  await clock.advance(100);
  await assert.rejects(room.send("chat", "x"), (e) => e.code === "rate_limited" && e.retryAfterMs === 300 && e.local);
  assert.equal(server.last.ops("send").length, sent, "refused locally, not sent");
  await clock.advance(300);
  answer(() => {}); // in flight when the connection drops
  const inflight = room.send("chat", "x");
  server.last.serverClose(1006, "");
  await assert.rejects(inflight, (e) => e.code === "connection_lost");
  await assert.rejects(room.send("chat", "x"), (e) => e.code === "not_connected");
  client.close();
});

test("4030 send flood: sends pause locally, reconnect with backoff", async () => {
  const { client, server, clock } = await connected({ sendPauseAfterFloodMs: 10_000 });
  const room = client.room("r1");
  await room.join();
  server.last.serverClose(4030, "send flood");
  await clock.advance(550);
  assert.equal(client.state, "connected");
  await assert.rejects(room.send("chat", 1), (e) => e.code === "send_paused" && e.retryAfterMs === 10_000 - 550);
  await clock.advance(10_000);
  server.handler = (sock, op) => (op.op === "send" ? sock.reply(op.seq, { msg_seq: 1 }) : server.defaultHandler(sock, op));
  assert.deepEqual(await room.send("chat", 1), { broadcast: true, msgSeq: 1 });
  client.close();
});

test("join refused: unsubscribed with the code, the promise rejects; unavailable is retried after a delay", async () => {
  const { client, server, clock } = await connected();
  let unavailable = 1;
  server.handler = (sock, op) => {
    if (op.op === "join" && op.room === "vip") return sock.error(op.seq, "room_forbidden", "not in your token");
    if (op.op === "join" && unavailable-- > 0) return sock.error(op.seq, "unavailable", "could not confirm");
    server.defaultHandler(sock, op);
  };
  const vip = client.room("vip");
  const log = record(vip, ["state"]);
  await assert.rejects(vip.join(), (e) => e.code === "room_forbidden");
  assert.deepEqual(log.at(-1)[1], { state: "unsubscribed", prev: "subscribing", code: "room_forbidden", reason: "not in your token" });
  const r = client.room("r1");
  const p = r.join();
  await flush();
  assert.equal(r.state, "subscribing");
  await clock.advance(550);
  await p;
  assert.equal(r.state, "subscribed");
  assert.equal(server.last.ops("join").filter((o) => o.room === "r1").length, 2);
  client.close();
});

test("binary encoding: ops go as binary frames, pushes decode the same as JSON", async () => {
  const { client, server } = await connected({ encoding: "binary" });
  assert.ok(server.last.sent[0] instanceof Uint8Array);
  const room = client.room("r1");
  await room.join();
  const got = [];
  room.on("message", (m) => got.push(m));
  room.on("stats", (s) => got.push(s));
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1, { merged: 3, final: true, from: "u2", data: { x: [1, "é"] } })] });
  server.last.push({ op: "room", room: "r1", online: 3, users: 2 });
  assert.equal(got[0].merged, 3);
  assert.equal(got[0].final, true);
  assert.equal(got[0].from, "u2");
  assert.deepEqual(got[0].data, { x: [1, "é"] });
  assert.deepEqual(got[1], { online: 3, users: 2 });
  server.handler = (sock, op) => (op.op === "send" ? sock.error(op.seq, "rate_limited", "slow", { retry_after_ms: 250 }) : undefined);
  await assert.rejects(room.send("chat", { t: 1 }), (e) => e.code === "rate_limited" && e.retryAfterMs === 250);
  client.close();
});

test("a listener that throws is reported and does not stop delivery", async () => {
  const { client, server } = await connected();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const room = client.room("r1");
  await room.join();
  const seen = [];
  room.on("message", () => {
    throw new Error("app bug");
  });
  room.on("message", (m) => seen.push(m.seq));
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1), msg(2)] });
  assert.deepEqual(seen, [1, 2]);
  assert.equal(errors.filter((e) => e.message === "app bug").length, 2);
  client.close();
});

test("a listener may close the client from inside an event: nothing reconnects afterwards", async () => {
  for (const where of ["room state", "client state", "reconnect"]) {
    const { client, server, clock } = await connected();
    const room = client.room("r1");
    await room.join();
    if (where === "room state") room.on("state", (c) => c.state === "subscribing" && client.close());
    if (where === "client state") client.on("state", (c) => c.state === "connecting" && client.close());
    if (where === "reconnect") client.on("reconnect", () => client.close());
    server.last.serverClose(1006, "");
    await clock.advance(60_000);
    assert.equal(client.state, "disconnected", where);
    assert.equal(server.sockets.length, 1, `${where}: no new connection`);
    assert.equal(clock.timers.size, 0, `${where}: no timer left`);
  }
});

test("close(): disconnected, rooms unsubscribed but keep their position, joins resume after connect()", async () => {
  const { client, server, clock } = await connected();
  const room = client.room("r1");
  await room.join();
  server.last.push({ op: "batch", room: "r1", msgs: [msg(1)] });
  client.close();
  assert.equal(client.state, "disconnected");
  assert.equal(room.state, "unsubscribed");
  assert.equal(clock.timers.size, 0);
  assert.deepEqual(server.last.closedByClient, { code: 1000, reason: "bye" });
  await assert.rejects(room.send("chat", 1), (e) => e.code === "closed");
  const p = client.connect();
  await flush();
  await p;
  await room.join();
  assert.deepEqual(server.last.ops("join")[0].since, { epoch: "E1", seq: 1 });
  client.close();
});
