// Live gaps on a real edge: a rate level's budget drops messages from the stream; the client
// fetches them from history (stored priorities) or reports them lost (priorities not stored).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RoomcastClient } from "../../dist/index.js";
import { System, until } from "./system.js";

let sys;
let c;
before(async () => {
  // A room with one viewer enters level 2, whose budget is one message per priority per 100 ms
  // tick and whose history does not keep chat (priority 3). (Level 1's budgets are not used:
  // --level1-budgets never reaches the edge for a room that was never leveled.)
  sys = await new System({
    args: [
      "--level-thresholds", "1,100000,200000",
      "--level-ticks-ms", "100,100,500,1000",
      "--level2-budgets", "1,1,1",
      "--history-levels", "300:300:3,300:300:2,1000:180:3,1000:120:2",
    ],
  }).start();
  c = new RoomcastClient({ url: sys.wsUrl, getToken: () => sys.token("g1"), WebSocket });
  await c.connect();
});
after(async () => {
  c?.close();
  await sys?.stop();
});

/** Joins and waits until the control plane has the room at level 2 (reports come every second). */
async function joinLeveled(room) {
  await room.join();
  await until(async () => (await sys.call("GET", `/v1/rooms/${room.id}`)).level === 2, "level 2", 10_000, 100);
  await new Promise((r) => setTimeout(r, 100)); // the set-level frame reaches the edge
}

function watch(room) {
  const log = [];
  room.on("message", (m) => log.push({ seq: m.seq, replayed: m.replayed }));
  room.on("lost", (l) => log.push({ lost: [l.from, l.to] }));
  room.on("reload", (r) => log.push({ reload: r.reason }));
  return log;
}

test("messages a budget dropped are fetched from history: every seq once, in order", async () => {
  const room = c.room("gap-stored");
  const log = watch(room);
  await joinLeveled(room);
  await sys.publishMany(Array.from({ length: 10 }, (_, i) => ({ room: "gap-stored", priority: 2, kind: "gift", data: { i } })));
  await new Promise((r) => setTimeout(r, 300)); // a later tick, so that its budget has room
  await sys.publish("gap-stored", { last: true }, { priority: 2 });
  await until(() => log.filter((x) => x.seq).length === 11, "11 messages", 10_000).catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify(log)}`);
  });
  assert.deepEqual(log.map((x) => x.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  const replayed = log.filter((x) => x.replayed).map((x) => x.seq);
  assert.ok(replayed.length >= 8, `most came from history: ${replayed}`);
  assert.ok(!log.some((x) => x.lost || x.reload));
});

test("messages dropped and not stored are reported lost, between the messages around them", async () => {
  const room = c.room("gap-chat");
  const log = watch(room);
  await joinLeveled(room);
  await sys.publishMany(Array.from({ length: 6 }, (_, i) => ({ room: "gap-chat", priority: 3, kind: "chat", data: { i } })));
  await sys.publish("gap-chat", { after: true }, { priority: 2 });
  await until(() => log.some((x) => x.seq === 7), "the last message", 10_000);
  const seqs = log.filter((x) => x.seq).map((x) => x.seq);
  const lost = log.filter((x) => x.lost).flatMap((x) => Array.from({ length: x.lost[1] - x.lost[0] + 1 }, (_, i) => x.lost[0] + i));
  assert.deepEqual([...seqs, ...lost].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7], `delivered ${seqs}, lost ${lost}`);
  assert.ok(lost.length >= 4, `the budget dropped chat lines: lost ${lost}`);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1]);
  const lastLost = log.findIndex((x) => x.lost && x.lost[1] === 6);
  const seven = log.findIndex((x) => x.seq === 7);
  assert.ok(lastLost >= 0 && lastLost < seven, "the loss is reported before the message after it");
});
