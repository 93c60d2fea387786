// Reconnect delays: exponential backoff with full jitter, and a floor so that no answer from a
// server can turn reconnecting into a zero-delay loop. Pure: the random source is a parameter.

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

export function backoffSettings(o: BackoffOptions = {}): BackoffSettings {
  const baseMs = o.baseMs ?? 1000;
  const capMs = o.capMs ?? 30000;
  if (!(baseMs > 0) || !(capMs >= baseMs)) throw new RangeError("backoff: need 0 < baseMs <= capMs");
  const minMs = Math.min(o.minMs ?? 100, baseMs);
  if (!(minMs > 0)) throw new RangeError("backoff: minMs must be > 0");
  return { baseMs, capMs, minMs };
}

/** The ceiling of attempt `attempt` (0-based): min(cap, base × 2^attempt). */
export function backoffCeiling(attempt: number, s: BackoffSettings): number {
  return Math.min(s.capMs, s.baseMs * 2 ** Math.max(0, attempt));
}

/**
 * The delay before retry number `attempt` (0 = the first retry after a working connection or the
 * first failure): uniform in [minMs, ceiling] ("full jitter", floored). `random` returns [0, 1).
 */
export function backoffDelay(attempt: number, s: BackoffSettings, random: () => number): number {
  const ceiling = backoffCeiling(attempt, s);
  const x = random();
  const r = Number.isFinite(x) ? Math.min(Math.max(x, 0), 1) : 0;
  return Math.round(s.minMs + r * (ceiling - s.minMs));
}

/** An attempt counter: `next()` gives the next delay and counts the attempt; `reset()` after success. */
export class Backoff {
  readonly settings: BackoffSettings;
  private n = 0;
  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.settings = backoffSettings(options);
  }
  /** Attempts counted since the last reset. */
  get attempt(): number {
    return this.n;
  }
  next(): number {
    const d = backoffDelay(this.n, this.settings, this.random);
    this.n = Math.min(this.n + 1, 64);
    return d;
  }
  reset(): void {
    this.n = 0;
  }
}
