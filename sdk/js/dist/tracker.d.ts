import type { Position } from "./protocol.js";
export interface Delivered<M> {
    msg: M;
    /** Delivered from a recovery replay or a history page rather than live. */
    replayed: boolean;
}
/** The app must reload the channel's state from the platform (PROTOCOL.md §5). */
export interface ReloadInfo {
    /** `epoch_changed`, `too_old`, `too_many`, `not_stored` (the server's), or another the client saw. */
    reason: string;
    epoch: string;
    lastSeq: number;
}
/** Seqs `from` … `to` (inclusive) will never be delivered; `at` is the index in `deliver` they precede. */
export interface LostRange {
    from: number;
    to: number;
    at: number;
}
/** What a step produced: messages to deliver in this order, losses between them, a reload first. */
export interface TrackerOutput<M> {
    deliver: Delivered<M>[];
    lost: LostRange[];
    reload?: ReloadInfo;
}
/** The position in a join/auth/history reply. */
export interface PositionReply {
    epoch: string;
    last_seq: number;
    recovered?: boolean;
    reason?: string;
}
export interface HistoryPage<M> {
    epoch: string;
    last_seq: number;
    complete: boolean;
    msgs: M[];
}
/** A hole to fill: every seq in since+1 … upTo is missing and a later one is held. */
export interface Hole {
    since: number;
    upTo: number;
}
export declare class SeqTracker<M extends {
    seq: number;
}> {
    private epochV;
    private lastV;
    private pending;
    private early;
    private awaiting;
    private replayUpTo;
    /** Messages dropped because their seq was already delivered or held. */
    duplicates: number;
    /** A history fetch for the current hole is in flight (set and cleared by the caller). */
    fetching: boolean;
    get epoch(): string | undefined;
    /** The last seq delivered (or skipped as lost); undefined before the channel's position is known. */
    get last(): number | undefined;
    /** Where to resume from: the epoch and the last seq delivered. */
    position(): Position | undefined;
    /** Adopts a position the app kept (e.g. across a page reload) to resume from. */
    setPosition(p: Position): void;
    /** Seqs held back behind a hole. */
    get held(): number;
    /** A join (or auth) was sent: messages until its reply are held as early arrivals. */
    begin(): void;
    /** The connection is gone: keep the position and what is held, forget the rest. */
    suspend(): void;
    /** Forget everything (a leave, or a broadcast channel on a new connection). */
    reset(): void;
    /**
     * The join/auth reply arrived. `resumed`: the op carried `since` (this tracker's position).
     * - recovered: the missed messages follow as batches, flagged replayed up to `last_seq`;
     * - not recovered: reload, subscribed from `last_seq` on;
     * - fresh: messages that came before the reply (seq ≤ last_seq) are delivered, then the
     *   position is `last_seq`.
     */
    subscribed(reply: PositionReply, resumed: boolean): TrackerOutput<M>;
    /** Messages from a batch, in the order they came. */
    ingest(msgs: readonly M[]): TrackerOutput<M>;
    private accept;
    private drain;
    private minHeld;
    /** The first hole, when a later seq is held behind it. */
    hole(): Hole | undefined;
    /** Give up on the first hole: report it lost and deliver what follows it. */
    skipHole(): TrackerOutput<M>;
    /**
     * A history page asked with `since` and `limit` arrived. Its messages fill holes; a seq the
     * page covers but does not hold, below a seq already held, is lost (live delivery is in order,
     * so it will not come). A page that is full covers only up to its last message: the caller
     * asks again (`hole()` still answers) for the rest.
     */
    onHistory(page: HistoryPage<M>, limit: number): TrackerOutput<M>;
}
//# sourceMappingURL=tracker.d.ts.map