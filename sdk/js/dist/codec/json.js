export class ProtocolError extends Error {
    constructor(message) {
        super(message);
        this.name = "ProtocolError";
    }
}
const decoder = /* @__PURE__ */ new TextDecoder("utf-8", { fatal: true });
function isObject(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
function checkMessages(v, where) {
    if (!Array.isArray(v))
        throw new ProtocolError(`${where}: msgs is not an array`);
    for (const m of v) {
        if (!isObject(m) || typeof m.seq !== "number" || typeof m.p !== "number" || typeof m.kind !== "string") {
            throw new ProtocolError(`${where}: a message lacks seq, p or kind`);
        }
    }
    return v;
}
/** Encodes a client op as JSON text. Optional fields left undefined are left out. */
export function encodeJson(op) {
    return JSON.stringify(op);
}
/** Decodes a server JSON frame. Throws ProtocolError on a frame that is not the protocol's. */
export function decodeJson(frame) {
    const text = typeof frame === "string" ? frame : decoder.decode(frame);
    let v;
    try {
        v = JSON.parse(text);
    }
    catch (e) {
        throw new ProtocolError(`not JSON: ${e.message}`);
    }
    if (!isObject(v) || typeof v.op !== "string")
        throw new ProtocolError("not an object with an op");
    switch (v.op) {
        case "reply":
            if (typeof v.seq !== "number" || typeof v.ok !== "boolean")
                throw new ProtocolError("reply: seq/ok");
            if (v.msgs !== undefined)
                checkMessages(v.msgs, "reply");
            if (!v.ok && !isObject(v.error))
                throw new ProtocolError("reply: error missing");
            return v;
        case "batch":
            checkMessages(v.msgs, "batch");
            return v;
        case "room":
            if (typeof v.room !== "string" || typeof v.online !== "number")
                throw new ProtocolError("room: fields");
            if (typeof v.users !== "number")
                v.users = v.online;
            return v;
        default:
            return undefined; // a newer server's push: ignore (PROTOCOL.md: ignore what you do not know)
    }
}
export const jsonCodec = {
    name: "json",
    encode: encodeJson,
    decode: decodeJson,
};
//# sourceMappingURL=json.js.map