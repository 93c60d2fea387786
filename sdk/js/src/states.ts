// The two state machines, as explicit transition tables. Pure.

export type ConnectionState = "disconnected" | "connecting" | "connected";
export type RoomState = "unsubscribed" | "subscribing" | "subscribed";

/** One state change, as every `state` event reports it. */
export interface StateChange<S extends string> {
  state: S;
  prev: S;
  /** A close code (number) or a reply's error code (string), when the change has one. */
  code?: number | string;
  reason?: string;
}

export const CONNECTION_TRANSITIONS: Readonly<Record<ConnectionState, readonly ConnectionState[]>> = {
  disconnected: ["connecting"],
  connecting: ["connected", "disconnected"],
  connected: ["connecting", "disconnected"],
};

export const ROOM_TRANSITIONS: Readonly<Record<RoomState, readonly RoomState[]>> = {
  unsubscribed: ["subscribing"],
  subscribing: ["subscribed", "unsubscribed"],
  subscribed: ["subscribing", "unsubscribed"],
};

export class IllegalTransition extends Error {
  constructor(from: string, to: string) {
    super(`illegal state transition ${from} → ${to}`);
    this.name = "IllegalTransition";
  }
}

export class StateMachine<S extends string> {
  constructor(
    private current: S,
    private readonly table: Readonly<Record<S, readonly S[]>>,
  ) {}
  get state(): S {
    return this.current;
  }
  can(to: S): boolean {
    return this.table[this.current].includes(to);
  }
  /** Moves to `to`; throws IllegalTransition when the table does not allow it. */
  to(to: S, code?: number | string, reason?: string): StateChange<S> {
    if (!this.can(to)) throw new IllegalTransition(this.current, to);
    const change: StateChange<S> = { state: to, prev: this.current };
    if (code !== undefined) change.code = code;
    if (reason !== undefined) change.reason = reason;
    this.current = to;
    return change;
  }
}
