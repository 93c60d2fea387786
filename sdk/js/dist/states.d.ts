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
export declare const CONNECTION_TRANSITIONS: Readonly<Record<ConnectionState, readonly ConnectionState[]>>;
export declare const ROOM_TRANSITIONS: Readonly<Record<RoomState, readonly RoomState[]>>;
export declare class IllegalTransition extends Error {
    constructor(from: string, to: string);
}
export declare class StateMachine<S extends string> {
    private current;
    private readonly table;
    constructor(current: S, table: Readonly<Record<S, readonly S[]>>);
    get state(): S;
    can(to: S): boolean;
    /** Moves to `to`; throws IllegalTransition when the table does not allow it. */
    to(to: S, code?: number | string, reason?: string): StateChange<S>;
}
//# sourceMappingURL=states.d.ts.map