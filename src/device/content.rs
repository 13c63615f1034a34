//! Deterministic message content: words, sentences (some non-ASCII), names, GUIDs.

use rand::Rng;
use rand::rngs::StdRng;

const WORDS: &[&str] = &[
    "the",
    "portfolio",
    "meeting",
    "tomorrow",
    "call",
    "rates",
    "bond",
    "yield",
    "client",
    "review",
    "please",
    "confirm",
    "trade",
    "settled",
    "thanks",
    "quarter",
    "report",
    "budget",
    "lunch",
    "at",
    "noon",
    "can",
    "we",
    "move",
    "it",
    "to",
    "Friday",
    "sounds",
    "good",
    "see",
    "you",
    "then",
    "market",
    "opened",
    "higher",
    "fund",
    "allocation",
    "rebalance",
    "numbers",
    "look",
    "fine",
    "I'll",
    "send",
    "the",
    "docs",
    "tonight",
    "ok",
];
const EXTRAS: &[&str] = &[
    "café", "Grüße", "東京", "👍", "🎉", "naïve", "—", "€100", "😀", "Zürich",
];
const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloé", "Dev", "Eun-ji", "Farid", "Greta", "Hiro", "Ines", "Jamal",
];
const GROUP_NAMES: &[&str] = &[
    "Desk",
    "Deal team",
    "Q3 review",
    "Family office",
    "Ops 🚀",
    "Lunch crew",
];

/// A sentence of 2–14 words; one in five carries a non-ASCII word or emoji.
pub fn sentence(rng: &mut StdRng) -> String {
    let n = rng.random_range(2..=14);
    let mut words: Vec<&str> = (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
    if rng.random_ratio(1, 5) {
        let at = rng.random_range(0..=words.len());
        words.insert(at, EXTRAS[rng.random_range(0..EXTRAS.len())]);
    }
    let mut s = words.join(" ");
    if let Some(first) = s.get(..1) {
        let upper = first.to_uppercase();
        s.replace_range(..1, &upper);
    }
    s
}

/// A group chat name.
pub fn group_name(rng: &mut StdRng) -> String {
    format!(
        "{} {}",
        GROUP_NAMES[rng.random_range(0..GROUP_NAMES.len())],
        FIRST[rng.random_range(0..FIRST.len())]
    )
}

/// An upper-case UUID-shaped GUID.
pub fn guid(rng: &mut StdRng) -> String {
    let a: u32 = rng.random();
    let b: u16 = rng.random();
    let c: u16 = rng.random::<u16>() & 0x0fff;
    let d: u16 = (rng.random::<u16>() & 0x3fff) | 0x8000;
    let e: u64 = rng.random::<u64>() & 0xffff_ffff_ffff;
    format!("{a:08X}-{b:04X}-4{c:03X}-{d:04X}-{e:012X}")
}
