//! Room and user identifiers: 1–128 bytes of `[A-Za-z0-9_.:-]`.

/// Longest accepted room or user id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// True when `id` is a valid room or user id.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(is_valid_id(b"r1"));
        assert!(is_valid_id(b"room:10000"));
        assert!(is_valid_id(b"A-z_0.9:x"));
        assert!(is_valid_id(&[b'a'; MAX_ID_LEN]));
    }

    #[test]
    fn rejects_empty_long_and_foreign_bytes() {
        assert!(!is_valid_id(b""));
        assert!(!is_valid_id(&[b'a'; MAX_ID_LEN + 1]));
        assert!(!is_valid_id(b"r 1"));
        assert!(!is_valid_id(b"r/1"));
        assert!(!is_valid_id("rü".as_bytes()));
        assert!(!is_valid_id(b"*"));
    }
}
