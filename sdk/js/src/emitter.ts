// A small typed event emitter (no dependency, works in browsers and Node).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;
export type EventMap = { [event: string]: Listener };

export class Emitter<E extends EventMap> {
  private listeners = new Map<keyof E, Set<Listener>>();
  /** Where a listener's exception goes (it never breaks delivery to the others). */
  protected onListenerError: (err: unknown, event: string) => void = (err) => {
    // Surface it without breaking the caller's flow.
    setTimeout(() => {
      throw err;
    }, 0);
  };

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: E[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof E>(event: K, fn: E[K]): () => void {
    const wrapped = ((...args: Parameters<E[K]>) => {
      off();
      fn(...args);
    }) as E[K];
    const off = this.on(event, wrapped);
    return off;
  }

  off<K extends keyof E>(event: K, fn: E[K]): void {
    this.listeners.get(event)?.delete(fn);
  }

  listenerCount<K extends keyof E>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  protected emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
    this.emitUntyped(event as string, ...args);
  }

  /** For generic subclasses whose event map TypeScript cannot narrow. */
  protected emitUntyped(event: string, ...args: unknown[]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        this.onListenerError(err, String(event));
      }
    }
  }
}
