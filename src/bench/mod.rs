//! Benchmarks that need more than `cargo bench` offers (a control plane, separate processes).
//! Results and the commands that produced them are in `BENCHMARKS.md`.

pub mod fleet;
