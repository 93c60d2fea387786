//! Client token verification and minting (PROTOCOL.md §4 rule 1).
//!
//! A client token is a JWT signed with HS256 and the edge's shared secret. Claims: `sub` (the
//! user id, required), `exp` (required, seconds since the Unix epoch) and `rooms` (optional list
//! of room ids the token may join). Verification never reads the clock: the caller passes `now`,
//! so the event loop can use its cached time and tests can use fixed times.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::ids::is_valid_id;

/// The development secret used when none is configured; the edge and the control plane warn loudly
/// when it is in use.
pub const DEV_JWT_SECRET: &str = "roomcast-dev-secret";

/// The claims roomcast reads from a client token. Other claims in a token are ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The user id; must satisfy the id rules.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch; the token is valid strictly before it.
    pub exp: u64,
    /// Rooms this token may join; `None` means any room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Whether this token may `send` into rooms; `Some(false)` for a muted user. Absent means
    /// it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is genuine but `now` is at or past its `exp`.
    #[error("token expired")]
    Expired,
    /// Bad signature, disallowed algorithm, malformed token, or claims that break the rules.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// The reply error code for this failure (PROTOCOL.md §4).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Verifies client tokens against one secret. Build it once at start-up and share it: the key
/// and validation rules are prepared here rather than per token.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret` (HS256).
    pub fn new(secret: &[u8]) -> Verifier {
        // HS256 only: the algorithm list is what stops `none`, HS384/512 and RS/ES "algorithm
        // confusion" tokens, since jsonwebtoken rejects any header alg not in it.
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked in `verify` against the caller's `now`; jsonwebtoken would read the
        // system clock (and add 60 s of leeway by default).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks `token`'s signature and claims; `now_unix_s` is the current time in seconds since
    /// the Unix epoch. The token is expired when `now_unix_s >= exp` (RFC 7519 §4.1.4).
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| reason(e.into_kind()))?
            .claims;
        if !is_valid_id(claims.sub.as_bytes()) {
            return Err(AuthError::Invalid("sub is not a valid user id".into()));
        }
        if let Some(rooms) = &claims.rooms {
            if !rooms.iter().all(|r| is_valid_id(r.as_bytes())) {
                return Err(AuthError::Invalid("rooms holds an invalid room id".into()));
            }
        }
        // Checked last so a token is only called expired once it is known to be genuine and
        // well-formed.
        if now_unix_s >= claims.exp {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Maps a jsonwebtoken failure to our error with a short reason suitable for a reply message.
fn reason(kind: ErrorKind) -> AuthError {
    let why = match kind {
        // Not produced with `validate_exp = false`, but map it faithfully should that change.
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => "algorithm not allowed (HS256 only)".into(),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "malformed token".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        ErrorKind::InvalidClaimFormat(c) => format!("malformed claim {c}"),
        // Covers an unknown `alg` name in the header (e.g. `none`) as well as claims of the
        // wrong shape; serde's message names the field.
        ErrorKind::Json(e) => format!("malformed token: {e}"),
        other => format!("{other:?}"),
    };
    AuthError::Invalid(why)
}

/// Signs `claims` with `secret` (HS256). For tests, the load generator and the control plane.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    // Cannot fail: HMAC takes a key of any length, the key family matches HS256, and
    // `Claims` (strings, an integer, a list of strings) always serialises.
    .expect("HS256 signing of Claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    const SECRET: &[u8] = b"roomcast-test-secret";
    const NOW: u64 = 1_700_000_000;

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            rooms: None,
            send: None,
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(SECRET)
    }

    fn invalid(r: Result<Claims, AuthError>) -> String {
        match r {
            Err(AuthError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// A token with an arbitrary JSON header and payload, signed HS256 with `SECRET`, so only the
    /// claim or header under test is wrong.
    fn signed_json(header: &serde_json::Value, payload: &serde_json::Value) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{msg}.{sig}")
    }

    #[test]
    fn accepts_a_valid_token() {
        let c = claims("u1", NOW + 60);
        let token = mint(SECRET, &c);
        assert_eq!(verifier().verify(&token, NOW), Ok(c));
    }

    #[test]
    fn mint_produces_an_hs256_jwt() {
        let token = mint(SECRET, &claims("u1", NOW));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        // `rooms: None` is left out rather than sent as null.
        let payload = token.split('.').nth(1).unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json, format!(r#"{{"sub":"u1","exp":{NOW}}}"#));
    }

    #[test]
    fn rejects_a_wrong_secret() {
        let token = mint(b"another-secret", &claims("u1", NOW + 60));
        assert_eq!(invalid(verifier().verify(&token, NOW)), "bad signature");
    }

    #[test]
    fn rejects_a_tampered_payload() {
        let token = mint(SECRET, &claims("u1", NOW + 60));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"admin","exp":{}}}"#, NOW + 60));
        parts[1] = &forged;
        assert_eq!(
            invalid(verifier().verify(&parts.join("."), NOW)),
            "bad signature"
        );
    }

    #[test]
    fn expiry_uses_the_passed_in_time() {
        let token = mint(SECRET, &claims("u1", NOW));
        let v = verifier();
        assert!(v.verify(&token, NOW - 1).is_ok());
        // No leeway: expired from `exp` on.
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, NOW + 1), Err(AuthError::Expired));
        // A token long expired by the wall clock is still fine at a fixed earlier time.
        let old = mint(SECRET, &claims("u1", 1_000));
        assert!(v.verify(&old, 999).is_ok());
        assert_eq!(v.verify(&old, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn rejects_alg_none() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, NOW + 60));
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            invalid(verifier().verify(&token, NOW));
        }
        // Also with a valid HS256 signature over the `none` header.
        let token = signed_json(
            &serde_json::json!({"alg": "none", "typ": "JWT"}),
            &serde_json::json!({"sub": "u1", "exp": NOW + 60}),
        );
        invalid(verifier().verify(&token, NOW));
    }

    #[test]
    fn rejects_other_algorithms() {
        let c = claims("u1", NOW + 60);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token =
                jsonwebtoken::encode(&Header::new(alg), &c, &EncodingKey::from_secret(SECRET))
                    .unwrap();
            assert_eq!(
                invalid(verifier().verify(&token, NOW)),
                "algorithm not allowed (HS256 only)",
                "{alg:?}"
            );
        }
        // RS256 header over an HMAC signature (key-confusion attempt).
        let hs = mint(SECRET, &c);
        let rs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let mut parts: Vec<&str> = hs.split('.').collect();
        parts[0] = &rs_header;
        invalid(verifier().verify(&parts.join("."), NOW));
    }

    #[test]
    fn rejects_missing_or_malformed_exp() {
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        for payload in [
            serde_json::json!({"sub": "u1"}),
            serde_json::json!({"sub": "u1", "exp": "soon"}),
            serde_json::json!({"sub": "u1", "exp": -1}),
            serde_json::json!({"sub": "u1", "exp": null}),
        ] {
            invalid(verifier().verify(&signed_json(&header, &payload), NOW));
        }
    }

    #[test]
    fn rejects_missing_or_bad_sub() {
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let no_sub = signed_json(&header, &serde_json::json!({"exp": NOW + 60}));
        invalid(verifier().verify(&no_sub, NOW));
        for sub in ["", "u 1", "u/1", "ü", &"a".repeat(129)] {
            let token = mint(SECRET, &claims(sub, NOW + 60));
            assert_eq!(
                invalid(verifier().verify(&token, NOW)),
                "sub is not a valid user id",
                "{sub:?}"
            );
        }
        // Bad claims win over expiry: an expired token with a bad sub is invalid.
        let token = mint(SECRET, &claims("u 1", NOW));
        assert!(matches!(
            verifier().verify(&token, NOW + 5),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn rooms_claim_round_trips_and_is_checked() {
        let c = Claims {
            sub: "u1".into(),
            exp: NOW + 60,
            rooms: Some(vec!["r1".into(), "room:10000".into()]),
            send: None,
        };
        assert_eq!(verifier().verify(&mint(SECRET, &c), NOW), Ok(c));

        let empty = Claims {
            sub: "u1".into(),
            exp: NOW + 60,
            rooms: Some(vec![]),
            send: None,
        };
        assert_eq!(verifier().verify(&mint(SECRET, &empty), NOW), Ok(empty));

        let bad = Claims {
            sub: "u1".into(),
            exp: NOW + 60,
            rooms: Some(vec!["r 1".into()]),
            send: None,
        };
        assert_eq!(
            invalid(verifier().verify(&mint(SECRET, &bad), NOW)),
            "rooms holds an invalid room id"
        );
        let header = serde_json::json!({"alg": "HS256"});
        let wrong_shape = signed_json(
            &header,
            &serde_json::json!({"sub": "u1", "exp": NOW + 60, "rooms": "r1"}),
        );
        invalid(verifier().verify(&wrong_shape, NOW));
    }

    #[test]
    fn ignores_unknown_claims() {
        let token = signed_json(
            &serde_json::json!({"alg": "HS256", "typ": "JWT"}),
            &serde_json::json!({"sub": "u1", "exp": NOW + 60, "iat": NOW, "name": "x"}),
        );
        assert_eq!(verifier().verify(&token, NOW), Ok(claims("u1", NOW + 60)));
    }

    #[test]
    fn rejects_garbage() {
        let v = verifier();
        for token in [
            "",
            ".",
            "..",
            "a.b.c",
            "not a token",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.e30",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "a.b.c.d",
            "\u{0}\u{ffff}.\u{1f600}.x",
            "====.====.====",
        ] {
            invalid(v.verify(token, NOW));
        }
    }

    #[test]
    fn error_codes_match_the_protocol() {
        assert_eq!(AuthError::Expired.code(), "token_expired");
        assert_eq!(AuthError::Invalid("x".into()).code(), "invalid_token");
        assert_eq!(
            AuthError::Invalid("bad signature".into()).to_string(),
            "invalid token: bad signature"
        );
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let s = format!("{:?}", verifier());
        assert!(!s.contains("roomcast-test-secret"), "{s}");
    }
}
