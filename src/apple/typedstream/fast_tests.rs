//! The fast path against the generic decoder: whenever the fast path answers, its answer is
//! the generic decoder's; and the real layouts do take the fast path.

use super::attributed::{AttrValue, AttributedBody, Part, Run, parts_from_typedstream};
use super::{FILE_TRANSFER_ATTRIBUTE, PART_ATTRIBUTE, fast, fixture};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Checks one input: the fast path, when it answers, agrees with the generic decoder on the
/// body and on the parts. Returns whether it answered.
fn agrees(bytes: &[u8]) -> bool {
    let generic = AttributedBody::from_typedstream_generic(bytes);
    let Some((body, parts)) = fast::with_decoded(bytes, |f| f.map(|f| (f.to_body(), f.parts()))) else {
        assert_eq!(AttributedBody::from_typedstream(bytes), generic);
        return false;
    };
    let generic = generic.unwrap_or_else(|e| panic!("fast path answered where the generic decoder failed: {e}"));
    assert_eq!(body, generic);
    assert_eq!(parts, generic.parts());
    assert_eq!(parts_from_typedstream(bytes).as_ref(), Ok(&generic.parts()));
    true
}

fn samples() -> Vec<Vec<u8>> {
    let guid = "at_0_0A1B2C3D-0000-4000-8000-000000000001";
    let mut out = vec![
        fixture("AttributedBodyTextOnly"),
        fixture("MultiPart"),
        super::tests::FESKER.to_vec(),
    ];
    for body in [
        AttributedBody::plain("hi"),
        AttributedBody::plain(""),
        AttributedBody::plain(&"é".repeat(300)),
        AttributedBody {
            text: "\u{FFFC}caption 😀\u{FFFC}".into(),
            runs: vec![Run::attachment(0, guid), Run::part(10, 1), Run::attachment(2, "at_2_X")],
            mutable: true,
        },
        AttributedBody {
            text: "edit".into(),
            runs: vec![Run::part(4, 3)],
            mutable: false,
        },
        AttributedBody {
            text: "a😀b".into(),
            runs: vec![
                Run {
                    len_utf16: 2,
                    attributes: vec![(
                        PART_ATTRIBUTE.into(),
                        AttrValue::Int {
                            objc_type: 'q',
                            value: -4,
                        },
                    )],
                },
                Run {
                    len_utf16: 1,
                    attributes: vec![
                        (PART_ATTRIBUTE.into(), AttrValue::Str("7".into())),
                        (
                            FILE_TRANSFER_ATTRIBUTE.into(),
                            AttrValue::Int {
                                objc_type: 'i',
                                value: 1,
                            },
                        ),
                        (PART_ATTRIBUTE.into(), AttrValue::Str("8".into())),
                    ],
                },
                Run::part(9, 2),
            ],
            mutable: true,
        },
    ] {
        out.push(body.to_typedstream());
    }
    out
}

#[test]
fn real_layouts_take_the_fast_path_and_agree() {
    for (i, bytes) in samples().iter().enumerate() {
        assert!(agrees(bytes), "sample {i} should take the fast path");
    }
}

#[test]
fn nil_values_are_read_and_anything_else_falls_back() {
    // The encoder writes nil for a value it cannot encode: the fast path reads that.
    let body = AttributedBody {
        text: "x".into(),
        runs: vec![Run {
            len_utf16: 1,
            attributes: vec![("k".into(), AttrValue::Other("NSURL".into()))],
        }],
        mutable: true,
    };
    assert!(agrees(&body.to_typedstream()));
    // A class it does not know (here a number's class renamed): the generic decoder's.
    let blob = AttributedBody::plain("x").to_typedstream();
    let at = blob.windows(8).position(|w| w == b"NSNumber").expect("a number");
    let mut renamed = blob.clone();
    renamed[at + 7] = b'R';
    assert!(!agrees(&renamed));
    assert!(AttributedBody::from_typedstream(&renamed).is_ok());
    // Trailing bytes: the generic decoder's to judge.
    let mut trailing = blob;
    trailing.push(0x92);
    assert!(!agrees(&trailing));
}

#[test]
fn mutated_blobs_agree_or_fall_back() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let samples = samples();
    let mut answered = 0;
    for round in 0..40_000 {
        let mut bytes = samples[round % samples.len()].clone();
        for _ in 0..1 + rng.below(3) {
            if bytes.is_empty() {
                break;
            }
            let i = rng.below(bytes.len());
            match rng.below(6) {
                0 => bytes[i] ^= 1 << rng.below(8),
                1 => bytes[i] = rng.next() as u8,
                2 => bytes[i] = [0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x92, 0x93, 0x98, 0x00][rng.below(10)],
                3 => bytes.truncate(i),
                4 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, rng.next() as u8),
            }
        }
        if agrees(&bytes) {
            answered += 1;
        }
    }
    assert!(
        answered > 1_000,
        "mutations that keep the layout still take the fast path ({answered})"
    );
}

#[test]
fn cut_blobs_agree_or_fall_back() {
    for bytes in samples() {
        for cut in 0..bytes.len() {
            agrees(&bytes[..cut]);
        }
    }
}

/// The parts algorithm as first written (a table of UTF-16 positions), kept as the oracle
/// for the one-pass version.
fn parts_reference(body: &AttributedBody) -> Vec<Part> {
    let mut bounds: Vec<Option<usize>> = Vec::new();
    for (byte, ch) in body.text.char_indices() {
        bounds.push(Some(byte));
        if ch.len_utf16() == 2 {
            bounds.push(None);
        }
    }
    bounds.push(Some(body.text.len()));
    let total16 = bounds.len() - 1;
    let byte_at = |u16pos: usize| -> usize {
        let p = u16pos.min(total16);
        bounds[p..].iter().flatten().next().copied().unwrap_or(body.text.len())
    };
    let mut parts: Vec<Part> = Vec::new();
    let mut pos16 = 0usize;
    for run in &body.runs {
        let start = byte_at(pos16);
        pos16 = pos16.saturating_add(run.len_utf16);
        let end = byte_at(pos16);
        let text = &body.text[start..end.max(start)];
        let index = run.part_index().or_else(|| parts.last().map(|p| p.index)).unwrap_or(0);
        match parts.last_mut() {
            Some(last) if last.index == index => {
                last.text.push_str(text);
                if last.attachment_guid.is_none() {
                    last.attachment_guid = run.file_transfer_guid().map(str::to_owned);
                }
            }
            _ => parts.push(Part {
                index,
                text: text.to_owned(),
                attachment_guid: run.file_transfer_guid().map(str::to_owned),
            }),
        }
    }
    let covered = byte_at(pos16);
    if covered < body.text.len() {
        let rest = &body.text[covered..];
        match parts.last_mut() {
            Some(last) => last.text.push_str(rest),
            None => parts.push(Part {
                index: 0,
                text: rest.to_owned(),
                attachment_guid: None,
            }),
        }
    }
    parts
}

#[test]
fn one_pass_parts_match_the_reference() {
    let mut rng = Rng(42);
    let pieces = ["a", "é", "東", "😀", "\u{FFFC}", " ", "👋🏽"];
    for _ in 0..20_000 {
        let text: String = (0..rng.below(12)).map(|_| pieces[rng.below(pieces.len())]).collect();
        let runs = (0..rng.below(6))
            .map(|_| {
                let len = match rng.below(8) {
                    0 => usize::MAX - rng.below(3),
                    1 => 0,
                    _ => rng.below(6),
                };
                let mut run = match rng.below(4) {
                    0 => Run::attachment(rng.below(3) as u32, "G"),
                    1 => Run::default(),
                    _ => Run::part(0, rng.below(3) as u32),
                };
                run.len_utf16 = len;
                run
            })
            .collect();
        let body = AttributedBody {
            text,
            runs,
            mutable: true,
        };
        assert_eq!(body.parts(), parts_reference(&body), "{body:?}");
    }
}
