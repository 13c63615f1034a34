//! Apple's formats, both directions: chat.db schema, typedstream, `message_summary_info`
//! plists, the Apple epoch. Depends on nothing else of this crate.

pub mod inspect;
