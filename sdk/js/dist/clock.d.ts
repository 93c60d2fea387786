export type TimerHandle = unknown;
export interface Clock {
    now(): number;
    setTimeout(fn: () => void, ms: number): TimerHandle;
    clearTimeout(handle: TimerHandle): void;
}
export declare const systemClock: Clock;
//# sourceMappingURL=clock.d.ts.map