export interface BackoffOptions {
    /** Ceiling of the first retry's delay, doubled per failed attempt (default 1000 ms). */
    baseMs?: number;
    /** Largest ceiling (default 30000 ms). */
    capMs?: number;
    /** No delay is shorter than this (default 100 ms, at most baseMs). */
    minMs?: number;
}
export interface BackoffSettings {
    baseMs: number;
    capMs: number;
    minMs: number;
}
export declare function backoffSettings(o?: BackoffOptions): BackoffSettings;
/** The ceiling of attempt `attempt` (0-based): min(cap, base × 2^attempt). */
export declare function backoffCeiling(attempt: number, s: BackoffSettings): number;
/**
 * The delay before retry number `attempt` (0 = the first retry after a working connection or the
 * first failure): uniform in [minMs, ceiling] ("full jitter", floored). `random` returns [0, 1).
 */
export declare function backoffDelay(attempt: number, s: BackoffSettings, random: () => number): number;
/** An attempt counter: `next()` gives the next delay and counts the attempt; `reset()` after success. */
export declare class Backoff {
    private readonly random;
    readonly settings: BackoffSettings;
    private n;
    constructor(options?: BackoffOptions, random?: () => number);
    /** Attempts counted since the last reset. */
    get attempt(): number;
    next(): number;
    reset(): void;
}
//# sourceMappingURL=backoff.d.ts.map