type Listener = (...args: any[]) => void;
export type EventMap = {
    [event: string]: Listener;
};
export declare class Emitter<E extends EventMap> {
    private listeners;
    /** Where a listener's exception goes (it never breaks delivery to the others). */
    protected onListenerError: (err: unknown, event: string) => void;
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof E>(event: K, fn: E[K]): () => void;
    /** Adds a listener called at most once. */
    once<K extends keyof E>(event: K, fn: E[K]): () => void;
    off<K extends keyof E>(event: K, fn: E[K]): void;
    listenerCount<K extends keyof E>(event: K): number;
    protected emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void;
    /** For generic subclasses whose event map TypeScript cannot narrow. */
    protected emitUntyped(event: string, ...args: unknown[]): void;
}
export {};
//# sourceMappingURL=emitter.d.ts.map