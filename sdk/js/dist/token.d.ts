/** The token's payload claims, or undefined when it is not a JWT. */
export declare function tokenClaims(token: string): Record<string, unknown> | undefined;
/** The token's `exp` in Unix milliseconds, or undefined when it has none or is not a JWT. */
export declare function tokenExpiry(token: string): number | undefined;
/** The token's `sub` (the user id). */
export declare function tokenSubject(token: string): string | undefined;
//# sourceMappingURL=token.d.ts.map