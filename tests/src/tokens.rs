//! Client tokens (PROTOCOL.md §4 rule 1): HS256 JWTs signed with the edge's secret, plus the
//! broken ones the edge must refuse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use roomcast_proto::auth::{mint, Claims};

use crate::unix_now;

/// The `--jwt-secret` every test edge runs with.
pub const SECRET: &str = "test-secret";

/// How long valid test tokens stay valid.
const VALID_FOR_S: u64 = 3600;

/// A valid token for `user` that may join any room.
pub fn token(user: &str) -> String {
    mint(
        SECRET.as_bytes(),
        &claims(user, unix_now() + VALID_FOR_S, None),
    )
}

/// A valid token for `user` whose `rooms` claim allows only `rooms`.
pub fn token_for_rooms(user: &str, rooms: &[&str]) -> String {
    let rooms = rooms.iter().map(|r| r.to_string()).collect();
    mint(
        SECRET.as_bytes(),
        &claims(user, unix_now() + VALID_FOR_S, Some(rooms)),
    )
}

/// A valid token for `user` with the claim `"send": send` (`false`: a muted viewer, who may
/// join and read but whose sends are refused `forbidden`).
pub fn token_with_send_claim(user: &str, send: bool) -> String {
    let mut claims = claims(user, unix_now() + VALID_FOR_S, None);
    claims.send = Some(send);
    mint(SECRET.as_bytes(), &claims)
}

/// A correctly signed token that expired an hour ago (well past any clock-skew leeway).
pub fn expired_token(user: &str) -> String {
    mint(SECRET.as_bytes(), &claims(user, unix_now() - 3600, None))
}

/// A well-formed HS256 token signed with another secret than the edge's.
pub fn token_signed_with_wrong_secret(user: &str) -> String {
    mint(
        b"not-the-edge-secret",
        &claims(user, unix_now() + VALID_FOR_S, None),
    )
}

/// An unsigned token (`"alg":"none"`, empty signature), built by hand because JWT libraries
/// refuse to produce one.
pub fn alg_none_token(user: &str) -> String {
    let header = serde_json::json!({ "alg": "none", "typ": "JWT" });
    let payload = serde_json::json!({ "sub": user, "exp": unix_now() + VALID_FOR_S });
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

fn claims(user: &str, exp: u64, rooms: Option<Vec<String>>) -> Claims {
    Claims {
        sub: user.to_owned(),
        exp,
        rooms,
        send: None,
    }
}
