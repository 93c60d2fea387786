//! Fuzzes the control ↔ edge link decoder (`proto::link::decode`).
//!
//! Properties checked on every input, besides "never panics":
//! - every frame that decodes re-encodes to exactly the bytes it was decoded from (the encoding
//!   is canonical, and `encode` accepts everything `decode` produces);
//! - feeding the input one byte at a time yields the same frames and the same error as decoding
//!   it all at once (incremental decoding does not depend on how reads split the stream).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roomcast_proto::link::{self, LinkError, LinkFrame};

/// Decodes frames until the input runs out or an error breaks the link.
fn whole(data: &[u8]) -> (Vec<LinkFrame>, Option<LinkError>) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        match link::decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                let mut again = BytesMut::new();
                link::encode(&frame, &mut again).expect("a decoded frame must re-encode");
                assert_eq!(&again[..], &before[..used], "encoding is not canonical");
                frames.push(frame);
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// The same stream, delivered one byte per read.
fn trickled(data: &[u8]) -> (Vec<LinkFrame>, Option<LinkError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match link::decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let all_at_once = whole(data);
    assert_eq!(trickled(data), all_at_once, "incremental decode disagrees");
});
