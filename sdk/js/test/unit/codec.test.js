import { test } from "node:test";
import assert from "node:assert/strict";
import {
  encodeJson, decodeJson, encodeBinary, decodeBinary, encodeServerBinary, decodeClientBinary, ProtocolError,
} from "../../dist/index.js";

const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));

test("JSON ops are the documented objects, optional fields left out", () => {
  assert.equal(encodeJson({ op: "join", seq: 2, room: "r1" }), '{"op":"join","seq":2,"room":"r1"}');
  assert.equal(encodeJson({ op: "join", seq: 5, room: "r1", since: { epoch: "k3x9", seq: 41 } }), '{"op":"join","seq":5,"room":"r1","since":{"epoch":"k3x9","seq":41}}');
  assert.equal(encodeJson({ op: "ack", seq: 12, msg_seq: 88 }), '{"op":"ack","seq":12,"msg_seq":88}');
});

test("JSON server messages from PROTOCOL.md §2 decode", () => {
  const examples = [
    '{"op":"reply","seq":5,"ok":true,"epoch":"k3x9","last_seq":57,"recovered":false,"reason":"too_old"}',
    '{"op":"reply","seq":9,"ok":false,"error":{"code":"rate_limited","message":"over this connection\'s send rate","retry_after_ms":400}}',
    '{"op":"batch","room":"r1","msgs":[{"seq":58,"p":2,"kind":"combo","merged":7,"data":{"user":"u42","gift":"rocket","count":7}},{"seq":59,"p":1,"kind":"pk","merged":1,"final":true,"data":{"left":5100}}]}',
    '{"op":"batch","user":"u42","msgs":[{"seq":88,"p":1,"kind":"reward","ack":true,"data":{"coins":100}}]}',
    '{"op":"room","room":"r1","online":104532,"users":98000}',
  ];
  for (const e of examples) assert.deepEqual(decodeJson(e), JSON.parse(e));
  assert.equal(decodeJson('{"op":"something_new","x":1}'), undefined, "unknown ops are ignored");
  assert.throws(() => decodeJson("{nope"), ProtocolError);
  assert.throws(() => decodeJson('{"op":"batch","msgs":[{"seq":1}]}'), ProtocolError);
});

test("binary join matches PROTOCOL.md §3's examples byte for byte", () => {
  assert.equal(hex(encodeBinary({ op: "join", seq: 2, room: "r1" })), "02" + "0000000000000002" + "027231");
  assert.equal(
    hex(encodeBinary({ op: "join", seq: 5, room: "r1", since: { epoch: "k3x9", seq: 41 } })),
    "02" + "0000000000000005" + "027231" + "046b337839" + "0000000000000029",
  );
});

test("binary recovered join reply from PROTOCOL.md §3 decodes", () => {
  const frame = unhex("81 0000000000000005 01 03 046b337839 0000000000000039 00");
  assert.deepEqual(decodeBinary(frame), { op: "reply", seq: 5, ok: true, epoch: "k3x9", last_seq: 57, recovered: true });
  const notRecovered = unhex("81 0000000000000005 01 03 046b337839 0000000000000039 02");
  assert.equal(decodeBinary(notRecovered).reason, "too_old");
});

test("binary message flags: merged, final, from, ack", () => {
  const batch = {
    op: "batch", room: "r1",
    msgs: [
      { seq: 58, p: 2, kind: "combo", merged: 7, data: { count: 7 } },
      { seq: 59, p: 1, kind: "pk", merged: 1, final: true, data: { w: "left" } },
      { seq: 1043, p: 3, kind: "chat", from: "u1", data: { text: "666" } },
    ],
  };
  const b = encodeServerBinary(batch);
  // first message: seq 58, p 0x82, merged u32 7
  assert.equal(hex(b.subarray(0, 1 + 1 + 3 + 2 + 8 + 1 + 4)), "82" + "00" + "027231" + "0003" + "000000000000003a" + "82" + "00000007");
  assert.deepEqual(decodeBinary(b), batch);
  const user = { op: "batch", user: "u42", msgs: [{ seq: 88, p: 1, kind: "reward", ack: true, data: { coins: 100 } }] };
  const ub = encodeServerBinary(user);
  assert.equal(ub[1 + 1 + 4 + 2 + 8], 0x11, "ack flag 0x10 | priority 1");
  assert.deepEqual(decodeBinary(ub), user);
  const bc = { op: "batch", broadcast: true, msgs: [{ seq: 3, p: 0, kind: "system", data: "x" }] };
  assert.deepEqual(decodeBinary(encodeServerBinary(bc)), bc);
});

test("binary replies: extras and error details round-trip", () => {
  const cases = [
    { op: "reply", seq: 1, ok: true },
    { op: "reply", seq: 7, ok: true, msg_seq: 1043 },
    { op: "reply", seq: 8, ok: true, broadcast: false },
    { op: "reply", seq: 9, ok: true, epoch: "k3x9", last_seq: 57, complete: false, msgs: [{ seq: 42, p: 2, kind: "gift", data: { n: 3 } }] },
    { op: "reply", seq: 9, ok: false, error: { code: "rate_limited", message: "slow down", retry_after_ms: 400 } },
    { op: "reply", seq: 10, ok: false, error: { code: "rejected", message: "muted", platform_code: "muted" } },
    { op: "reply", seq: 11, ok: false, error: { code: "not_joined", message: "join first" } },
    { op: "room", room: "r1", online: 104532, users: 98000 },
    { op: "close", code: 4008, reason: "slow" },
  ];
  for (const c of cases) assert.deepEqual(decodeBinary(encodeServerBinary(c)), c);
  // rate_limited with retry_after_ms: flags byte 0x01 then u32
  const e = encodeServerBinary(cases[4]);
  assert.equal(hex(e.subarray(e.length - 5)), "01" + "00000190");
});

test("binary client ops round-trip, including send data as JSON text", () => {
  const ops = [
    { op: "auth", seq: 1, token: "a.b.c" },
    { op: "auth", seq: 1, token: "a.b.c", since: { epoch: "u7Qe", seq: 7 } },
    { op: "leave", seq: 3, room: "r1" },
    { op: "ping", seq: 4 },
    { op: "history", seq: 9, room: "r1", since: 41, limit: 100 },
    { op: "send", seq: 7, room: "r1", kind: "chat", data: { text: "666", emoji: "🎉" } },
    { op: "ack", seq: 12, msg_seq: 88 },
    { op: "ack", seq: 12, user: "u42", msg_seq: 88 },
  ];
  for (const o of ops) assert.deepEqual(decodeClientBinary(encodeBinary(o)), o);
  const send = encodeBinary(ops[5]);
  const json = JSON.stringify(ops[5].data);
  assert.equal(Buffer.from(send.subarray(send.length - Buffer.byteLength(json))).toString(), json);
});

test("malformed binary frames are refused, not misread", () => {
  assert.throws(() => decodeBinary(unhex("81 00000000")), ProtocolError); // truncated seq
  assert.throws(() => decodeBinary(unhex("84 027231 00000001 00000001 ff")), ProtocolError); // trailing byte
  assert.throws(() => decodeBinary(unhex("82 00 027231 0001 0000000000000001 02 04 63686174 00000003 7b7d")), ProtocolError); // data overruns
  assert.throws(() => decodeBinary(unhex("81 ffffffffffffffff 01")), ProtocolError); // beyond 2^53
  assert.equal(decodeBinary(unhex("99 00")), undefined, "an unknown server op is ignored");
  assert.throws(() => encodeBinary({ op: "join", seq: 1, room: "x".repeat(256) }), RangeError);
});
