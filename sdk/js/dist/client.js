// The client: one WebSocket at a time to an edge, found through the dispatcher or fixed URLs;
// auth, rooms (re)joined with `since`, gaps filled from history, pings and a dead-connection
// watchdog, reconnects with backoff and full jitter decided by the close-code table. The pure
// pieces it drives (backoff, state machines, SeqTracker, codecs) live in their own modules.
import { Backoff } from "./backoff.js";
import { BroadcastChannel, Room, UserChannel, makeMessage, } from "./channel.js";
import { closeAction } from "./closecodes.js";
import { systemClock } from "./clock.js";
import { decodeBinary, encodeBinary } from "./codec/binary.js";
import { decodeJson, encodeJson } from "./codec/json.js";
import { Emitter } from "./emitter.js";
import { RoomcastError } from "./errors.js";
import { CONNECTION_TRANSITIONS, StateMachine } from "./states.js";
import { tokenExpiry, tokenSubject } from "./token.js";
class Session {
    constructor(ws, address, now) {
        this.ws = ws;
        this.address = address;
        this.nextSeq = 1;
        this.pending = new Map();
        this.authed = false;
        this.timers = [];
        this.lastRx = now;
    }
}
const HISTORY_IN_FLIGHT = 4; // the edge's limit per connection (PROTOCOL.md §5)
export class RoomcastClient extends Emitter {
    constructor(options) {
        super();
        this.sm = new StateMachine("disconnected", CONNECTION_TRANSITIONS);
        this.roomsById = new Map();
        this.gen = 0;
        this.connectWaiters = [];
        this.addresses = [];
        this.addrIndex = 0;
        this.needDispatch = true;
        this.tokenStale = false;
        this.authRejections = 0;
        this.pendingAcks = [];
        this.historyInFlight = 0;
        this.historyQueue = [];
        this.roomRetry = new Map();
        this.roomBackoff = new Map();
        this.gapFillPausedUntil = new Map();
        this.rateLimitedUntil = 0;
        this.sendPausedUntil = 0;
        if (!options || typeof options.getToken !== "function")
            throw new TypeError("roomcast: getToken is required");
        if (!options.dispatchUrl && !options.url)
            throw new TypeError("roomcast: give dispatchUrl or url");
        this.opts = options;
        this.clock = options.clock ?? systemClock;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new TypeError("roomcast: no WebSocket here (Node 20): pass one, e.g. `import WebSocket from 'ws'` and `{WebSocket}`");
        }
        this.WS = WS;
        this.fetchFn = options.fetch ?? globalThis.fetch?.bind(globalThis);
        this.backoff = new Backoff(options.backoff, options.random ?? Math.random);
        this.fixedUrls = options.url === undefined ? [] : Array.isArray(options.url) ? [...options.url] : [options.url];
        this.onListenerError = (err) => this.report(err);
        // eslint-disable-next-line @typescript-eslint/no-this-alias
        const self = this;
        this.host = {
            get autoAck() {
                return self.opts.autoAck ?? true;
            },
            sendAck: (n) => this.sendAck(n),
            listenerError: (err) => this.report(err),
            roomJoin: (room) => this.roomJoin(room),
            roomLeave: (room) => this.roomLeave(room),
            roomSend: (room, kind, data) => this.roomSend(room, kind, data),
            roomHistory: (room, since, limit) => this.roomHistory(room, since, limit),
        };
        this.user = new UserChannel(this.host);
        this.broadcast = new BroadcastChannel(this.host);
    }
    /** `disconnected`, `connecting` (dialling, or waiting to retry) or `connected` (authenticated). */
    get state() {
        return this.sm.state;
    }
    /** The WebSocket URL of the current connection. */
    get address() {
        return this.session?.address;
    }
    /** The room with this id (created on first use; the same object afterwards). */
    room(id) {
        let r = this.roomsById.get(id);
        if (!r) {
            r = new Room(this.host, id);
            this.roomsById.set(id, r);
        }
        return r;
    }
    /** Every room object made so far. */
    rooms() {
        return [...this.roomsById.values()];
    }
    /**
     * Starts connecting (and keeps reconnecting). Resolves at the first successful auth; rejects when
     * the client stops (a close code whose action is `stop`, a second refused token, or `close()`).
     */
    connect() {
        if (this.sm.state === "connected")
            return Promise.resolve();
        const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
        if (this.sm.state === "disconnected") {
            this.authRejections = 0;
            this.backoff.reset();
            this.setState("connecting", undefined, "connect");
            void this.attempt();
        }
        return p;
    }
    /** Closes the connection for good (code 1000); rooms become unsubscribed but keep their position. */
    close() {
        this.stop(1000, "closed by the client", new RoomcastError("closed", "the client was closed"));
    }
    // ---- connecting -----------------------------------------------------------------------------
    setState(to, code, reason) {
        if (this.sm.state === to)
            return;
        this.emit("state", this.sm.to(to, code, reason));
    }
    /**
     * Reports a non-fatal problem on the `error` event. Without an `error` listener, a listener's
     * exception (an app bug) goes to the console; expected trouble (the server away) stays quiet —
     * the `reconnect` event says it.
     */
    report(err, quiet = false) {
        const e = err instanceof Error ? err : new Error(String(err));
        if (this.listenerCount("error") > 0)
            this.emit("error", e);
        else if (!quiet && typeof console !== "undefined")
            console.error("roomcast:", e);
    }
    async attempt() {
        const gen = ++this.gen;
        let address;
        let token;
        try {
            address = await this.pickAddress();
            if (gen !== this.gen)
                return;
        }
        catch (err) {
            if (gen !== this.gen)
                return;
            this.report(err, true);
            this.addrIndex++;
            this.scheduleRetry("dispatch_failed", err.message);
            return;
        }
        try {
            token = await this.currentToken();
            if (gen !== this.gen)
                return;
        }
        catch (err) {
            if (gen !== this.gen)
                return;
            this.report(err, true);
            this.scheduleRetry("token_failed", err.message);
            return;
        }
        this.open(address, token);
    }
    async pickAddress() {
        if (this.fixedUrls.length > 0)
            return this.fixedUrls[this.addrIndex % this.fixedUrls.length];
        if (this.needDispatch || this.addrIndex >= this.addresses.length) {
            try {
                this.addresses = await this.dispatch();
                this.addrIndex = 0;
                this.needDispatch = false;
            }
            catch (err) {
                if (this.addresses.length === 0)
                    throw err;
                this.report(err, true); // keep walking the addresses we have
                this.addrIndex %= this.addresses.length;
            }
        }
        return this.addresses[this.addrIndex];
    }
    async dispatch() {
        if (!this.fetchFn)
            throw new RoomcastError("dispatch_failed", "no fetch here: pass options.fetch or use url");
        const url = new URL(this.opts.dispatchUrl, globalThis.location?.href);
        if (!url.searchParams.has("transport"))
            url.searchParams.set("transport", "ws");
        const ctl = new AbortController();
        const t = this.clock.setTimeout(() => ctl.abort(), this.opts.connectTimeoutMs ?? 10000);
        try {
            const res = await this.fetchFn(url.toString(), { signal: ctl.signal });
            if (!res.ok)
                throw new RoomcastError("dispatch_failed", `dispatch answered HTTP ${res.status}`);
            const body = (await res.json());
            const list = Array.isArray(body.addresses) ? body.addresses.filter((a) => typeof a === "string") : [];
            if (list.length === 0)
                throw new RoomcastError("dispatch_failed", "dispatch returned no address");
            const map = this.opts.mapAddress ?? ((a) => a);
            return list.map(map);
        }
        catch (err) {
            if (err instanceof RoomcastError)
                throw err;
            throw new RoomcastError("dispatch_failed", `dispatch failed: ${err.message}`);
        }
        finally {
            this.clock.clearTimeout(t);
        }
    }
    async currentToken() {
        const margin = this.opts.tokenRefreshMarginMs ?? 5000;
        const exp = this.token === undefined ? undefined : tokenExpiry(this.token);
        if (this.token === undefined || this.tokenStale || (exp !== undefined && exp - this.clock.now() < margin)) {
            const t = await this.opts.getToken();
            if (typeof t !== "string" || t.length === 0)
                throw new RoomcastError("token_failed", "getToken returned no token");
            this.token = t;
            this.tokenStale = false;
            this.user.id = tokenSubject(t);
        }
        return this.token;
    }
    open(address, token) {
        let ws;
        try {
            ws = new this.WS(address);
        }
        catch (err) {
            this.report(err, true);
            this.addrIndex++;
            this.scheduleRetry(1006, `cannot open ${address}: ${err.message}`);
            return;
        }
        const s = new Session(ws, address, this.clock.now());
        this.session = s;
        if (this.opts.encoding === "binary")
            ws.binaryType = "arraybuffer";
        s.connectTimer = this.clock.setTimeout(() => this.drop(s, 1006, `no connection within ${this.opts.connectTimeoutMs ?? 10000} ms`), this.opts.connectTimeoutMs ?? 10000);
        ws.onopen = () => {
            if (this.session !== s)
                return;
            this.auth(s, token);
        };
        ws.onmessage = (ev) => {
            if (this.session !== s)
                return;
            this.onFrame(s, ev.data);
        };
        ws.onclose = (ev) => {
            this.drop(s, ev.code ?? 1006, ev.reason ?? "");
        };
        ws.onerror = () => {
            /* the close event follows */
        };
    }
    auth(s, token) {
        const since = this.user.tracker.position();
        this.user.tracker.begin();
        this.request(s, since ? { op: "auth", seq: 0, token, since } : { op: "auth", seq: 0, token }, (reply) => {
            if (reply.ok)
                return this.onAuthed(s, reply, since !== undefined);
            // The server closes next (4001 for a token, 1013 for unavailable): the close decides.
            const code = reply.error?.code;
            if (code === "token_expired" || code === "invalid_token")
                this.tokenStale = true;
        }, () => { });
    }
    onAuthed(s, reply, resumed) {
        if (s.connectTimer !== undefined)
            this.clock.clearTimeout(s.connectTimer);
        s.authed = true;
        this.backoff.reset();
        this.authRejections = 0;
        this.setState("connected");
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.resolve();
        if (this.session !== s)
            return; // a state listener closed the client
        this.schedulePing(s);
        this.armWatchdog(s);
        this.broadcast.tracker.reset();
        if (reply.epoch !== undefined) {
            this.user.deliver(this.user.tracker.subscribed({ epoch: reply.epoch, last_seq: reply.last_seq ?? 0, recovered: reply.recovered, reason: reply.reason }, resumed));
        }
        if (this.session !== s)
            return;
        const acks = this.pendingAcks;
        this.pendingAcks = [];
        for (const n of acks)
            this.sendAck(n);
        for (const room of this.roomsById.values()) {
            if (room.wanted && room.state === "subscribing")
                this.subscribe(s, room);
        }
    }
    schedulePing(s) {
        const every = this.opts.pingIntervalMs ?? 25000;
        s.pingTimer = this.clock.setTimeout(() => {
            if (this.session !== s)
                return;
            this.request(s, { op: "ping", seq: 0 }, () => { }, () => { });
            this.schedulePing(s);
        }, every);
    }
    armWatchdog(s) {
        const dead = this.opts.deadTimeoutMs ?? 40000;
        const due = s.lastRx + dead - this.clock.now();
        s.watchdog = this.clock.setTimeout(() => {
            if (this.session !== s)
                return;
            if (this.clock.now() - s.lastRx >= dead)
                this.drop(s, 1006, `dead connection: nothing received for ${dead} ms`);
            else
                this.armWatchdog(s);
        }, Math.max(due, 1));
    }
    /** The session ended (close event, timeout, dead connection). Decide: reconnect, refresh or stop. */
    drop(s, code, reason) {
        if (this.session !== s)
            return;
        const wasConnected = s.authed;
        // A socket still open here is one we give up on (timeouts, a dead connection): no handshake.
        this.endSession(s, new RoomcastError("connection_lost", `connection lost (${code}${reason ? " " + reason : ""})`), true);
        const gen = this.gen;
        for (const room of this.roomsById.values()) {
            if (room.wanted && room.state === "subscribed")
                room.setState("subscribing", code, reason);
        }
        if (gen !== this.gen || this.sm.state === "disconnected")
            return; // a listener closed the client
        if (code === 4030)
            this.sendPausedUntil = this.clock.now() + (this.opts.sendPauseAfterFloodMs ?? 10000);
        let action = closeAction(code, this.opts.closeActions, this.opts.platformCloseAction ?? "stop");
        if (action === "refresh") {
            this.tokenStale = true;
            this.authRejections++;
            if (this.authRejections >= 2)
                action = "stop";
        }
        if (action === "stop") {
            this.stop(code, reason, new RoomcastError(String(code), `stopped: ${code} ${reason}`));
            return;
        }
        this.addrIndex++;
        if (wasConnected)
            this.needDispatch = true;
        this.setState("connecting", code, reason);
        if (this.sm.state !== "connecting")
            return; // a state listener closed the client
        this.scheduleRetry(code, reason);
    }
    /** Detaches and closes a session, failing what waited on it. */
    endSession(s, err, abandon = false) {
        this.session = undefined;
        this.gen++;
        for (const t of [s.connectTimer, s.pingTimer, s.watchdog])
            if (t !== undefined)
                this.clock.clearTimeout(t);
        s.ws.onopen = s.ws.onmessage = s.ws.onclose = s.ws.onerror = null;
        try {
            const ws = s.ws;
            if (ws.readyState === 0 || ws.readyState === 1) {
                if (abandon && typeof ws.terminate === "function")
                    ws.terminate(); // Node's ws: no 30 s close wait
                else
                    ws.close(1000, "bye");
            }
        }
        catch {
            /* already closing */
        }
        const pending = [...s.pending.values()];
        s.pending.clear();
        for (const p of pending) {
            this.clock.clearTimeout(p.timer);
            p.onFail(err);
        }
        this.historyInFlight = 0;
        this.historyQueue = [];
        this.user.tracker.suspend();
        for (const room of this.roomsById.values()) {
            room.tracker.suspend();
            const t = this.roomRetry.get(room);
            if (t !== undefined)
                this.clock.clearTimeout(t);
            this.roomRetry.delete(room);
        }
    }
    scheduleRetry(code, reason) {
        const delayMs = this.backoff.next();
        if (this.retryTimer !== undefined)
            this.clock.clearTimeout(this.retryTimer);
        this.retryTimer = this.clock.setTimeout(() => {
            this.retryTimer = undefined;
            if (this.sm.state === "connecting")
                void this.attempt();
        }, delayMs);
        this.emit("reconnect", { attempt: this.backoff.attempt, delayMs, code, reason });
    }
    stop(code, reason, err) {
        if (this.retryTimer !== undefined)
            this.clock.clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        if (this.session)
            this.endSession(this.session, new RoomcastError("closed", err.message));
        this.gen++;
        for (const room of this.roomsById.values()) {
            if (room.state !== "unsubscribed") {
                room.wanted = false;
                room.setState("unsubscribed", code, reason);
                room.settle(new RoomcastError("closed", err.message));
            }
        }
        this.setState("disconnected", code, reason);
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.reject(err);
    }
    // ---- frames and requests ---------------------------------------------------------------------
    request(s, op, onReply, onFail) {
        if (this.session !== s) {
            onFail(new RoomcastError("connection_lost", "the connection is gone"));
            return;
        }
        const seq = s.nextSeq++;
        const full = { ...op, seq };
        let frame;
        try {
            frame = this.opts.encoding === "binary" ? encodeBinary(full) : encodeJson(full);
        }
        catch (err) {
            onFail(new RoomcastError("bad_request", err.message, { local: true }));
            return;
        }
        const timeoutMs = this.opts.requestTimeoutMs ?? 15000;
        const timer = this.clock.setTimeout(() => {
            if (!s.pending.delete(seq))
                return;
            onFail(new RoomcastError("timeout", `no reply to ${op.op} within ${timeoutMs} ms`));
            this.drop(s, 1006, `no reply to ${op.op} within ${timeoutMs} ms`);
        }, timeoutMs);
        s.pending.set(seq, { op: op.op, onReply, onFail, timer });
        try {
            s.ws.send(frame);
        }
        catch (err) {
            this.drop(s, 1006, `send failed: ${err.message}`);
        }
    }
    onFrame(s, data) {
        s.lastRx = this.clock.now();
        let msg;
        try {
            msg = typeof data === "string" ? decodeJson(data) : decodeBinary(data);
        }
        catch (err) {
            this.report(err);
            return;
        }
        if (!msg)
            return;
        switch (msg.op) {
            case "reply": {
                const p = s.pending.get(msg.seq);
                if (!p)
                    return;
                s.pending.delete(msg.seq);
                this.clock.clearTimeout(p.timer);
                p.onReply(msg);
                return;
            }
            case "batch": {
                if (msg.room !== undefined) {
                    const room = this.roomsById.get(msg.room);
                    if (!room || room.state === "unsubscribed")
                        return;
                    room.deliver(room.tracker.ingest(msg.msgs));
                    this.checkGap(room);
                }
                else if (msg.user !== undefined) {
                    this.user.deliver(this.user.tracker.ingest(msg.msgs));
                    this.skipHoles(this.user);
                }
                else if (msg.broadcast) {
                    this.broadcast.deliver(this.broadcast.tracker.ingest(msg.msgs));
                    this.skipHoles(this.broadcast);
                }
                return;
            }
            case "room": {
                const room = this.roomsById.get(msg.room);
                if (room && room.state !== "unsubscribed")
                    room.setStats({ online: msg.online, users: msg.users });
                return;
            }
            case "close":
                return; // raw TCP only; a WebSocket close frame follows
        }
    }
    // ---- rooms -----------------------------------------------------------------------------------
    roomJoin(room) {
        const s = this.session;
        if (s && s.authed)
            this.subscribe(s, room);
        // else: subscribed after the next successful auth
    }
    subscribe(s, room) {
        const since = room.tracker.position();
        room.tracker.begin();
        this.request(s, since ? { op: "join", seq: 0, room: room.id, since } : { op: "join", seq: 0, room: room.id }, (reply) => {
            if (!room.wanted || room.state !== "subscribing")
                return;
            if (reply.ok) {
                this.roomBackoff.get(room)?.reset();
                const result = {
                    epoch: reply.epoch ?? "",
                    lastSeq: reply.last_seq ?? 0,
                    ...(reply.recovered !== undefined ? { recovered: reply.recovered } : {}),
                    ...(reply.reason !== undefined ? { reason: reply.reason } : {}),
                };
                room.lastJoin = result;
                const out = room.tracker.subscribed({ epoch: result.epoch, last_seq: result.lastSeq, recovered: reply.recovered, reason: reply.reason }, since !== undefined);
                room.setState("subscribed");
                room.settle(result);
                room.deliver(out);
                this.checkGap(room);
                return;
            }
            const e = RoomcastError.fromReply(reply.error ?? { code: "unknown", message: "join refused" });
            if (e.code === "unavailable" || e.code === "rate_limited") {
                // Nothing was subscribed; the edge could not confirm in time. Try again after a while.
                room.tracker.suspend();
                let b = this.roomBackoff.get(room);
                if (!b)
                    this.roomBackoff.set(room, (b = new Backoff(this.opts.backoff, this.opts.random ?? Math.random)));
                const t = this.clock.setTimeout(() => {
                    this.roomRetry.delete(room);
                    if (this.session === s && room.wanted && room.state === "subscribing")
                        this.subscribe(s, room);
                }, b.next());
                this.roomRetry.set(room, t);
                return;
            }
            room.wanted = false;
            room.tracker.suspend();
            room.setState("unsubscribed", e.code, e.message);
            room.settle(e);
        }, () => {
            /* connection lost: the room waits in `subscribing` for the next connection */
        });
    }
    roomLeave(room) {
        const wasIn = room.state !== "unsubscribed";
        room.wanted = false;
        const t = this.roomRetry.get(room);
        if (t !== undefined)
            this.clock.clearTimeout(t);
        this.roomRetry.delete(room);
        room.tracker.reset();
        this.gapFillPausedUntil.delete(room);
        if (!wasIn)
            return Promise.resolve();
        room.setState("unsubscribed", undefined, "left");
        room.settle(new RoomcastError("left", "the room was left"));
        const s = this.session;
        if (!s || !s.authed)
            return Promise.resolve();
        return new Promise((resolve) => {
            this.request(s, { op: "leave", seq: 0, room: room.id }, () => resolve(), () => resolve());
        });
    }
    roomSend(room, kind, data) {
        const now = this.clock.now();
        if (this.sm.state === "disconnected")
            return Promise.reject(new RoomcastError("closed", "the client is closed", { local: true }));
        if (now < this.sendPausedUntil) {
            return Promise.reject(new RoomcastError("send_paused", "sends are paused after a send-flood close", { retryAfterMs: this.sendPausedUntil - now, local: true }));
        }
        if ((this.opts.localRateLimit ?? true) && now < this.rateLimitedUntil) {
            return Promise.reject(new RoomcastError("rate_limited", "over the send rate (answered locally)", { retryAfterMs: this.rateLimitedUntil - now, local: true }));
        }
        const s = this.session;
        if (!s || !s.authed)
            return Promise.reject(new RoomcastError("not_connected", "not connected", { local: true }));
        if (room.state !== "subscribed")
            return Promise.reject(new RoomcastError("not_joined", `not in room ${room.id}`, { local: true }));
        return new Promise((resolve, reject) => {
            this.request(s, { op: "send", seq: 0, room: room.id, kind, data }, (reply) => {
                if (reply.ok) {
                    resolve(reply.msg_seq !== undefined ? { broadcast: true, msgSeq: reply.msg_seq } : { broadcast: false });
                    return;
                }
                const e = RoomcastError.fromReply(reply.error ?? { code: "unknown", message: "send refused" });
                if (e.code === "rate_limited" && e.retryAfterMs !== undefined) {
                    this.rateLimitedUntil = Math.max(this.rateLimitedUntil, this.clock.now() + e.retryAfterMs);
                }
                reject(e);
            }, reject);
        });
    }
    roomHistory(room, since, limit) {
        const s = this.session;
        if (!s || !s.authed)
            return Promise.reject(new RoomcastError("not_connected", "not connected", { local: true }));
        return new Promise((resolve, reject) => {
            this.historyInFlight++;
            this.request(s, { op: "history", seq: 0, room: room.id, since, limit }, (reply) => {
                this.historyDone(s);
                if (!reply.ok)
                    return reject(RoomcastError.fromReply(reply.error ?? { code: "unknown", message: "history refused" }));
                resolve({
                    epoch: reply.epoch ?? "",
                    lastSeq: reply.last_seq ?? 0,
                    complete: reply.complete ?? false,
                    messages: (reply.msgs ?? []).map((m) => makeMessage(undefined, "room", room.id, m, true)),
                });
            }, (e) => {
                this.historyDone(s);
                reject(e);
            });
        });
    }
    historyDone(s) {
        if (this.session !== s)
            return;
        this.historyInFlight = Math.max(0, this.historyInFlight - 1);
        while (this.historyInFlight < HISTORY_IN_FLIGHT && this.historyQueue.length > 0) {
            this.checkGap(this.historyQueue.shift());
        }
    }
    /** A user or broadcast channel cannot fetch history: a hole is lost at once. */
    skipHoles(ch) {
        while (ch.tracker.hole())
            ch.deliver(ch.tracker.skipHole());
    }
    /** A room holds messages behind a hole: fetch the hole from history (one fetch per room at once). */
    checkGap(room) {
        const s = this.session;
        if (!s || !s.authed || room.state !== "subscribed" || room.tracker.fetching)
            return;
        const hole = room.tracker.hole();
        if (!hole)
            return;
        const size = hole.upTo - hole.since;
        const paused = (this.gapFillPausedUntil.get(room) ?? 0) > this.clock.now();
        if (!(this.opts.gapFill ?? true) || size > (this.opts.maxGapFill ?? 1000) || paused) {
            room.deliver(room.tracker.skipHole());
            this.checkGap(room);
            return;
        }
        if (this.historyInFlight >= HISTORY_IN_FLIGHT) {
            if (!this.historyQueue.includes(room))
                this.historyQueue.push(room);
            return;
        }
        const limit = Math.min(1000, size);
        room.tracker.fetching = true;
        this.historyInFlight++;
        this.request(s, { op: "history", seq: 0, room: room.id, since: hole.since, limit }, (reply) => {
            room.tracker.fetching = false;
            if (room.state !== "unsubscribed") {
                if (reply.ok && reply.epoch !== undefined) {
                    const out = room.tracker.onHistory({ epoch: reply.epoch, last_seq: reply.last_seq ?? 0, complete: reply.complete ?? false, msgs: (reply.msgs ?? []) }, limit);
                    if (out.lost.length > 0 && !out.deliver.some((d) => d.replayed)) {
                        this.gapFillPausedUntil.set(room, this.clock.now() + (this.opts.gapFillPauseMs ?? 10000));
                    }
                    room.deliver(out);
                }
                else {
                    room.deliver(room.tracker.skipHole()); // the history could not be read: the hole is lost
                }
            }
            this.historyDone(s);
            this.checkGap(room);
        }, () => {
            room.tracker.fetching = false;
        });
    }
    // ---- acks ------------------------------------------------------------------------------------
    sendAck(msgSeq) {
        const s = this.session;
        if (!s || !s.authed) {
            this.pendingAcks.push(msgSeq);
            return;
        }
        this.request(s, { op: "ack", seq: 0, msg_seq: msgSeq }, (reply) => {
            if (!reply.ok)
                this.report(RoomcastError.fromReply(reply.error ?? { code: "unknown", message: "ack refused" }));
        }, (e) => {
            if (e.code === "connection_lost")
                this.pendingAcks.push(msgSeq); // sent again on the next connection
        });
    }
}
//# sourceMappingURL=client.js.map