import type { ClientOp, Codec, Frame, ServerMessage } from "../protocol.js";
export declare class ProtocolError extends Error {
    constructor(message: string);
}
/** Encodes a client op as JSON text. Optional fields left undefined are left out. */
export declare function encodeJson(op: ClientOp): string;
/** Decodes a server JSON frame. Throws ProtocolError on a frame that is not the protocol's. */
export declare function decodeJson(frame: Frame): ServerMessage | undefined;
export declare const jsonCodec: Codec;
//# sourceMappingURL=json.d.ts.map