import { MAX_SEQ, RECOVERY_REASONS } from "../protocol.js";
import { ProtocolError } from "./json.js";
const enc = /* @__PURE__ */ new TextEncoder();
const dec = /* @__PURE__ */ new TextDecoder("utf-8", { fatal: true });
export const OP = {
    auth: 0x01,
    join: 0x02,
    leave: 0x03,
    ping: 0x04,
    history: 0x05,
    send: 0x06,
    ack: 0x07,
    reply: 0x81,
    batch: 0x82,
    close: 0x83,
    room: 0x84,
};
/** Bits of a message's priority byte. */
export const FLAG = { merged: 0x80, final: 0x40, from: 0x20, ack: 0x10 };
/** Bits of a successful reply's flags byte. */
export const REPLY_FLAG = { position: 0x01, recovered: 0x02, history: 0x04, msgSeq: 0x08, notBroadcast: 0x10 };
/** Bits of an error reply's flags byte. */
export const ERROR_FLAG = { retryAfter: 0x01, platformCode: 0x02 };
class Writer {
    constructor() {
        this.buf = new Uint8Array(64);
        this.view = new DataView(this.buf.buffer);
        this.len = 0;
    }
    room(n) {
        if (this.len + n <= this.buf.length)
            return;
        let size = this.buf.length * 2;
        while (size < this.len + n)
            size *= 2;
        const next = new Uint8Array(size);
        next.set(this.buf.subarray(0, this.len));
        this.buf = next;
        this.view = new DataView(next.buffer);
    }
    u8(v) {
        this.room(1);
        this.view.setUint8(this.len, v);
        this.len += 1;
        return this;
    }
    u16(v) {
        this.room(2);
        this.view.setUint16(this.len, v);
        this.len += 2;
        return this;
    }
    u32(v) {
        this.room(4);
        this.view.setUint32(this.len, v);
        this.len += 4;
        return this;
    }
    u64(v) {
        if (!Number.isSafeInteger(v) || v < 0)
            throw new RangeError(`not a u64 this client can encode: ${v}`);
        this.room(8);
        this.view.setBigUint64(this.len, BigInt(v));
        this.len += 8;
        return this;
    }
    raw(b) {
        this.room(b.length);
        this.buf.set(b, this.len);
        this.len += b.length;
        return this;
    }
    str8(s, field) {
        const b = enc.encode(s);
        if (b.length > 0xff)
            throw new RangeError(`${field} is over 255 bytes`);
        return this.u8(b.length).raw(b);
    }
    str16(s, field) {
        const b = enc.encode(s);
        if (b.length > 0xffff)
            throw new RangeError(`${field} is over 65535 bytes`);
        return this.u16(b.length).raw(b);
    }
    bytes32(b) {
        return this.u32(b.length).raw(b);
    }
    done() {
        return this.buf.slice(0, this.len);
    }
}
class Reader {
    constructor(buf) {
        this.buf = buf;
        this.pos = 0;
        this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    }
    get remaining() {
        return this.buf.length - this.pos;
    }
    need(n, what) {
        if (this.remaining < n)
            throw new ProtocolError(`truncated frame: ${what}`);
    }
    u8(what = "u8") {
        this.need(1, what);
        return this.view.getUint8(this.pos++);
    }
    u16(what = "u16") {
        this.need(2, what);
        const v = this.view.getUint16(this.pos);
        this.pos += 2;
        return v;
    }
    u32(what = "u32") {
        this.need(4, what);
        const v = this.view.getUint32(this.pos);
        this.pos += 4;
        return v;
    }
    u64(what = "u64") {
        this.need(8, what);
        const v = this.view.getBigUint64(this.pos);
        this.pos += 8;
        if (v > BigInt(MAX_SEQ))
            throw new ProtocolError(`${what} ${v} is beyond 2^53`);
        return Number(v);
    }
    bytes(n, what) {
        this.need(n, what);
        const b = this.buf.subarray(this.pos, this.pos + n);
        this.pos += n;
        return b;
    }
    str8(what) {
        return text(this.bytes(this.u8(what), what), what);
    }
    str16(what) {
        return text(this.bytes(this.u16(what), what), what);
    }
    bytes32(what) {
        return this.bytes(this.u32(what), what);
    }
    end(what) {
        if (this.remaining !== 0)
            throw new ProtocolError(`${this.remaining} trailing bytes after ${what}`);
    }
}
function text(b, what) {
    try {
        return dec.decode(b);
    }
    catch {
        throw new ProtocolError(`${what} is not UTF-8`);
    }
}
function parseData(b) {
    const t = text(b, "data");
    try {
        return JSON.parse(t);
    }
    catch {
        throw new ProtocolError("data is not JSON");
    }
}
function toBytes(frame) {
    if (typeof frame === "string")
        throw new ProtocolError("a text frame is not binary");
    if (frame instanceof Uint8Array)
        return frame;
    if (ArrayBuffer.isView(frame))
        return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
    return new Uint8Array(frame);
}
// ---- client side ----------------------------------------------------------------------------
/** Encodes a client op in the binary encoding. */
export function encodeBinary(op) {
    const w = new Writer();
    switch (op.op) {
        case "auth":
            w.u8(OP.auth).u64(op.seq).str16(op.token, "token");
            if (op.since)
                w.str8(op.since.epoch, "since.epoch").u64(op.since.seq);
            break;
        case "join":
            w.u8(OP.join).u64(op.seq).str8(op.room, "room");
            if (op.since)
                w.str8(op.since.epoch, "since.epoch").u64(op.since.seq);
            break;
        case "leave":
            w.u8(OP.leave).u64(op.seq).str8(op.room, "room");
            break;
        case "ping":
            w.u8(OP.ping).u64(op.seq);
            break;
        case "history":
            w.u8(OP.history).u64(op.seq).str8(op.room, "room").u64(op.since).u16(op.limit ?? 100);
            break;
        case "send": {
            const json = JSON.stringify(op.data);
            if (json === undefined)
                throw new TypeError("send: data is not JSON-serialisable");
            w.u8(OP.send).u64(op.seq).str8(op.room, "room").str8(op.kind, "kind").bytes32(enc.encode(json));
            break;
        }
        case "ack":
            w.u8(OP.ack).u64(op.seq).str8(op.user ?? "", "user").u64(op.msg_seq);
            break;
        default:
            throw new TypeError(`unknown op ${op.op}`);
    }
    return w.done();
}
function readMessage(r) {
    const seq = r.u64("msg seq");
    const pb = r.u8("msg p");
    const m = { seq, p: pb & 0x03, kind: "", data: null };
    if (pb & FLAG.merged)
        m.merged = r.u32("merged");
    if (pb & FLAG.final)
        m.final = true;
    if (pb & FLAG.from)
        m.from = r.str8("from");
    if (pb & FLAG.ack)
        m.ack = true;
    m.kind = r.str8("kind");
    m.data = parseData(r.bytes32("data"));
    return m;
}
/** Decodes a server frame in the binary encoding. Throws ProtocolError on a malformed one. */
export function decodeBinary(frame) {
    const r = new Reader(toBytes(frame));
    const op = r.u8("op");
    switch (op) {
        case OP.reply: {
            const seq = r.u64("seq");
            const ok = r.u8("ok") === 1;
            const reply = { op: "reply", seq, ok };
            if (!ok) {
                reply.error = { code: r.str8("code"), message: r.str16("message") };
                if (r.remaining > 0) {
                    const flags = r.u8("flags");
                    if (flags & ERROR_FLAG.retryAfter)
                        reply.error.retry_after_ms = r.u32("retry_after_ms");
                    if (flags & ERROR_FLAG.platformCode)
                        reply.error.platform_code = r.str8("platform_code");
                }
            }
            else if (r.remaining > 0) {
                const flags = r.u8("flags");
                if (flags & REPLY_FLAG.position) {
                    reply.epoch = r.str8("epoch");
                    reply.last_seq = r.u64("last_seq");
                }
                if (flags & REPLY_FLAG.recovered) {
                    const result = r.u8("recovered");
                    reply.recovered = result === 0;
                    if (result !== 0)
                        reply.reason = RECOVERY_REASONS[result - 1] ?? `reason_${result}`;
                }
                if (flags & REPLY_FLAG.history) {
                    reply.complete = r.u8("complete") === 1;
                    const n = r.u16("count");
                    reply.msgs = [];
                    for (let i = 0; i < n; i++)
                        reply.msgs.push(readMessage(r));
                }
                if (flags & REPLY_FLAG.msgSeq)
                    reply.msg_seq = r.u64("msg_seq");
                if (flags & REPLY_FLAG.notBroadcast)
                    reply.broadcast = false;
            }
            r.end("reply");
            return reply;
        }
        case OP.batch: {
            const target = r.u8("target");
            const id = r.str8("id");
            const n = r.u16("count");
            const msgs = [];
            for (let i = 0; i < n; i++)
                msgs.push(readMessage(r));
            r.end("batch");
            const b = { op: "batch", msgs };
            if (target === 0)
                b.room = id;
            else if (target === 1)
                b.user = id;
            else if (target === 2)
                b.broadcast = true;
            else
                throw new ProtocolError(`batch target ${target}`);
            return b;
        }
        case OP.close: {
            const code = r.u16("code");
            const reason = r.str8("reason");
            r.end("close");
            return { op: "close", code, reason };
        }
        case OP.room: {
            const room = r.str8("room");
            const online = r.u32("online");
            const users = r.u32("users");
            r.end("room");
            const push = { op: "room", room, online, users };
            return push;
        }
        default:
            return undefined; // a newer server's message: ignored
    }
}
export const binaryCodec = {
    name: "binary",
    encode: encodeBinary,
    decode: decodeBinary,
};
// ---- server side (fake servers, tests) -------------------------------------------------------
function writeMessage(w, m) {
    let p = m.p & 0x03;
    if (m.merged !== undefined)
        p |= FLAG.merged;
    if (m.final)
        p |= FLAG.final;
    if (m.from !== undefined)
        p |= FLAG.from;
    if (m.ack)
        p |= FLAG.ack;
    w.u64(m.seq).u8(p);
    if (m.merged !== undefined)
        w.u32(m.merged);
    if (m.from !== undefined)
        w.str8(m.from, "from");
    w.str8(m.kind, "kind").bytes32(enc.encode(JSON.stringify(m.data)));
}
/** Encodes a server message in the binary encoding (what an edge sends). */
export function encodeServerBinary(msg) {
    const w = new Writer();
    switch (msg.op) {
        case "reply": {
            w.u8(OP.reply).u64(msg.seq).u8(msg.ok ? 1 : 0);
            if (!msg.ok) {
                const e = msg.error ?? { code: "unknown", message: "" };
                w.str8(e.code, "code").str16(e.message, "message");
                let flags = 0;
                if (e.retry_after_ms !== undefined)
                    flags |= ERROR_FLAG.retryAfter;
                if (e.platform_code !== undefined)
                    flags |= ERROR_FLAG.platformCode;
                if (flags) {
                    w.u8(flags);
                    if (e.retry_after_ms !== undefined)
                        w.u32(e.retry_after_ms);
                    if (e.platform_code !== undefined)
                        w.str8(e.platform_code, "platform_code");
                }
                break;
            }
            let flags = 0;
            if (msg.epoch !== undefined)
                flags |= REPLY_FLAG.position;
            if (msg.recovered !== undefined)
                flags |= REPLY_FLAG.recovered;
            if (msg.msgs !== undefined)
                flags |= REPLY_FLAG.history;
            if (msg.msg_seq !== undefined)
                flags |= REPLY_FLAG.msgSeq;
            if (msg.broadcast === false)
                flags |= REPLY_FLAG.notBroadcast;
            if (!flags)
                break;
            w.u8(flags);
            if (msg.epoch !== undefined)
                w.str8(msg.epoch, "epoch").u64(msg.last_seq ?? 0);
            if (msg.recovered !== undefined) {
                const i = RECOVERY_REASONS.indexOf(msg.reason);
                w.u8(msg.recovered ? 0 : i + 1 || 1);
            }
            if (msg.msgs !== undefined) {
                w.u8(msg.complete ? 1 : 0).u16(msg.msgs.length);
                for (const m of msg.msgs)
                    writeMessage(w, m);
            }
            if (msg.msg_seq !== undefined)
                w.u64(msg.msg_seq);
            break;
        }
        case "batch":
            w.u8(OP.batch);
            if (msg.room !== undefined)
                w.u8(0).str8(msg.room, "room");
            else if (msg.user !== undefined)
                w.u8(1).str8(msg.user, "user");
            else
                w.u8(2).str8("", "id");
            w.u16(msg.msgs.length);
            for (const m of msg.msgs)
                writeMessage(w, m);
            break;
        case "room":
            w.u8(OP.room).str8(msg.room, "room").u32(msg.online).u32(msg.users);
            break;
        case "close":
            w.u8(OP.close).u16(msg.code).str8(msg.reason, "reason");
            break;
    }
    return w.done();
}
/** Decodes a client op in the binary encoding (what an edge reads). */
export function decodeClientBinary(frame) {
    const r = new Reader(toBytes(frame));
    const op = r.u8("op");
    const seq = r.u64("seq");
    let out;
    const since = () => (r.remaining > 0 ? { epoch: r.str8("epoch"), seq: r.u64("since") } : undefined);
    switch (op) {
        case OP.auth: {
            const token = r.str16("token");
            const s = since();
            out = s ? { op: "auth", seq, token, since: s } : { op: "auth", seq, token };
            break;
        }
        case OP.join: {
            const room = r.str8("room");
            const s = since();
            out = s ? { op: "join", seq, room, since: s } : { op: "join", seq, room };
            break;
        }
        case OP.leave:
            out = { op: "leave", seq, room: r.str8("room") };
            break;
        case OP.ping:
            out = { op: "ping", seq };
            break;
        case OP.history:
            out = { op: "history", seq, room: r.str8("room"), since: r.u64("since"), limit: r.u16("limit") };
            break;
        case OP.send:
            out = { op: "send", seq, room: r.str8("room"), kind: r.str8("kind"), data: parseData(r.bytes32("data")) };
            break;
        case OP.ack: {
            const user = r.str8("user");
            const msg_seq = r.u64("msg_seq");
            out = user ? { op: "ack", seq, user, msg_seq } : { op: "ack", seq, msg_seq };
            break;
        }
        default:
            throw new ProtocolError(`unknown op 0x${op.toString(16)}`);
    }
    r.end(out.op);
    return out;
}
//# sourceMappingURL=binary.js.map