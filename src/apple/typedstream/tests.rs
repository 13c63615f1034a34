use super::*;

/// An `NSAttributedString` (not mutable) from a public question about typedstream files, text
/// "Fesker": another real blob shape (NSString directly, not NSMutableString).
pub(super) const FESKER: &[u8] = &[
    0x04, 0x0B, 0x73, 0x74, 0x72, 0x65, 0x61, 0x6D, 0x74, 0x79, 0x70, 0x65, 0x64, 0x81, 0xE8, 0x03, 0x84, 0x01, 0x40,
    0x84, 0x84, 0x84, 0x12, 0x4E, 0x53, 0x41, 0x74, 0x74, 0x72, 0x69, 0x62, 0x75, 0x74, 0x65, 0x64, 0x53, 0x74, 0x72,
    0x69, 0x6E, 0x67, 0x00, 0x84, 0x84, 0x08, 0x4E, 0x53, 0x4F, 0x62, 0x6A, 0x65, 0x63, 0x74, 0x00, 0x85, 0x92, 0x84,
    0x84, 0x84, 0x08, 0x4E, 0x53, 0x53, 0x74, 0x72, 0x69, 0x6E, 0x67, 0x01, 0x94, 0x84, 0x01, 0x2B, 0x06, 0x46, 0x65,
    0x73, 0x6B, 0x65, 0x72, 0x86, 0x84, 0x02, 0x69, 0x49, 0x01, 0x06, 0x92, 0x84, 0x84, 0x84, 0x0C, 0x4E, 0x53, 0x44,
    0x69, 0x63, 0x74, 0x69, 0x6F, 0x6E, 0x61, 0x72, 0x79, 0x00, 0x94, 0x84, 0x01, 0x69, 0x01, 0x92, 0x84, 0x96, 0x96,
    0x1D, 0x5F, 0x5F, 0x6B, 0x49, 0x4D, 0x4D, 0x65, 0x73, 0x73, 0x61, 0x67, 0x65, 0x50, 0x61, 0x72, 0x74, 0x41, 0x74,
    0x74, 0x72, 0x69, 0x62, 0x75, 0x74, 0x65, 0x4E, 0x61, 0x6D, 0x65, 0x86, 0x92, 0x84, 0x84, 0x84, 0x08, 0x4E, 0x53,
    0x4E, 0x75, 0x6D, 0x62, 0x65, 0x72, 0x00, 0x84, 0x84, 0x07, 0x4E, 0x53, 0x56, 0x61, 0x6C, 0x75, 0x65, 0x00, 0x94,
    0x84, 0x01, 0x2A, 0x84, 0x99, 0x99, 0x00, 0x86, 0x86, 0x86,
];

#[test]
fn text_only_fixture_decodes() {
    let body = AttributedBody::from_typedstream(&fixture("AttributedBodyTextOnly")).unwrap();
    assert_eq!(body.text, "Noter test");
    assert!(body.mutable);
    assert_eq!(body.runs.len(), 1);
    assert_eq!(body.runs[0].len_utf16, 10);
    assert_eq!(body.runs[0].part_index(), Some(0));
    let parts = body.parts();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].text, "Noter test");
}

#[test]
fn multipart_fixture_decodes_with_attachments() {
    let body = AttributedBody::from_typedstream(&fixture("MultiPart")).unwrap();
    assert_eq!(body.text, "\u{FFFC}test 1\u{FFFC}test 2 \u{FFFC}test 3");
    let parts = body.parts();
    let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(
        texts,
        ["\u{FFFC}", "test 1", "\u{FFFC}", "test 2 ", "\u{FFFC}", "test 3"]
    );
    let indexes: Vec<u32> = parts.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
    let attachments: Vec<_> = parts.iter().filter_map(|p| p.attachment_guid.as_deref()).collect();
    assert_eq!(
        attachments,
        [
            "at_0_F0668F79-20C2-49C9-A87F-1B007ABB0CED",
            "at_2_F0668F79-20C2-49C9-A87F-1B007ABB0CED",
            "at_4_F0668F79-20C2-49C9-A87F-1B007ABB0CED"
        ]
    );
}

#[test]
fn immutable_attributed_string_decodes() {
    let body = AttributedBody::from_typedstream(FESKER).unwrap();
    assert_eq!(body.text, "Fesker");
    assert!(!body.mutable);
}

#[test]
fn encoder_reproduces_real_blobs_byte_for_byte() {
    let raw = fixture("AttributedBodyTextOnly");
    let body = AttributedBody::from_typedstream(&raw).unwrap();
    assert_eq!(body.to_typedstream(), raw);
    let body = AttributedBody::from_typedstream(FESKER).unwrap();
    assert_eq!(body.to_typedstream(), FESKER);
}

#[test]
fn encoder_matches_multipart_up_to_object_identity() {
    // Messages shares dictionary keys by object identity, and in this blob one dictionary holds
    // a second instance of the part key (written anew, where we write a back-reference). The
    // content is identical; ours is shorter by that string object (NEW, class, type, length,
    // 29 bytes, END) minus the one-byte reference.
    let raw = fixture("MultiPart");
    let body = AttributedBody::from_typedstream(&raw).unwrap();
    let ours = body.to_typedstream();
    assert_eq!(AttributedBody::from_typedstream(&ours).unwrap(), body);
    assert_eq!(raw.len() - ours.len(), 5 + "__kIMMessagePartAttributeName".len() - 1);
}

fn round_trip(body: &AttributedBody) -> AttributedBody {
    let bytes = body.to_typedstream();
    AttributedBody::from_typedstream(&bytes).unwrap_or_else(|e| panic!("{e} for {body:?}"))
}

#[test]
fn round_trips_plain_non_ascii_and_long_text() {
    for text in [
        "",
        "hi",
        "Grüße, 東京 — 👋🏽 done",
        &"x".repeat(127),
        &"y".repeat(128),
        &"é".repeat(300),
        &"long ".repeat(20_000),
    ] {
        let body = AttributedBody::plain(text);
        let back = round_trip(&body);
        assert_eq!(back, body);
        assert_eq!(back.parts().len(), 1);
        assert_eq!(back.parts()[0].text, text);
    }
}

#[test]
fn round_trips_multi_part_with_attachments() {
    let guid = "at_0_0A1B2C3D-0000-4000-8000-000000000001";
    let body = AttributedBody {
        text: "\u{FFFC}caption 😀\u{FFFC}".into(),
        runs: vec![Run::attachment(0, guid), Run::part(10, 1), Run::attachment(2, "at_2_X")],
        mutable: true,
    };
    let back = round_trip(&body);
    assert_eq!(back, body);
    let parts = back.parts();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1].text, "caption 😀");
    assert_eq!(parts[0].attachment_guid.as_deref(), Some(guid));
    assert_eq!(parts[2].attachment_guid.as_deref(), Some("at_2_X"));
}

#[test]
fn many_runs_need_wide_references() {
    // More than 238 distinct objects forces two-byte reference numbers.
    let mut text = String::new();
    let mut runs = Vec::new();
    for i in 0..400u32 {
        let piece = format!("p{i} ");
        runs.push(Run::part(piece.len(), i));
        text.push_str(&piece);
    }
    let body = AttributedBody {
        text,
        runs,
        mutable: true,
    };
    let back = round_trip(&body);
    assert_eq!(back.parts().len(), 400);
    assert_eq!(back.parts()[399].text, "p399 ");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let raw = fixture("MultiPart");
    for cut in 0..raw.len() {
        let _ = AttributedBody::from_typedstream(&raw[..cut]);
    }
    assert!(AttributedBody::from_typedstream(b"").is_err());
    assert!(AttributedBody::from_typedstream(b"bplist00").is_err());
    let mut flipped = raw.clone();
    for i in 0..flipped.len() {
        flipped[i] ^= 0xff;
        let _ = AttributedBody::from_typedstream(&flipped);
        flipped[i] ^= 0xff;
    }
}

#[test]
fn a_stream_without_text_says_so() {
    // A stream holding only an NSNumber.
    let mut w = encode::Writer::new();
    w.shared(b"i");
    w.int(5);
    let err = AttributedBody::from_typedstream(&w.finish()).unwrap_err();
    assert_eq!(err, DecodeError::NoText);
}

#[test]
fn integer_encoding_boundaries() {
    for v in [
        0i64,
        1,
        -1,
        -110,
        -111,
        127,
        128,
        -129,
        32767,
        32768,
        -32769,
        i32::MAX as i64,
        1 << 40,
    ] {
        let mut w = encode::Writer::new();
        w.shared(b"q");
        w.int(v);
        let decoded = decode::decode(&w.finish()).unwrap();
        assert_eq!(decoded.top_level, vec![Value::Int(v)], "{v}");
    }
}

/// Inputs the fuzzer found (see `scripts/fuzz`): each must decode or fail cleanly, and what
/// decodes must survive our own encoder.
#[test]
fn fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/apple/typedstream/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        n += 1;
        if let Ok(body) = AttributedBody::from_typedstream(&bytes) {
            let again = AttributedBody::from_typedstream(&body.to_typedstream()).expect("our encoding decodes");
            assert_eq!(again.text, body.text);
        }
    }
    assert!(n > 0);
}
