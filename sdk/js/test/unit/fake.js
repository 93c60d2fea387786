// Test doubles: a clock driven explicitly and a scripted fake server behind a WebSocket-like class.
import { decodeClientBinary, encodeServerBinary } from "../../dist/index.js";

/** Lets pending promise callbacks and microtasks run. */
export async function flush() {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

export class FakeClock {
  constructor(start = 1_800_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Runs every timer due within `ms`, in time order, letting promises settle between them. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let next;
      for (const t of this.timers.values()) if (t.at <= end && (!next || t.at < next.at)) next = t;
      if (!next) break;
      this.t = next.at;
      this.timers.delete(next.id);
      next.fn();
    }
    this.t = end;
    await flush();
  }
  /** Delays of the timers now pending, from now. */
  pendingDelays() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

/** A fake JWT (unsigned: the client only reads `sub` and `exp`). */
export function fakeToken(sub, expMs) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(expMs / 1000) })}.sig`;
}

/**
 * A scripted server. Every socket the client opens is a FakeSocket; `handler(sock, op)` answers
 * ops (the default answers auth, join, ping, ack, leave with ok and the positions in `positions`).
 */
export class FakeServer {
  constructor() {
    this.sockets = [];
    this.urls = [];
    this.positions = new Map(); // channel key ("user", "room:r1") → {epoch, last_seq}
    this.autoOpen = true;
    this.handler = (sock, op) => this.defaultHandler(sock, op);
    const server = this;
    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.binaryType = "blob";
        this.sent = [];
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        server.sockets.push(this);
        server.urls.push(url);
        this.server = server;
        if (server.autoOpen) queueMicrotask(() => this.open());
      }
      open() {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        this.onopen?.({});
      }
      /** The handshake fails (refused, HTTP 503): error then close 1006, never open. */
      fail() {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
      }
      send(data) {
        if (this.readyState !== 1) throw new Error("not open");
        this.sent.push(data);
        const op = typeof data === "string" ? JSON.parse(data) : decodeClientBinary(data);
        this.binary = typeof data !== "string" && this.sent.length === 1 ? true : this.binary ?? false;
        server.handler(this, op);
      }
      close(code, reason) {
        this.closedByClient = { code, reason };
        this.readyState = 3;
      }
      /** Decoded ops the client sent. */
      ops(name) {
        const all = this.sent.map((d) => (typeof d === "string" ? JSON.parse(d) : decodeClientBinary(d)));
        return name ? all.filter((o) => o.op === name) : all;
      }
      push(msg) {
        if (this.readyState !== 1) return;
        this.onmessage?.({ data: this.binary ? encodeServerBinary(msg).buffer : JSON.stringify(msg) });
      }
      reply(seq, extra = {}) {
        this.push({ op: "reply", seq, ok: true, ...extra });
      }
      error(seq, code, message = code, extra = {}) {
        this.push({ op: "reply", seq, ok: false, error: { code, message, ...extra } });
      }
      serverClose(code, reason = "") {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
    };
  }
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
  position(key) {
    return this.positions.get(key) ?? { epoch: "E1", last_seq: 0 };
  }
  defaultHandler(sock, op) {
    switch (op.op) {
      case "auth": {
        const p = this.position("user");
        const extra = { epoch: p.epoch, last_seq: p.last_seq };
        if (op.since) Object.assign(extra, op.since.epoch === p.epoch ? { recovered: true } : { recovered: false, reason: "epoch_changed" });
        return sock.reply(op.seq, extra);
      }
      case "join": {
        const p = this.position(`room:${op.room}`);
        const extra = { epoch: p.epoch, last_seq: p.last_seq };
        if (op.since) Object.assign(extra, op.since.epoch === p.epoch ? { recovered: true } : { recovered: false, reason: "epoch_changed" });
        return sock.reply(op.seq, extra);
      }
      case "ping":
      case "ack":
      case "leave":
        return sock.reply(op.seq);
      default:
        return undefined; // history and send: the test answers
    }
  }
}

/** A batch message. */
export function msg(seq, extra = {}) {
  return { seq, p: 2, kind: "chat", data: { n: seq }, ...extra };
}

/** Records every event of an emitter into one list. */
export function record(emitter, events) {
  const log = [];
  for (const e of events) emitter.on(e, (x) => log.push([e, x]));
  return log;
}
