//! Fuzz the typedstream decoder (`message.attributedBody`): never panic, and anything that
//! decodes survives an encode/decode round trip with the same text.
#![no_main]

use capturefleet_fuzz::typedstream::{AttributedBody, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::decode(data);
    if let Ok(body) = AttributedBody::from_typedstream(data) {
        let _ = body.parts();
        let again = AttributedBody::from_typedstream(&body.to_typedstream()).expect("our own encoding decodes");
        assert_eq!(again.text, body.text);
    }
});
