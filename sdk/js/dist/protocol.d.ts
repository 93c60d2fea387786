/** A position in a channel's stream: its epoch and the last `seq` received on it. */
export interface Position {
    epoch: string;
    seq: number;
}
/** A message of a channel's stream as the server sends it (a batch's `msgs` entry). */
export interface WireMessage {
    seq: number;
    /** Priority: 0 system, 1 big gift, 2 small gift, 3 chat / activity state. */
    p: number;
    kind: string;
    /** How many published messages this one stands for (merge rules only, ≥ 1). */
    merged?: number;
    /** The last message of its merge key. */
    final?: boolean;
    /** The sender's user id, on a message published from a viewer's `send`. */
    from?: string;
    /** The platform asks the user's connections to confirm this message (`ack` op). */
    ack?: boolean;
    data: unknown;
}
export interface AuthOp {
    op: "auth";
    seq: number;
    token: string;
    since?: Position;
}
export interface JoinOp {
    op: "join";
    seq: number;
    room: string;
    since?: Position;
}
export interface LeaveOp {
    op: "leave";
    seq: number;
    room: string;
}
export interface PingOp {
    op: "ping";
    seq: number;
}
export interface HistoryOp {
    op: "history";
    seq: number;
    room: string;
    since: number;
    limit?: number;
}
export interface SendOp {
    op: "send";
    seq: number;
    room: string;
    kind: string;
    data: unknown;
}
export interface AckOp {
    op: "ack";
    seq: number;
    msg_seq: number;
    user?: string;
}
export type ClientOp = AuthOp | JoinOp | LeaveOp | PingOp | HistoryOp | SendOp | AckOp;
/** Reasons a resume (`since`) could not be exact. */
export type RecoveryFailure = "epoch_changed" | "too_old" | "too_many" | "not_stored";
export interface ReplyError {
    code: string;
    message: string;
    /** With `rate_limited`: how long until a send would be admitted. */
    retry_after_ms?: number;
    /** With `rejected`: the platform's own code. */
    platform_code?: string;
}
export interface Reply {
    op: "reply";
    seq: number;
    ok: boolean;
    error?: ReplyError;
    epoch?: string;
    last_seq?: number;
    recovered?: boolean;
    reason?: RecoveryFailure | string;
    complete?: boolean;
    msgs?: WireMessage[];
    msg_seq?: number;
    broadcast?: boolean;
}
export interface Batch {
    op: "batch";
    room?: string;
    user?: string;
    broadcast?: boolean;
    msgs: WireMessage[];
}
export interface RoomPush {
    op: "room";
    room: string;
    online: number;
    users: number;
}
/** Raw TCP only (binary `0x83`); over WebSocket the close frame carries the same. */
export interface CloseNotice {
    op: "close";
    code: number;
    reason: string;
}
export type ServerMessage = Reply | Batch | RoomPush | CloseNotice;
/** A frame as a WebSocket delivers it. */
export type Frame = string | ArrayBuffer | ArrayBufferView;
/** Encodes client ops and decodes server messages for one wire encoding. */
export interface Codec {
    readonly name: "json" | "binary";
    encode(op: ClientOp): string | Uint8Array;
    /** Decodes one server frame; returns undefined for a well-formed frame this client ignores. */
    decode(frame: Frame): ServerMessage | undefined;
}
export declare const RECOVERY_REASONS: readonly RecoveryFailure[];
/** The largest integer JSON and the binary u64 fields carry exactly here. */
export declare const MAX_SEQ: number;
//# sourceMappingURL=protocol.d.ts.map