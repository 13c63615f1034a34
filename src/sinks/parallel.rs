//! Running blocking file operations (copy, fsync, rename) concurrently. Each file still gets
//! its own fsync, but concurrent fsyncs are committed together by the filesystem (one journal
//! commit instead of one per file), so writing many small attachment files durably is bound
//! by one flush per batch rather than one per file. Used by the filesystem sink and the
//! agent's spool.

/// How many files are copied and fsync'd concurrently.
pub const PARALLEL_FSYNCS: usize = 16;

/// Apply `f` to every item on up to [`PARALLEL_FSYNCS`] scoped threads, keeping the order.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let threads = items.len().min(PARALLEL_FSYNCS);
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                scope.spawn(move || part.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("blob worker does not panic"))
            .collect()
    })
}
