import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, backoffDelay, backoffCeiling, backoffSettings } from "../../dist/index.js";

test("the ceiling doubles from base and stops at cap", () => {
  const s = backoffSettings({ baseMs: 1000, capMs: 30000 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 50, 2000].map((n) => backoffCeiling(n, s)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test("full jitter: every delay is within [min, ceiling], both ends reachable", () => {
  const s = backoffSettings({ baseMs: 500, capMs: 8000, minMs: 50 });
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = backoffCeiling(attempt, s);
    assert.equal(backoffDelay(attempt, s, () => 0), 50, "random 0 gives the floor, never 0");
    assert.equal(backoffDelay(attempt, s, () => 0.9999999999), ceiling);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, s, Math.random);
      assert.ok(d >= 50 && d <= ceiling, `attempt ${attempt}: ${d} outside [50, ${ceiling}]`);
    }
  }
});

test("the jitter is spread over the whole range (not clustered at the ceiling)", () => {
  const s = backoffSettings({ baseMs: 1000, capMs: 1000, minMs: 1 });
  const ds = Array.from({ length: 2000 }, () => backoffDelay(0, s, Math.random));
  const low = ds.filter((d) => d < 250).length;
  const high = ds.filter((d) => d > 750).length;
  assert.ok(low > 350 && high > 350, `low ${low} high ${high}`);
});

test("a random source outside [0,1) cannot push a delay outside the bounds", () => {
  const s = backoffSettings({ baseMs: 100, capMs: 1000 });
  assert.equal(backoffDelay(3, s, () => -5), 100);
  assert.equal(backoffDelay(3, s, () => 7), 800);
  assert.equal(backoffDelay(3, s, () => NaN) >= 100, true);
});

test("Backoff counts attempts and resets", () => {
  const b = new Backoff({ baseMs: 100, capMs: 1000, minMs: 10 }, () => 1);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 1000, 1000]);
  assert.equal(b.attempt, 6);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 100);
});

test("the floor defaults to 100 ms and never exceeds base; bad settings are refused", () => {
  assert.equal(backoffSettings({}).minMs, 100);
  assert.equal(backoffSettings({ baseMs: 40 }).minMs, 40);
  assert.throws(() => backoffSettings({ baseMs: 0 }), RangeError);
  assert.throws(() => backoffSettings({ baseMs: 1000, capMs: 10 }), RangeError);
  assert.throws(() => backoffSettings({ minMs: 0 }), RangeError);
});
