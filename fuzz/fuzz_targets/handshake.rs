//! Feeds arbitrary bytes to the upgrade parser (server side) and the response parser (client
//! side); every outcome must be answerable without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_proto::handshake::{self, MAX_REQUEST_HEAD};

/// The example key of RFC 6455 §1.3.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    match handshake::parse_upgrade(data) {
        Ok(Some((upgrade, head_len))) => {
            assert!(head_len <= data.len() && head_len <= MAX_REQUEST_HEAD);
            let response = handshake::accept_response(&upgrade);
            assert!(response.starts_with(b"HTTP/1.1 101 "));
        }
        Ok(None) => assert!(data.len() < MAX_REQUEST_HEAD, "waiting past the head limit"),
        Err(error) => {
            let status = error.status();
            assert!(matches!(status, 400 | 404 | 405 | 426 | 431));
            let _ = handshake::error_response(status);
        }
    }
    if let Ok(Some(head_len)) = handshake::parse_client_response(data, KEY) {
        assert!(head_len <= data.len() && head_len <= MAX_REQUEST_HEAD);
    }
});
