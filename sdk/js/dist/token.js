// Reading a JWT's claims (without verifying them: the server does) to know when the token
// expires and whose it is.
function base64UrlDecode(s) {
    const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
    const bin = globalThis.atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
}
/** The token's payload claims, or undefined when it is not a JWT. */
export function tokenClaims(token) {
    const parts = token.split(".");
    if (parts.length !== 3)
        return undefined;
    try {
        const claims = JSON.parse(base64UrlDecode(parts[1]));
        return typeof claims === "object" && claims !== null ? claims : undefined;
    }
    catch {
        return undefined;
    }
}
/** The token's `exp` in Unix milliseconds, or undefined when it has none or is not a JWT. */
export function tokenExpiry(token) {
    const exp = tokenClaims(token)?.exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
}
/** The token's `sub` (the user id). */
export function tokenSubject(token) {
    const sub = tokenClaims(token)?.sub;
    return typeof sub === "string" ? sub : undefined;
}
//# sourceMappingURL=token.js.map