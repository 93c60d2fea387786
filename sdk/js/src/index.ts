// roomcast: the JavaScript client of the roomcast push gateway (browsers and Node).
export { RoomcastClient } from "./client.js";
export type { ClientOptions, ClientEvents, ReconnectEvent, WebSocketLike, WebSocketConstructor } from "./client.js";
export { Room, UserChannel, BroadcastChannel } from "./channel.js";
export type {
  ChannelEvents,
  ChannelType,
  HistoryResult,
  JoinResult,
  LostEvent,
  Message,
  RoomEvents,
  RoomStats,
  SendResult,
} from "./channel.js";
export { RoomcastError } from "./errors.js";
export type { ConnectionState, RoomState, StateChange } from "./states.js";
export { CONNECTION_TRANSITIONS, ROOM_TRANSITIONS, StateMachine, IllegalTransition } from "./states.js";
export type { ReloadInfo, TrackerOutput, Delivered, LostRange, Hole, HistoryPage, PositionReply } from "./tracker.js";
export { SeqTracker } from "./tracker.js";
export { Backoff, backoffDelay, backoffCeiling, backoffSettings } from "./backoff.js";
export type { BackoffOptions, BackoffSettings } from "./backoff.js";
export { DEFAULT_CLOSE_ACTIONS, closeAction } from "./closecodes.js";
export type { CloseAction } from "./closecodes.js";
export type { Clock, TimerHandle } from "./clock.js";
export { systemClock } from "./clock.js";
export { jsonCodec, encodeJson, decodeJson, ProtocolError } from "./codec/json.js";
export { binaryCodec, encodeBinary, decodeBinary, encodeServerBinary, decodeClientBinary } from "./codec/binary.js";
export type * from "./protocol.js";
export { tokenExpiry, tokenSubject, tokenClaims } from "./token.js";
