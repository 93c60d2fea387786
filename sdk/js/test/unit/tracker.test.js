import { test } from "node:test";
import assert from "node:assert/strict";
import { SeqTracker } from "../../dist/index.js";

const m = (seq) => ({ seq, p: 3, kind: "chat", data: seq });
const seqs = (out) => out.deliver.map((d) => d.msg.seq);
const lost = (out) => out.lost.map((l) => [l.from, l.to]);

function joined(lastSeq = 0, epoch = "E1") {
  const t = new SeqTracker();
  t.begin();
  t.subscribed({ epoch, last_seq: lastSeq }, false);
  return t;
}

test("fresh join: messages before the reply up to last_seq are delivered, then the stream goes on from it", () => {
  const t = new SeqTracker();
  t.begin();
  assert.deepEqual(seqs(t.ingest([m(4), m(5)])), [], "held until the reply");
  const out = t.subscribed({ epoch: "E1", last_seq: 6 }, false);
  assert.deepEqual(seqs(out), [4, 5]);
  assert.deepEqual(t.position(), { epoch: "E1", seq: 6 });
  assert.deepEqual(seqs(t.ingest([m(6), m(7), m(8)])), [7, 8], "6 is at the position: a duplicate");
  assert.equal(t.duplicates, 1);
});

test("duplicates by seq are dropped, in a batch and across batches", () => {
  const t = joined(10);
  assert.deepEqual(seqs(t.ingest([m(11), m(11), m(12)])), [11, 12]);
  assert.deepEqual(seqs(t.ingest([m(12), m(10), m(13)])), [13]);
  assert.equal(t.duplicates, 3);
});

test("a gap holds later messages back and names the hole", () => {
  const t = joined(10);
  assert.deepEqual(seqs(t.ingest([m(11), m(14), m(15)])), [11]);
  assert.deepEqual(t.hole(), { since: 11, upTo: 13 });
  assert.equal(t.held, 2);
  assert.deepEqual(seqs(t.ingest([m(16)])), [], "still held");
  const out = t.onHistory({ epoch: "E1", last_seq: 16, complete: true, msgs: [m(12), m(13), m(14)] }, 2 + 1);
  assert.deepEqual(seqs(out), [12, 13, 14, 15, 16]);
  assert.deepEqual(out.deliver.map((d) => d.replayed), [true, true, false, false, false], "filled ones are marked replayed, 14 came live first");
  assert.deepEqual(lost(out), []);
  assert.equal(t.hole(), undefined);
});

test("a seq the history does not hold is lost, reported where it was", () => {
  const t = joined(0);
  t.ingest([m(1), m(2), m(5), m(7)]);
  const out = t.onHistory({ epoch: "E1", last_seq: 7, complete: false, msgs: [m(4), m(5)] }, 100);
  assert.deepEqual(seqs(out), [4, 5, 7]);
  assert.deepEqual(out.lost, [{ from: 3, to: 3, at: 0 }, { from: 6, to: 6, at: 2 }]);
});

test("a full history page covers only up to its last message; the rest is asked again", () => {
  const t = joined(0);
  t.ingest([m(1), m(10)]);
  assert.deepEqual(t.hole(), { since: 1, upTo: 9 });
  const out = t.onHistory({ epoch: "E1", last_seq: 10, complete: true, msgs: [m(2), m(4), m(5)] }, 3);
  assert.deepEqual(seqs(out), [2, 4, 5]);
  assert.deepEqual(lost(out), [[3, 3]]);
  assert.deepEqual(t.hole(), { since: 5, upTo: 9 }, "6..9 not covered yet");
  const out2 = t.onHistory({ epoch: "E1", last_seq: 10, complete: true, msgs: [m(6), m(7), m(8), m(9), m(10)] }, 100);
  assert.deepEqual(seqs(out2), [6, 7, 8, 9, 10]);
});

test("seqs above the highest held are not declared lost (they may still come live)", () => {
  const t = joined(0);
  t.ingest([m(1), m(3)]);
  const out = t.onHistory({ epoch: "E1", last_seq: 9, complete: false, msgs: [] }, 100);
  assert.deepEqual(lost(out), [[2, 2]]);
  assert.deepEqual(seqs(out), [3]);
  assert.deepEqual(seqs(t.ingest([m(4)])), [4]);
});

test("a history page of another epoch means the stream was lost: reload", () => {
  const t = joined(0, "E1");
  t.ingest([m(1), m(5)]);
  const out = t.onHistory({ epoch: "E2", last_seq: 5, complete: false, msgs: [] }, 100);
  assert.deepEqual(out.reload, { reason: "epoch_changed", epoch: "E2", lastSeq: 5 });
  assert.deepEqual(lost(out), [[2, 4]]);
  assert.deepEqual(seqs(out), [5]);
  assert.equal(t.epoch, "E2");
});

test("resume recovered: the replay is flagged, then live messages, each once", () => {
  const t = joined(0);
  t.ingest([m(1), m(2), m(3)]);
  t.suspend();
  assert.deepEqual(t.position(), { epoch: "E1", seq: 3 });
  t.begin();
  const r = t.subscribed({ epoch: "E1", last_seq: 6, recovered: true }, true);
  assert.deepEqual(seqs(r), []);
  const out = t.ingest([m(4), m(5), m(6), m(7)]);
  assert.deepEqual(seqs(out), [4, 5, 6, 7]);
  assert.deepEqual(out.deliver.map((d) => d.replayed), [true, true, true, false]);
  assert.deepEqual(seqs(t.ingest([m(6), m(7), m(8)])), [8]);
});

test("resume not recovered: reload, subscribed from last_seq on, what was held is dropped", () => {
  const t = joined(0);
  t.ingest([m(1), m(3)]);
  t.suspend();
  t.begin();
  const out = t.subscribed({ epoch: "E9", last_seq: 40, recovered: false, reason: "epoch_changed" }, true);
  assert.deepEqual(out.reload, { reason: "epoch_changed", epoch: "E9", lastSeq: 40 });
  assert.equal(t.held, 0);
  assert.deepEqual(seqs(t.ingest([m(41), m(42)])), [41, 42]);
  assert.deepEqual(t.position(), { epoch: "E9", seq: 42 });
});

test("skipHole reports the hole lost and delivers what it held back", () => {
  const t = joined(0);
  t.ingest([m(1), m(4), m(5)]);
  const out = t.skipHole();
  assert.deepEqual(lost(out), [[2, 3]]);
  assert.deepEqual(seqs(out), [4, 5]);
});

test("a channel without a known position starts at its first message (broadcast)", () => {
  const t = new SeqTracker();
  assert.deepEqual(seqs(t.ingest([m(7), m(8)])), [7, 8]);
  assert.deepEqual(t.hole(), undefined);
  t.ingest([m(10)]);
  assert.deepEqual(t.hole(), { since: 8, upTo: 9 });
});

test("a position the app kept is resumed from", () => {
  const t = new SeqTracker();
  t.setPosition({ epoch: "E1", seq: 20 });
  t.begin();
  t.subscribed({ epoch: "E1", last_seq: 22, recovered: true }, true);
  assert.deepEqual(seqs(t.ingest([m(21), m(22)])), [21, 22]);
});

test("randomised: drops, duplicates and history fills give every stored seq exactly once, in order", () => {
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let round = 0; round < 200; round++) {
    const n = 50 + Math.floor(rnd() * 200);
    const notStored = new Set();
    const liveDropped = new Set();
    for (let s = 1; s <= n; s++) {
      if (rnd() < 0.15) liveDropped.add(s);
      if (liveDropped.has(s) && rnd() < 0.3) notStored.add(s);
    }
    liveDropped.add(n - 1); // the end of the stream can be missing too
    liveDropped.delete(n);
    notStored.delete(n);
    const t = joined(0);
    const delivered = [];
    const lostSeqs = [];
    const take = (out) => {
      delivered.push(...seqs(out));
      for (const l of out.lost) for (let s = l.from; s <= l.to; s++) lostSeqs.push(s);
    };
    let s = 1;
    while (s <= n) {
      const batch = [];
      const k = 1 + Math.floor(rnd() * 5);
      for (let i = 0; i < k && s <= n; i++, s++) {
        if (!liveDropped.has(s)) batch.push(m(s));
        if (rnd() < 0.1) batch.push(m(Math.max(1, s - Math.floor(rnd() * 4)))); // a duplicate
      }
      take(t.ingest(batch.filter((x) => !liveDropped.has(x.seq))));
      for (let h = t.hole(); h; h = t.hole()) {
        const limit = 1 + Math.floor(rnd() * 4);
        const stored = [];
        for (let x = h.since + 1; x < s && stored.length < limit; x++) if (!notStored.has(x)) stored.push(m(x));
        take(t.onHistory({ epoch: "E1", last_seq: s - 1, complete: true, msgs: stored }, limit));
      }
    }
    for (let i = 1; i < delivered.length; i++) assert.ok(delivered[i] > delivered[i - 1], `round ${round}: order`);
    const expect = [];
    for (let x = 1; x <= n; x++) if (!notStored.has(x)) expect.push(x);
    assert.deepEqual(delivered, expect, `round ${round}: exactly the stored seqs`);
    assert.deepEqual(lostSeqs, [...notStored].sort((a, b) => a - b), `round ${round}: exactly the unstored ones lost`);
  }
});
