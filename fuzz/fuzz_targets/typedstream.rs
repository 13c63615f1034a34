//! Fuzz the typedstream decoder (`message.attributedBody`): never panic; whenever the fast path
//! answers, it agrees with the generic decoder; and anything that decodes survives an
//! encode/decode round trip with the same text.
#![no_main]

use capturefleet_fuzz::typedstream::{AttributedBody, decode, fast};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::decode(data);
    let generic = AttributedBody::from_typedstream_generic(data);
    if let Some((fast_body, fast_parts)) = fast::with_decoded(data, |f| f.map(|f| (f.to_body(), f.parts()))) {
        let body = generic
            .as_ref()
            .expect("the fast path answers only what the generic decoder decodes");
        assert_eq!(&fast_body, body);
        assert_eq!(fast_parts, body.parts());
    }
    if let Ok(body) = generic {
        let _ = body.parts();
        let again = AttributedBody::from_typedstream(&body.to_typedstream()).expect("our own encoding decodes");
        assert_eq!(again.text, body.text);
    }
});
