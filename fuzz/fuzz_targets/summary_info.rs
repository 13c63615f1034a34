//! Fuzz the `message_summary_info` decoder: never panic.
#![no_main]

use capturefleet_fuzz::summary_info::SummaryInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = SummaryInfo::decode(data) {
        let _ = info.edits();
        let _ = info.is_unsent();
    }
});
