// Channels as the app sees them: rooms (joined by the app), the user's own channel and the
// broadcast channel (both always there once connected). Each delivers its stream's messages once
// and in order through a SeqTracker; the client (client.ts) does the I/O.
import { Emitter } from "./emitter.js";
import { ROOM_TRANSITIONS, StateMachine } from "./states.js";
import { SeqTracker } from "./tracker.js";
class DeliveredMessage {
    constructor(host, channel, target, w, replayed) {
        this.host = host;
        this.acked = false;
        this.channel = channel;
        this.target = target;
        this.seq = w.seq;
        this.priority = w.p;
        this.kind = w.kind;
        this.data = w.data;
        this.merged = w.merged;
        this.final = w.final === true;
        this.from = w.from;
        this.ackRequested = channel === "user" && w.ack === true;
        this.replayed = replayed;
    }
    ack() {
        if (!this.ackRequested || this.acked || !this.host)
            return;
        this.acked = true;
        this.host.sendAck(this.seq);
    }
}
/** @internal */
export function makeMessage(host, channel, target, w, replayed) {
    return new DeliveredMessage(host, channel, target, w, replayed);
}
class ChannelBase extends Emitter {
    constructor(host) {
        super();
        this.host = host;
        /** @internal */
        this.tracker = new SeqTracker();
        this.onListenerError = (err, event) => host.listenerError(err, `${this.type} ${event} listener`);
    }
    /** Where the stream stands: the epoch and the last seq delivered (keep it to resume later). */
    get position() {
        return this.tracker.position();
    }
    /** Emits a tracker step's reload, messages and losses in order. @internal */
    deliver(out) {
        if (out.reload)
            this.emitUntyped("reload", out.reload);
        let li = 0;
        const lost = (upTo) => {
            while (li < out.lost.length && out.lost[li].at <= upTo) {
                const l = out.lost[li++];
                this.emitUntyped("lost", { from: l.from, to: l.to, count: l.to - l.from + 1 });
            }
        };
        for (let i = 0; i < out.deliver.length; i++) {
            lost(i);
            const d = out.deliver[i];
            const m = makeMessage(this.host, this.type, this.targetId, d.msg, d.replayed);
            this.emitUntyped("message", m);
            if (m.ackRequested && this.host.autoAck)
                m.ack();
        }
        lost(Number.MAX_SAFE_INTEGER);
    }
}
/** The connection's user channel: private messages to this user (rewards, notices, receipts). */
export class UserChannel extends ChannelBase {
    constructor() {
        super(...arguments);
        this.type = "user";
    }
    get targetId() {
        return this.id;
    }
}
/** Messages to every connection (maintenance notices). No resume: a gap is reported as lost. */
export class BroadcastChannel extends ChannelBase {
    constructor() {
        super(...arguments);
        this.type = "broadcast";
    }
    get targetId() {
        return undefined;
    }
}
/** A room. Get one with `client.room(id)`; the same object is returned for the same id. */
export class Room extends ChannelBase {
    /** @internal */
    constructor(host, id) {
        super(host);
        this.id = id;
        this.type = "room";
        /** @internal */
        this.sm = new StateMachine("unsubscribed", ROOM_TRANSITIONS);
        /** The app wants to be in the room (join called, leave not). @internal */
        this.wanted = false;
        /** @internal */
        this.waiters = [];
    }
    get targetId() {
        return this.id;
    }
    get state() {
        return this.sm.state;
    }
    /** The latest online count pushed for the room. */
    get stats() {
        return this.statsV;
    }
    /**
     * Joins the room; resolves once subscribed (every message published from then on is delivered).
     * While the client is disconnected it waits for the connection. Rejects with a RoomcastError for
     * a refusal (`room_forbidden`, `too_many_rooms`, `invalid_id`, …), or `left` / `closed`.
     * `since` resumes from a position the app kept (e.g. `room.position` saved across a page load).
     */
    join(options = {}) {
        if (this.sm.state === "subscribed" && this.lastJoin)
            return Promise.resolve(this.lastJoin);
        return new Promise((resolve, reject) => {
            this.waiters.push({ resolve, reject });
            if (this.sm.state === "unsubscribed") {
                if (options.since)
                    this.tracker.setPosition(options.since);
                this.wanted = true;
                this.setState("subscribing", undefined, "join");
                this.host.roomJoin(this);
            }
        });
    }
    /** Leaves the room: no more messages, the position is forgotten. */
    leave() {
        return this.host.roomLeave(this);
    }
    /**
     * Sends a viewer's message into the room (PROTOCOL.md §5 "Upstream"). Resolves with
     * `{broadcast:true, msgSeq}` when published (the message also arrives in the room's stream) or
     * `{broadcast:false}` when accepted but not published; rejects with a RoomcastError
     * (`rate_limited` with retryAfterMs, `rejected` with platformCode, `forbidden`, `too_big`, …).
     */
    send(kind, data) {
        return this.host.roomSend(this, kind, data);
    }
    /** Reads the stored messages after `since` (at most `limit`, 1–1000). */
    history(since, limit = 100) {
        return this.host.roomHistory(this, since, limit);
    }
    /** @internal */
    setState(to, code, reason) {
        if (this.sm.state === to)
            return;
        this.emit("state", this.sm.to(to, code, reason));
    }
    /** @internal */
    setStats(s) {
        this.statsV = s;
        this.emit("stats", s);
    }
    /** @internal */
    settle(result) {
        const w = this.waiters;
        this.waiters = [];
        for (const x of w) {
            if (result instanceof Error)
                x.reject(result);
            else
                x.resolve(result);
        }
    }
}
//# sourceMappingURL=channel.js.map