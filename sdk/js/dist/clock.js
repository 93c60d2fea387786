// Time as the client sees it: injectable so tests drive it explicitly.
export const systemClock = {
    now: () => Date.now(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (h) => globalThis.clearTimeout(h),
};
//# sourceMappingURL=clock.js.map