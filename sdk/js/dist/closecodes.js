// What a close code means for the client: reconnect, get a new token first, or stop.
// PROTOCOL.md §4 "Close codes". The table is explicit and every entry can be overridden.
/** The default table. Codes not listed: 4000–4999 are the platform's (`platformCloseAction`), others reconnect. */
export const DEFAULT_CLOSE_ACTIONS = Object.freeze({
    1000: "reconnect", // bye: the server does not close with it on its own; if it does, come back
    1001: "reconnect", // shutdown: the edge is going away, another address takes us
    1002: "reconnect", // protocol error (a client bug; the next connection starts clean)
    1005: "reconnect", // no status
    1006: "reconnect", // abnormal: network cut, refused connection, HTTP 503 (edge full), dead connection
    1007: "reconnect", // invalid UTF-8
    1009: "reconnect", // too big (the message is not sent again)
    1011: "reconnect", // server error
    1012: "reconnect", // service restart
    1013: "reconnect", // try again later: auth was answered unavailable
    4000: "reconnect", // heartbeat timeout
    4001: "refresh", // unauthenticated: new token, then reconnect; stop if that one fails too
    4008: "reconnect", // slow consumer: reconnect and recover what was shed
    4029: "reconnect", // full: another address
    4030: "reconnect", // send flood: sends are paused locally (sendPauseAfterFloodMs), reconnect with backoff
});
/** Decides what a close code means, given the app's overrides. */
export function closeAction(code, overrides = {}, platformDefault = "stop") {
    const o = overrides[code];
    if (o)
        return o;
    const d = DEFAULT_CLOSE_ACTIONS[code];
    if (d)
        return d;
    if (code >= 4000 && code <= 4999)
        return platformDefault; // the platform's own (4403 banned, ...)
    return "reconnect";
}
//# sourceMappingURL=closecodes.js.map