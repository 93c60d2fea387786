import type { ClientOp, Codec, Frame, ServerMessage } from "../protocol.js";
export declare const OP: {
    readonly auth: 1;
    readonly join: 2;
    readonly leave: 3;
    readonly ping: 4;
    readonly history: 5;
    readonly send: 6;
    readonly ack: 7;
    readonly reply: 129;
    readonly batch: 130;
    readonly close: 131;
    readonly room: 132;
};
/** Bits of a message's priority byte. */
export declare const FLAG: {
    readonly merged: 128;
    readonly final: 64;
    readonly from: 32;
    readonly ack: 16;
};
/** Bits of a successful reply's flags byte. */
export declare const REPLY_FLAG: {
    readonly position: 1;
    readonly recovered: 2;
    readonly history: 4;
    readonly msgSeq: 8;
    readonly notBroadcast: 16;
};
/** Bits of an error reply's flags byte. */
export declare const ERROR_FLAG: {
    readonly retryAfter: 1;
    readonly platformCode: 2;
};
/** Encodes a client op in the binary encoding. */
export declare function encodeBinary(op: ClientOp): Uint8Array;
/** Decodes a server frame in the binary encoding. Throws ProtocolError on a malformed one. */
export declare function decodeBinary(frame: Frame): ServerMessage | undefined;
export declare const binaryCodec: Codec;
/** Encodes a server message in the binary encoding (what an edge sends). */
export declare function encodeServerBinary(msg: ServerMessage): Uint8Array;
/** Decodes a client op in the binary encoding (what an edge reads). */
export declare function decodeClientBinary(frame: Frame): ClientOp;
//# sourceMappingURL=binary.d.ts.map