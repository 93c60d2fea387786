import { test } from "node:test";
import assert from "node:assert/strict";
import { StateMachine, CONNECTION_TRANSITIONS, ROOM_TRANSITIONS, IllegalTransition } from "../../dist/index.js";

test("connection: disconnected → connecting → connected → connecting → disconnected", () => {
  const sm = new StateMachine("disconnected", CONNECTION_TRANSITIONS);
  assert.deepEqual(sm.to("connecting", undefined, "connect"), { state: "connecting", prev: "disconnected", reason: "connect" });
  assert.deepEqual(sm.to("connected"), { state: "connected", prev: "connecting" });
  assert.deepEqual(sm.to("connecting", 4008, "slow"), { state: "connecting", prev: "connected", code: 4008, reason: "slow" });
  assert.deepEqual(sm.to("disconnected", 4403, "banned"), { state: "disconnected", prev: "connecting", code: 4403, reason: "banned" });
});

test("connection: illegal transitions throw", () => {
  const sm = new StateMachine("disconnected", CONNECTION_TRANSITIONS);
  assert.throws(() => sm.to("connected"), IllegalTransition);
  assert.equal(sm.state, "disconnected");
  assert.equal(sm.can("connecting"), true);
});

test("room: unsubscribed → subscribing → subscribed, and back", () => {
  const sm = new StateMachine("unsubscribed", ROOM_TRANSITIONS);
  assert.throws(() => sm.to("subscribed"), IllegalTransition);
  sm.to("subscribing");
  assert.deepEqual(sm.to("unsubscribed", "room_forbidden", "no"), { state: "unsubscribed", prev: "subscribing", code: "room_forbidden", reason: "no" });
  sm.to("subscribing");
  sm.to("subscribed");
  assert.deepEqual(sm.to("subscribing", 1006, ""), { state: "subscribing", prev: "subscribed", code: 1006, reason: "" });
  sm.to("subscribed");
  sm.to("unsubscribed");
});
