/**
 * Codes: the server's reply codes (PROTOCOL.md §4: `rate_limited`, `rejected`, `unavailable`,
 * `not_joined`, `forbidden`, `too_big`, `room_forbidden`, …) and the client's own:
 * `not_connected` (no connection when the op was made), `connection_lost` (the connection
 * dropped before the reply: a send may or may not have been published), `timeout` (no reply
 * within requestTimeoutMs), `closed` (the client was closed or stopped), `send_paused` (sends
 * are paused after a send-flood close), `left` (the room was left while joining).
 */
export class RoomcastError extends Error {
    constructor(code, message, extra = {}) {
        super(message);
        this.name = "RoomcastError";
        this.code = code;
        this.retryAfterMs = extra.retryAfterMs;
        this.platformCode = extra.platformCode;
        this.local = extra.local ?? false;
    }
    static fromReply(e) {
        const extra = {};
        if (e.retry_after_ms !== undefined)
            extra.retryAfterMs = e.retry_after_ms;
        if (e.platform_code !== undefined)
            extra.platformCode = e.platform_code;
        return new RoomcastError(e.code, e.message, extra);
    }
}
//# sourceMappingURL=errors.js.map