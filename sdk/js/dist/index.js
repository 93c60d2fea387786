// roomcast: the JavaScript client of the roomcast push gateway (browsers and Node).
export { RoomcastClient } from "./client.js";
export { Room, UserChannel, BroadcastChannel } from "./channel.js";
export { RoomcastError } from "./errors.js";
export { CONNECTION_TRANSITIONS, ROOM_TRANSITIONS, StateMachine, IllegalTransition } from "./states.js";
export { SeqTracker } from "./tracker.js";
export { Backoff, backoffDelay, backoffCeiling, backoffSettings } from "./backoff.js";
export { DEFAULT_CLOSE_ACTIONS, closeAction } from "./closecodes.js";
export { systemClock } from "./clock.js";
export { jsonCodec, encodeJson, decodeJson, ProtocolError } from "./codec/json.js";
export { binaryCodec, encodeBinary, decodeBinary, encodeServerBinary, decodeClientBinary } from "./codec/binary.js";
export { tokenExpiry, tokenSubject, tokenClaims } from "./token.js";
//# sourceMappingURL=index.js.map