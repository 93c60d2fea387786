// Channels as the app sees them: rooms (joined by the app), the user's own channel and the
// broadcast channel (both always there once connected). Each delivers its stream's messages once
// and in order through a SeqTracker; the client (client.ts) does the I/O.
import { Emitter } from "./emitter.js";
import type { Position, WireMessage } from "./protocol.js";
import { ROOM_TRANSITIONS, StateMachine, type RoomState, type StateChange } from "./states.js";
import { SeqTracker, type ReloadInfo, type TrackerOutput } from "./tracker.js";

export type ChannelType = "room" | "user" | "broadcast";

/** A message delivered to the app. */
export interface Message<T = unknown> {
  readonly channel: ChannelType;
  /** The room's id (room messages) or the user's id (user messages). */
  readonly target: string | undefined;
  readonly seq: number;
  /** 0 system, 1 big gift, 2 small gift, 3 chat / activity state. */
  readonly priority: number;
  readonly kind: string;
  readonly data: T;
  /** How many published messages this one stands for (merge rules, PROTOCOL.md §5). */
  readonly merged: number | undefined;
  /** The last message of its merge key (a PK's result). */
  readonly final: boolean;
  /** The sender's user id, on a viewer's `send`. */
  readonly from: string | undefined;
  /** The platform asks for a receipt (user channel messages published with `"ack":true`). */
  readonly ackRequested: boolean;
  /** Delivered from a recovery replay or a history fetch (it was missed live), not live. */
  readonly replayed: boolean;
  /** Confirms the message (only when ackRequested; once; queued while disconnected). */
  ack(): void;
}

/** Messages `from` … `to` of the channel will never be delivered (budget drops not stored, history expired, …). */
export interface LostEvent {
  from: number;
  to: number;
  count: number;
}

export type ChannelEvents = {
  message: (msg: Message) => void;
  /** The stream could not be resumed exactly: reload the channel's state from the platform. */
  reload: (info: ReloadInfo) => void;
  lost: (info: LostEvent) => void;
};

export interface RoomStats {
  /** Connections in the room over every edge. */
  online: number;
  /** Distinct users among them. */
  users: number;
}

export type RoomEvents = ChannelEvents & {
  state: (change: StateChange<RoomState>) => void;
  stats: (stats: RoomStats) => void;
};

export interface JoinResult {
  epoch: string;
  lastSeq: number;
  /** Present when the join resumed (`since`): whether the missed messages are being replayed. */
  recovered?: boolean;
  /** Why a resume was not exact (`epoch_changed`, `too_old`, `too_many`, `not_stored`). */
  reason?: string;
}

export type SendResult = { broadcast: true; msgSeq: number } | { broadcast: false };

export interface HistoryResult {
  epoch: string;
  lastSeq: number;
  /** False when some messages after `since` are no longer all stored. */
  complete: boolean;
  messages: Message[];
}

/** What a channel needs from its client (not part of the public API). */
export interface ChannelHost {
  readonly autoAck: boolean;
  sendAck(msgSeq: number): void;
  listenerError(err: unknown, where: string): void;
  roomJoin(room: Room): void;
  roomLeave(room: Room): Promise<void>;
  roomSend(room: Room, kind: string, data: unknown): Promise<SendResult>;
  roomHistory(room: Room, since: number, limit: number): Promise<HistoryResult>;
}

class DeliveredMessage implements Message {
  readonly channel: ChannelType;
  readonly target: string | undefined;
  readonly seq: number;
  readonly priority: number;
  readonly kind: string;
  readonly data: unknown;
  readonly merged: number | undefined;
  readonly final: boolean;
  readonly from: string | undefined;
  readonly ackRequested: boolean;
  readonly replayed: boolean;
  private acked = false;
  constructor(
    private readonly host: ChannelHost | undefined,
    channel: ChannelType,
    target: string | undefined,
    w: WireMessage,
    replayed: boolean,
  ) {
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
  ack(): void {
    if (!this.ackRequested || this.acked || !this.host) return;
    this.acked = true;
    this.host.sendAck(this.seq);
  }
}

/** @internal */
export function makeMessage(
  host: ChannelHost | undefined,
  channel: ChannelType,
  target: string | undefined,
  w: WireMessage,
  replayed: boolean,
): Message {
  return new DeliveredMessage(host, channel, target, w, replayed);
}

abstract class ChannelBase<E extends ChannelEvents> extends Emitter<E> {
  /** @internal */
  readonly tracker = new SeqTracker<WireMessage>();
  abstract readonly type: ChannelType;

  constructor(protected readonly host: ChannelHost) {
    super();
    this.onListenerError = (err, event) => host.listenerError(err, `${this.type} ${event} listener`);
  }

  /** Where the stream stands: the epoch and the last seq delivered (keep it to resume later). */
  get position(): Position | undefined {
    return this.tracker.position();
  }

  protected abstract get targetId(): string | undefined;

  /** Emits a tracker step's reload, messages and losses in order. @internal */
  deliver(out: TrackerOutput<WireMessage>): void {
    if (out.reload) this.emitUntyped("reload", out.reload);
    let li = 0;
    const lost = (upTo: number) => {
      while (li < out.lost.length && out.lost[li]!.at <= upTo) {
        const l = out.lost[li++]!;
        this.emitUntyped("lost", { from: l.from, to: l.to, count: l.to - l.from + 1 });
      }
    };
    for (let i = 0; i < out.deliver.length; i++) {
      lost(i);
      const d = out.deliver[i]!;
      const m = makeMessage(this.host, this.type, this.targetId, d.msg, d.replayed);
      this.emitUntyped("message", m);
      if (m.ackRequested && this.host.autoAck) m.ack();
    }
    lost(Number.MAX_SAFE_INTEGER);
  }
}

/** The connection's user channel: private messages to this user (rewards, notices, receipts). */
export class UserChannel extends ChannelBase<ChannelEvents> {
  readonly type = "user" as const;
  /** The user id (the token's `sub`), known once a token was fetched. */
  id: string | undefined;
  protected get targetId(): string | undefined {
    return this.id;
  }
}

/** Messages to every connection (maintenance notices). No resume: a gap is reported as lost. */
export class BroadcastChannel extends ChannelBase<ChannelEvents> {
  readonly type = "broadcast" as const;
  protected get targetId(): string | undefined {
    return undefined;
  }
}

/** A room. Get one with `client.room(id)`; the same object is returned for the same id. */
export class Room extends ChannelBase<RoomEvents> {
  readonly type = "room" as const;
  /** @internal */
  readonly sm = new StateMachine<RoomState>("unsubscribed", ROOM_TRANSITIONS);
  /** The app wants to be in the room (join called, leave not). @internal */
  wanted = false;
  /** @internal */
  waiters: Array<{ resolve: (r: JoinResult) => void; reject: (e: Error) => void }> = [];
  /** @internal */
  lastJoin: JoinResult | undefined;
  private statsV: RoomStats | undefined;

  /** @internal */
  constructor(
    host: ChannelHost,
    readonly id: string,
  ) {
    super(host);
  }

  protected get targetId(): string {
    return this.id;
  }

  get state(): RoomState {
    return this.sm.state;
  }

  /** The latest online count pushed for the room. */
  get stats(): RoomStats | undefined {
    return this.statsV;
  }

  /**
   * Joins the room; resolves once subscribed (every message published from then on is delivered).
   * While the client is disconnected it waits for the connection. Rejects with a RoomcastError for
   * a refusal (`room_forbidden`, `too_many_rooms`, `invalid_id`, …), or `left` / `closed`.
   * `since` resumes from a position the app kept (e.g. `room.position` saved across a page load).
   */
  join(options: { since?: Position } = {}): Promise<JoinResult> {
    if (this.sm.state === "subscribed" && this.lastJoin) return Promise.resolve(this.lastJoin);
    return new Promise<JoinResult>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (this.sm.state === "unsubscribed") {
        if (options.since) this.tracker.setPosition(options.since);
        this.wanted = true;
        this.setState("subscribing", undefined, "join");
        this.host.roomJoin(this);
      }
    });
  }

  /** Leaves the room: no more messages, the position is forgotten. */
  leave(): Promise<void> {
    return this.host.roomLeave(this);
  }

  /**
   * Sends a viewer's message into the room (PROTOCOL.md §5 "Upstream"). Resolves with
   * `{broadcast:true, msgSeq}` when published (the message also arrives in the room's stream) or
   * `{broadcast:false}` when accepted but not published; rejects with a RoomcastError
   * (`rate_limited` with retryAfterMs, `rejected` with platformCode, `forbidden`, `too_big`, …).
   */
  send(kind: string, data: unknown): Promise<SendResult> {
    return this.host.roomSend(this, kind, data);
  }

  /** Reads the stored messages after `since` (at most `limit`, 1–1000). */
  history(since: number, limit = 100): Promise<HistoryResult> {
    return this.host.roomHistory(this, since, limit);
  }

  /** @internal */
  setState(to: RoomState, code?: number | string, reason?: string): void {
    if (this.sm.state === to) return;
    this.emit("state", this.sm.to(to, code, reason));
  }

  /** @internal */
  setStats(s: RoomStats): void {
    this.statsV = s;
    this.emit("stats", s);
  }

  /** @internal */
  settle(result: JoinResult | Error): void {
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) {
      if (result instanceof Error) x.reject(result);
      else x.resolve(result);
    }
  }
}
