//! Apple's formats, both directions: chat.db schema, typedstream, `message_summary_info`
//! plists, the Apple epoch, and the codes Messages stores (reactions, group actions).
//! The reader (`agent::source`) and the simulator (`device`) both stand on these, so each
//! format fact is written once. Depends on nothing else of this crate.

pub mod codes;
pub mod epoch;
pub mod inspect;
pub mod schema;
pub mod summary_info;
pub mod typedstream;
