import { Emitter } from "./emitter.js";
import type { Position } from "./protocol.js";
import { type RoomState, type StateChange } from "./states.js";
import { type ReloadInfo } from "./tracker.js";
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
export type SendResult = {
    broadcast: true;
    msgSeq: number;
} | {
    broadcast: false;
};
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
declare abstract class ChannelBase<E extends ChannelEvents> extends Emitter<E> {
    protected readonly host: ChannelHost;
    abstract readonly type: ChannelType;
    constructor(host: ChannelHost);
    /** Where the stream stands: the epoch and the last seq delivered (keep it to resume later). */
    get position(): Position | undefined;
    protected abstract get targetId(): string | undefined;
}
/** The connection's user channel: private messages to this user (rewards, notices, receipts). */
export declare class UserChannel extends ChannelBase<ChannelEvents> {
    readonly type: "user";
    /** The user id (the token's `sub`), known once a token was fetched. */
    id: string | undefined;
    protected get targetId(): string | undefined;
}
/** Messages to every connection (maintenance notices). No resume: a gap is reported as lost. */
export declare class BroadcastChannel extends ChannelBase<ChannelEvents> {
    readonly type: "broadcast";
    protected get targetId(): string | undefined;
}
/** A room. Get one with `client.room(id)`; the same object is returned for the same id. */
export declare class Room extends ChannelBase<RoomEvents> {
    readonly id: string;
    readonly type: "room";
    private statsV;
    protected get targetId(): string;
    get state(): RoomState;
    /** The latest online count pushed for the room. */
    get stats(): RoomStats | undefined;
    /**
     * Joins the room; resolves once subscribed (every message published from then on is delivered).
     * While the client is disconnected it waits for the connection. Rejects with a RoomcastError for
     * a refusal (`room_forbidden`, `too_many_rooms`, `invalid_id`, …), or `left` / `closed`.
     * `since` resumes from a position the app kept (e.g. `room.position` saved across a page load).
     */
    join(options?: {
        since?: Position;
    }): Promise<JoinResult>;
    /** Leaves the room: no more messages, the position is forgotten. */
    leave(): Promise<void>;
    /**
     * Sends a viewer's message into the room (PROTOCOL.md §5 "Upstream"). Resolves with
     * `{broadcast:true, msgSeq}` when published (the message also arrives in the room's stream) or
     * `{broadcast:false}` when accepted but not published; rejects with a RoomcastError
     * (`rate_limited` with retryAfterMs, `rejected` with platformCode, `forbidden`, `too_big`, …).
     */
    send(kind: string, data: unknown): Promise<SendResult>;
    /** Reads the stored messages after `since` (at most `limit`, 1–1000). */
    history(since: number, limit?: number): Promise<HistoryResult>;
}
export {};
//# sourceMappingURL=channel.d.ts.map