// Reconnect delays: exponential backoff with full jitter, and a floor so that no answer from a
// server can turn reconnecting into a zero-delay loop. Pure: the random source is a parameter.
export function backoffSettings(o = {}) {
    const baseMs = o.baseMs ?? 1000;
    const capMs = o.capMs ?? 30000;
    if (!(baseMs > 0) || !(capMs >= baseMs))
        throw new RangeError("backoff: need 0 < baseMs <= capMs");
    const minMs = Math.min(o.minMs ?? 100, baseMs);
    if (!(minMs > 0))
        throw new RangeError("backoff: minMs must be > 0");
    return { baseMs, capMs, minMs };
}
/** The ceiling of attempt `attempt` (0-based): min(cap, base × 2^attempt). */
export function backoffCeiling(attempt, s) {
    return Math.min(s.capMs, s.baseMs * 2 ** Math.max(0, attempt));
}
/**
 * The delay before retry number `attempt` (0 = the first retry after a working connection or the
 * first failure): uniform in [minMs, ceiling] ("full jitter", floored). `random` returns [0, 1).
 */
export function backoffDelay(attempt, s, random) {
    const ceiling = backoffCeiling(attempt, s);
    const x = random();
    const r = Number.isFinite(x) ? Math.min(Math.max(x, 0), 1) : 0;
    return Math.round(s.minMs + r * (ceiling - s.minMs));
}
/** An attempt counter: `next()` gives the next delay and counts the attempt; `reset()` after success. */
export class Backoff {
    constructor(options = {}, random = Math.random) {
        this.random = random;
        this.n = 0;
        this.settings = backoffSettings(options);
    }
    /** Attempts counted since the last reset. */
    get attempt() {
        return this.n;
    }
    next() {
        const d = backoffDelay(this.n, this.settings, this.random);
        this.n = Math.min(this.n + 1, 64);
        return d;
    }
    reset() {
        this.n = 0;
    }
}
//# sourceMappingURL=backoff.js.map