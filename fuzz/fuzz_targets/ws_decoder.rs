//! Feeds arbitrary bytes to the server-side WebSocket decoder the way a connection does: in
//! chunks, keeping the undecoded tail, until the input ends or the decoder reports an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_proto::ws::{self, Decoder, Message};

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the message limit (small, so the too-big paths are reached)
    // and the read size; the rest is the byte stream from the client.
    let [limit_byte, chunk_byte, stream @ ..] = data else {
        return;
    };
    let max_message = usize::from(*limit_byte) * 16;
    let chunk_len = usize::from(*chunk_byte).max(1);
    let mut decoder = Decoder::new(max_message);
    let mut pending: Vec<u8> = Vec::new();

    for chunk in stream.chunks(chunk_len) {
        pending.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            let available = pending.len() - start;
            match decoder.next(&mut pending[start..]) {
                Ok((consumed, message)) => {
                    assert!(consumed <= available, "consumed more than was given");
                    if let Some(message) = &message {
                        assert!(consumed > 0, "a message without consuming bytes");
                        check_message(message, max_message);
                    }
                    if consumed == 0 {
                        break;
                    }
                    start += consumed;
                }
                Err(error) => {
                    assert!(matches!(error.close_code(), 1002 | 1007 | 1009));
                    // The close frame for it must always be buildable.
                    let _ = ws::close_frame(error.close_code(), error.close_reason());
                    return;
                }
            }
        }
        pending.drain(..start);
    }
});

fn check_message(message: &Message<'_>, max_message: usize) {
    match *message {
        Message::Text(text) => {
            assert!(std::str::from_utf8(text).is_ok(), "text is not UTF-8");
            assert!(text.len() <= max_message, "text over the limit");
        }
        Message::Binary(payload) => assert!(payload.len() <= max_message, "binary over limit"),
        Message::Ping(payload) => {
            assert!(payload.len() <= ws::MAX_CONTROL_PAYLOAD);
            let _ = ws::pong_frame(payload);
        }
        Message::Pong(payload) => assert!(payload.len() <= ws::MAX_CONTROL_PAYLOAD),
        Message::Close(Some((code, _reason))) => assert!(ws::is_valid_close_code(code)),
        Message::Close(None) => {}
    }
}
