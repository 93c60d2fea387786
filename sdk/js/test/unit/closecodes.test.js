import { test } from "node:test";
import assert from "node:assert/strict";
import { closeAction, DEFAULT_CLOSE_ACTIONS } from "../../dist/index.js";

test("the default table of PROTOCOL.md's close codes", () => {
  const expect = {
    1000: "reconnect", 1001: "reconnect", 1006: "reconnect", 1009: "reconnect", 1013: "reconnect",
    4000: "reconnect", 4001: "refresh", 4008: "reconnect", 4029: "reconnect", 4030: "reconnect",
  };
  for (const [code, action] of Object.entries(expect)) assert.equal(closeAction(Number(code)), action, `code ${code}`);
});

test("the platform's own 4000-4999 codes stop by default, others reconnect", () => {
  assert.equal(closeAction(4403), "stop");
  assert.equal(closeAction(4999), "stop");
  assert.equal(closeAction(4403, {}, "reconnect"), "reconnect");
  assert.equal(closeAction(1011), "reconnect");
  assert.equal(closeAction(3000), "reconnect");
});

test("overrides win over the table", () => {
  assert.equal(closeAction(4403, { 4403: "reconnect" }), "reconnect");
  assert.equal(closeAction(4008, { 4008: "stop" }), "stop");
  assert.equal(closeAction(4001, { 4001: "stop" }), "stop");
  assert.ok(Object.isFrozen(DEFAULT_CLOSE_ACTIONS));
});
