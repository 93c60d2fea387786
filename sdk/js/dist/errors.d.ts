import type { ReplyError } from "./protocol.js";
/**
 * Codes: the server's reply codes (PROTOCOL.md §4: `rate_limited`, `rejected`, `unavailable`,
 * `not_joined`, `forbidden`, `too_big`, `room_forbidden`, …) and the client's own:
 * `not_connected` (no connection when the op was made), `connection_lost` (the connection
 * dropped before the reply: a send may or may not have been published), `timeout` (no reply
 * within requestTimeoutMs), `closed` (the client was closed or stopped), `send_paused` (sends
 * are paused after a send-flood close), `left` (the room was left while joining).
 */
export declare class RoomcastError extends Error {
    readonly code: string;
    /** With `rate_limited`: milliseconds until a send would be admitted. */
    readonly retryAfterMs: number | undefined;
    /** With `rejected`: the platform's own code. */
    readonly platformCode: string | undefined;
    /** True when the client answered without asking the server (e.g. a send within a known retry_after). */
    readonly local: boolean;
    constructor(code: string, message: string, extra?: {
        retryAfterMs?: number;
        platformCode?: string;
        local?: boolean;
    });
    static fromReply(e: ReplyError): RoomcastError;
}
//# sourceMappingURL=errors.d.ts.map