// A small typed event emitter (no dependency, works in browsers and Node).
export class Emitter {
    constructor() {
        this.listeners = new Map();
        /** Where a listener's exception goes (it never breaks delivery to the others). */
        this.onListenerError = (err) => {
            // Surface it without breaking the caller's flow.
            setTimeout(() => {
                throw err;
            }, 0);
        };
    }
    /** Adds a listener; returns a function that removes it. */
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        set.add(fn);
        return () => this.off(event, fn);
    }
    /** Adds a listener called at most once. */
    once(event, fn) {
        const wrapped = ((...args) => {
            off();
            fn(...args);
        });
        const off = this.on(event, wrapped);
        return off;
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
    }
    listenerCount(event) {
        return this.listeners.get(event)?.size ?? 0;
    }
    emit(event, ...args) {
        this.emitUntyped(event, ...args);
    }
    /** For generic subclasses whose event map TypeScript cannot narrow. */
    emitUntyped(event, ...args) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(...args);
            }
            catch (err) {
                this.onListenerError(err, String(event));
            }
        }
    }
}
//# sourceMappingURL=emitter.js.map