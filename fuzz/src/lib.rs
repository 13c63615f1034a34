//! The decoders under fuzzing, compiled straight from the main crate's `src/apple` sources (so
//! the fuzz build does not drag in the whole agent and operator). They refer to each other
//! through `super::`, which here is this crate's root.

#[path = "../../src/apple/epoch.rs"]
pub mod epoch;
#[path = "../../src/apple/summary_info.rs"]
pub mod summary_info;
#[path = "../../src/apple/typedstream/mod.rs"]
pub mod typedstream;
