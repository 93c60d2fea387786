/**
 * - `reconnect`: reconnect after the backoff delay (to the next address; rooms are resumed).
 * - `refresh`: call `getToken()` for a new token, then reconnect; a second refusal in a row stops.
 * - `stop`: stay disconnected until the app calls `connect()` again.
 */
export type CloseAction = "reconnect" | "refresh" | "stop";
/** The default table. Codes not listed: 4000–4999 are the platform's (`platformCloseAction`), others reconnect. */
export declare const DEFAULT_CLOSE_ACTIONS: Readonly<Record<number, CloseAction>>;
/** Decides what a close code means, given the app's overrides. */
export declare function closeAction(code: number, overrides?: Readonly<Record<number, CloseAction>>, platformDefault?: CloseAction): CloseAction;
//# sourceMappingURL=closecodes.d.ts.map