// The two state machines, as explicit transition tables. Pure.
export const CONNECTION_TRANSITIONS = {
    disconnected: ["connecting"],
    connecting: ["connected", "disconnected"],
    connected: ["connecting", "disconnected"],
};
export const ROOM_TRANSITIONS = {
    unsubscribed: ["subscribing"],
    subscribing: ["subscribed", "unsubscribed"],
    subscribed: ["subscribing", "unsubscribed"],
};
export class IllegalTransition extends Error {
    constructor(from, to) {
        super(`illegal state transition ${from} → ${to}`);
        this.name = "IllegalTransition";
    }
}
export class StateMachine {
    constructor(current, table) {
        this.current = current;
        this.table = table;
    }
    get state() {
        return this.current;
    }
    can(to) {
        return this.table[this.current].includes(to);
    }
    /** Moves to `to`; throws IllegalTransition when the table does not allow it. */
    to(to, code, reason) {
        if (!this.can(to))
            throw new IllegalTransition(this.current, to);
        const change = { state: to, prev: this.current };
        if (code !== undefined)
            change.code = code;
        if (reason !== undefined)
            change.reason = reason;
        this.current = to;
        return change;
    }
}
//# sourceMappingURL=states.js.map