import { type BackoffOptions } from "./backoff.js";
import { BroadcastChannel, Room, UserChannel } from "./channel.js";
import { type CloseAction } from "./closecodes.js";
import { type Clock } from "./clock.js";
import { Emitter } from "./emitter.js";
import { type ConnectionState, type StateChange } from "./states.js";
/** The part of the WebSocket interface the client uses: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
    readonly readyState: number;
    binaryType: string;
    send(data: string | ArrayBufferLike | ArrayBufferView): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: any) => void) | null;
    onmessage: ((ev: any) => void) | null;
    onclose: ((ev: any) => void) | null;
    onerror: ((ev: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
type FetchLike = (url: string, init?: {
    signal?: AbortSignal;
    headers?: Record<string, string>;
}) => Promise<{
    ok: boolean;
    status: number;
    json(): Promise<unknown>;
}>;
export interface ClientOptions {
    /**
     * The control plane's dispatch URL, e.g. `https://api.example.com/v1/dispatch?transport=ws`
     * (`transport=ws` is added when missing). Its addresses are tried in order.
     */
    dispatchUrl?: string;
    /** Fixed WebSocket URL(s) instead of dispatch, tried in order, e.g. `wss://edge.example.com/ws`. */
    url?: string | string[];
    /** Returns a client token (a JWT minted by your backend). Called again when it expires or is refused. */
    getToken: () => string | Promise<string>;
    /** The WebSocket constructor (default: `globalThis.WebSocket`; in Node 20 pass the `ws` package's). */
    WebSocket?: WebSocketConstructor;
    /** `fetch` for the dispatcher (default: `globalThis.fetch`). */
    fetch?: FetchLike;
    /** Wire encoding (default `json`). `binary` is smaller and cheaper to decode on the server's side. */
    encoding?: "json" | "binary";
    /** Rewrites a dispatched address, e.g. to `wss://` behind a TLS terminator. */
    mapAddress?: (address: string) => string;
    /** A `ping` op this often (default 25000 ms; the server closes silent connections after 90 s). */
    pingIntervalMs?: number;
    /** Nothing received for this long means the connection is dead: reconnect (default 40000 ms). */
    deadTimeoutMs?: number;
    /** Dispatch, socket open and auth reply must each finish within this (default 10000 ms). */
    connectTimeoutMs?: number;
    /** An op unanswered this long fails with `timeout` and the connection is taken for dead (default 15000 ms). */
    requestTimeoutMs?: number;
    /** Reconnect backoff: uniform in [minMs, min(capMs, baseMs·2^attempt)]. Defaults 1000 / 30000 / 100 ms. */
    backoff?: BackoffOptions;
    /** Overrides of the close-code table (DEFAULT_CLOSE_ACTIONS), e.g. `{4403: "reconnect"}`. */
    closeActions?: Record<number, CloseAction>;
    /** What a 4000–4999 code not in the table (the platform's own) means (default `stop`). */
    platformCloseAction?: CloseAction;
    /** Confirm messages that ask for it as soon as the `message` listeners ran (default true). */
    autoAck?: boolean;
    /** Fetch a live gap's messages with `history` (default true). Off: gaps are reported `lost` at once. */
    gapFill?: boolean;
    /** Gaps longer than this are not fetched but reported `lost` (default 1000). */
    maxGapFill?: number;
    /**
     * After a gap fetch that found none of the missing messages (a big room's budget drops chat,
     * which its level does not store), that room's gaps are reported `lost` without asking for this
     * long (default 10000 ms), so that a crowd of viewers does not read history every tick for nothing.
     */
    gapFillPauseMs?: number;
    /** A token expiring within this is replaced before it is used (default 5000 ms). */
    tokenRefreshMarginMs?: number;
    /** After a `rate_limited` reply, refuse sends locally until its retry_after_ms has passed (default true). */
    localRateLimit?: boolean;
    /** After a `4030 send flood` close, refuse sends locally this long (default 10000 ms). */
    sendPauseAfterFloodMs?: number;
    /** Time source (tests). */
    clock?: Clock;
    /** Random source in [0, 1) for the jitter (tests). */
    random?: () => number;
}
export interface ReconnectEvent {
    /** Failed attempts since the last successful auth (1 for the first retry). */
    attempt: number;
    /** The delay before the next attempt. */
    delayMs: number;
    /** The close code (or a client code such as `dispatch_failed`) that caused it. */
    code: number | string | undefined;
    reason: string | undefined;
}
export type ClientEvents = {
    state: (change: StateChange<ConnectionState>) => void;
    reconnect: (e: ReconnectEvent) => void;
    /** Non-fatal problems: a failed dispatch or getToken, a malformed frame, a listener that threw. */
    error: (err: Error) => void;
};
export declare class RoomcastClient extends Emitter<ClientEvents> {
    /** The user's private channel. */
    readonly user: UserChannel;
    /** Messages to everyone. */
    readonly broadcast: BroadcastChannel;
    private readonly opts;
    private readonly clock;
    private readonly WS;
    private readonly fetchFn;
    private readonly backoff;
    private readonly sm;
    private readonly roomsById;
    private readonly host;
    private readonly fixedUrls;
    private session;
    private gen;
    private retryTimer;
    private connectWaiters;
    private addresses;
    private addrIndex;
    private needDispatch;
    private token;
    private tokenStale;
    private authRejections;
    private pendingAcks;
    private historyInFlight;
    private historyQueue;
    private roomRetry;
    private roomBackoff;
    private gapFillPausedUntil;
    private rateLimitedUntil;
    private sendPausedUntil;
    constructor(options: ClientOptions);
    /** `disconnected`, `connecting` (dialling, or waiting to retry) or `connected` (authenticated). */
    get state(): ConnectionState;
    /** The WebSocket URL of the current connection. */
    get address(): string | undefined;
    /** The room with this id (created on first use; the same object afterwards). */
    room(id: string): Room;
    /** Every room object made so far. */
    rooms(): Room[];
    /**
     * Starts connecting (and keeps reconnecting). Resolves at the first successful auth; rejects when
     * the client stops (a close code whose action is `stop`, a second refused token, or `close()`).
     */
    connect(): Promise<void>;
    /** Closes the connection for good (code 1000); rooms become unsubscribed but keep their position. */
    close(): void;
    private setState;
    /**
     * Reports a non-fatal problem on the `error` event. Without an `error` listener, a listener's
     * exception (an app bug) goes to the console; expected trouble (the server away) stays quiet —
     * the `reconnect` event says it.
     */
    private report;
    private attempt;
    private pickAddress;
    private dispatch;
    private currentToken;
    private open;
    private auth;
    private onAuthed;
    private schedulePing;
    private armWatchdog;
    /** The session ended (close event, timeout, dead connection). Decide: reconnect, refresh or stop. */
    private drop;
    /** Detaches and closes a session, failing what waited on it. */
    private endSession;
    private scheduleRetry;
    private stop;
    private request;
    private onFrame;
    private roomJoin;
    private subscribe;
    private roomLeave;
    private roomSend;
    private roomHistory;
    private historyDone;
    /** A user or broadcast channel cannot fetch history: a hole is lost at once. */
    private skipHoles;
    /** A room holds messages behind a hole: fetch the hole from history (one fetch per room at once). */
    private checkGap;
    private sendAck;
}
export {};
//# sourceMappingURL=client.d.ts.map