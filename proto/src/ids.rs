//! Room and user identifiers (1–128 bytes of `[A-Za-z0-9_.:-]`) and channel epochs (1–32 bytes
//! of `[A-Za-z0-9_-]`).

/// Longest accepted room or user id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Longest accepted channel epoch, in bytes.
pub const MAX_EPOCH_LEN: usize = 32;

/// True when `id` is a valid room or user id.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// True when `epoch` is a valid channel epoch: 1–32 bytes of `[A-Za-z0-9_-]`, so it needs no
/// escaping in JSON and fits a `str8` everywhere.
pub fn is_valid_epoch(epoch: &[u8]) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
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

    #[test]
    fn epochs_are_short_and_plain() {
        assert!(is_valid_epoch(b"k3x9"));
        assert!(is_valid_epoch(b"A-z_09"));
        assert!(is_valid_epoch(&[b'e'; MAX_EPOCH_LEN]));
        assert!(!is_valid_epoch(b""));
        assert!(!is_valid_epoch(&[b'e'; MAX_EPOCH_LEN + 1]));
        // The id alphabet's `.` and `:` are not part of it.
        for bad in [&b"k.3"[..], b"k:3", b"k 3", b"k\"3", "kü".as_bytes()] {
            assert!(!is_valid_epoch(bad), "{bad:?}");
        }
    }
}
