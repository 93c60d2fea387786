// Reconnecting against the real roomcast-control: connections cut under the clients (a TCP proxy
// between them and the edge) with the server up → exact recovery; a stalled reader closed as
// slow (4008) → recovery; the server killed and restarted → reload.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RoomcastClient } from "../../dist/index.js";
import { Proxy, System, sleep, until } from "./system.js";

function watchRoom(room) {
  const log = { msgs: [], states: [], reloads: [], lost: [] };
  room.on("message", (m) => log.msgs.push(m));
  room.on("state", (s) => log.states.push(s));
  room.on("reload", (r) => log.reloads.push(r));
  room.on("lost", (l) => log.lost.push(l));
  return log;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("connections cut with the server up: each client reconnects after its own jittered delay and gets exactly what it missed, once, in order, before live messages", async () => {
  const sys = await new System().start();
  const proxy = await new Proxy(sys.ports.ws).start();
  const clients = [];
  try {
    const n = 5;
    const logs = [];
    const recons = [];
    for (let i = 0; i < n; i++) {
      const user = `rec${i}`;
      const c = new RoomcastClient({ url: proxy.wsUrl, getToken: () => sys.token(user), WebSocket, backoff: { baseMs: 1000, capMs: 4000, minMs: 300 } });
      c.on("error", () => {});
      const r = [];
      c.on("reconnect", (e) => r.push({ ...e, at: Date.now() }));
      recons.push(r);
      await c.connect();
      const room = c.room("rec");
      logs.push(watchRoom(room));
      await room.join();
      clients.push(c);
    }
    for (let i = 1; i <= 5; i++) await sys.publish("rec", { i });
    await until(() => logs.every((l) => l.msgs.length === 5), "the first five everywhere");

    const cutAt = Date.now();
    const acceptedBefore = proxy.accepted;
    proxy.dropAll();
    await until(() => clients.every((c) => c.state === "connecting"), "every client noticing the cut");
    for (let i = 6; i <= 20; i++) await sys.publish("rec", { i }); // missed while away
    await until(() => clients.every((c) => c.state === "connected") && logs.every((l) => l.msgs.length >= 20), "every client back and caught up", 10_000);
    for (let i = 21; i <= 25; i++) await sys.publish("rec", { i }); // live again
    await until(() => logs.every((l) => l.msgs.length === 25), "the live messages");
    await sleep(200);

    const delays = recons.map((r) => r[0].delayMs);
    for (let k = 0; k < n; k++) {
      const l = logs[k];
      assert.deepEqual(l.msgs.map((m) => m.seq), range(1, 25), `client ${k}: every seq once, in order`);
      assert.deepEqual(l.msgs.map((m) => m.data.i), range(1, 25));
      // What was published before the rejoin comes from the replay, the rest live: the replayed
      // ones are a prefix of what followed the cut (on a quiet host, all of 6..20).
      const flags = l.msgs.slice(5).map((m) => m.replayed);
      assert.ok(flags[0], `client ${k}: 6 came from the recovery replay`);
      assert.ok(flags.every((f, i) => i === 0 || !f || flags[i - 1]), `client ${k}: no live message before a replayed one: ${flags}`);
      assert.ok(l.msgs.slice(20).every((m) => !m.replayed), `client ${k}: 21..25 live`);
      assert.deepEqual(l.reloads, [], "no reload: the recovery was exact");
      assert.deepEqual(l.lost, []);
      assert.deepEqual(l.states.map((s) => `${s.state}:${s.code ?? ""}`), ["subscribing:", "subscribed:", "subscribing:1006", "subscribed:"]);
      assert.equal(recons[k].length, 1);
      assert.equal(recons[k][0].attempt, 1);
      assert.equal(recons[k][0].code, 1006);
      assert.ok(delays[k] >= 300 && delays[k] <= 1000, `delay ${delays[k]} within [300, 1000]`);
    }
    assert.ok(new Set(delays).size > 1, `full jitter: the delays differ (${delays})`);
    assert.equal(proxy.accepted - acceptedBefore, n, "one reconnection each");
    assert.ok(Date.now() - cutAt >= Math.min(...delays));
  } finally {
    for (const c of clients) c.close();
    await proxy.stop();
    await sys.stop();
  }
});

test("a reader that stops is closed as slow (4008); the client reconnects and recovers what was shed", async () => {
  // A small soft queue bound and socket buffer, a 1 s write-stall timeout: a reader that takes no
  // byte for 1 s is closed 4008; the close frame is read if it resumes within the edge's 2 s
  // grace. (The hard bound stays at 1 MiB, above the recovery replay.)
  const sys = await new System({
    env: {
      ROOMCAST_WRITE_STALL_TIMEOUT_MS: "1000",
      ROOMCAST_QUEUE_SOFT_BYTES: "16384",
      ROOMCAST_SOCKET_SEND_BUFFER_BYTES: "8192",
    },
    // room for everything the paused reader misses in the history and in one recovery
    args: [
      "--history-levels", "5000:300:3,500:300:3,1000:180:3,1000:120:2",
      "--history-channel-max-bytes", "67108864",
      "--recover-max-messages", "5000",
      "--recover-max-bytes", "16777216",
    ],
  }).start();
  const proxy = await new Proxy(sys.ports.ws).start();
  const c = new RoomcastClient({ url: proxy.wsUrl, getToken: () => sys.token("slow1"), WebSocket, backoff: { baseMs: 300 } });
  c.on("error", () => {});
  try {
    const recon = [];
    c.on("reconnect", (e) => recon.push(e));
    await c.connect();
    const room = c.room("slow");
    const log = watchRoom(room);
    await room.join();
    for (let i = 1; i <= 3; i++) await sys.publish("slow", { i });
    await until(() => log.msgs.length === 3, "the first three");

    proxy.pause(); // the client's side stops reading
    const pad = "x".repeat(1000);
    let published = 3;
    // ~1 KB lines, 10 per window: the loopback buffers between edge and proxy take some, then
    // the socket stops taking bytes, the queue sheds its oldest frames over the soft bound and
    // the stall clock runs. The edge's close takes the reader out of the room at once (the
    // control plane hears within ~20 ms): resume then, well within the close's 2 s grace, so
    // that the client reads the 4008 close frame.
    const online = async () => (await sys.call("GET", "/v1/rooms/slow")).online;
    await until(async () => (await online()) === 1, "the control plane counting the reader");
    for (let b = 0; (await online()) > 0; b++) {
      if (b > 300) throw new Error(`the stalled reader was never closed (${published} published)`);
      await sys.publishMany(Array.from({ length: 10 }, () => ({ room: "slow", priority: 3, kind: "chat", data: { i: ++published, pad } })));
      await sleep(40);
    }
    proxy.resume();
    await until(() => recon.length > 0, "the reconnect");
    assert.deepEqual([recon[0].code, recon[0].reason], [4008, "slow"]);
    await until(() => c.state === "connected" && room.state === "subscribed", "back");
    // The replay first: with this tiny soft bound a live batch arriving behind a replay still
    // queued would be shed, and a shed tail has no later message to reveal it.
    await until(() => log.msgs.length === published, `the ${published} messages up to the close`, 15_000);
    for (let i = 1; i <= 3; i++) await sys.publish("slow", { i: ++published });
    await until(() => log.msgs.length === published, `all ${published} messages`, 15_000).catch((e) => {
      const seqs = log.msgs.map((m) => m.seq);
      throw new Error(`${e.message}: got ${seqs.length} (last ${seqs.slice(-3)}); lost ${JSON.stringify(log.lost)}; reloads ${JSON.stringify(log.reloads)}; states ${JSON.stringify(log.states)}; reconnects ${JSON.stringify(recon)}; client ${c.state}; held ${room.tracker?.held}`);
    });
    await sleep(200);
    assert.deepEqual(log.msgs.map((m) => m.seq), range(1, published), "every seq once, in order");
    assert.deepEqual(log.msgs.map((m) => m.data.i), range(1, published));
    assert.deepEqual(log.reloads, []);
    assert.deepEqual(log.lost, []);
    assert.ok(log.msgs.some((m) => m.replayed), "what was shed came from the recovery");
    assert.ok(!log.msgs.at(-1).replayed, JSON.stringify({ tail: log.msgs.slice(-6).map((m) => [m.seq, m.replayed]), states: log.states, published }));
    assert.deepEqual(log.states.map((s) => `${s.state}:${s.code ?? ""}`), ["subscribing:", "subscribed:", "subscribing:4008", "subscribed:"]);
  } finally {
    c.close();
    await proxy.stop();
    await sys.stop();
  }
});

test("the server killed and restarted: reconnect with growing jittered delays, then reload (epoch_changed) and the new stream", async () => {
  const sys = await new System().start();
  const c = new RoomcastClient({ dispatchUrl: sys.dispatchUrl, getToken: () => sys.token("k1"), WebSocket, backoff: { baseMs: 150, capMs: 1200, minMs: 50 } });
  c.on("error", () => {});
  try {
    const recon = [];
    const states = [];
    c.on("reconnect", (e) => recon.push(e));
    c.on("state", (s) => states.push(`${s.state}:${s.code ?? ""}`));
    const userReloads = [];
    c.user.on("reload", (r) => userReloads.push(r));
    await c.connect();
    const room = c.room("killed");
    const log = watchRoom(room);
    const first = await room.join();
    for (let i = 1; i <= 3; i++) await sys.publish("killed", { i });
    await until(() => log.msgs.length === 3, "three messages");

    await sys.kill();
    await until(() => recon.length >= 4, "several failed attempts while the server is down", 15_000);
    await sys.start(); // same ports, history gone
    await until(() => c.state === "connected" && room.state === "subscribed", "back", 15_000);
    assert.equal(log.reloads.length, 1);
    assert.equal(log.reloads[0].reason, "epoch_changed");
    assert.notEqual(log.reloads[0].epoch, first.epoch);
    assert.equal(userReloads.length, 1, "the user channel is reloaded too");
    const { seq } = await sys.publish("killed", { after: true });
    await until(() => log.msgs.length === 4, "the new stream");
    assert.equal(log.msgs[3].seq, seq);
    assert.deepEqual(log.msgs[3].data, { after: true });

    const atts = recon.map((e) => e.attempt);
    assert.deepEqual(atts.slice(0, 4), [1, 2, 3, 4], "the counter grows while attempts fail");
    for (const e of recon) {
      const ceiling = Math.min(1200, 150 * 2 ** (e.attempt - 1));
      assert.ok(e.delayMs >= 50 && e.delayMs <= ceiling, `attempt ${e.attempt}: ${e.delayMs} outside [50, ${ceiling}]`);
    }
    assert.deepEqual(states, ["connecting:", "connected:", "connecting:1006", "connected:"]);
  } finally {
    c.close();
    await sys.stop();
  }
});
