//! Process-wide memory settings of the agent.
//!
//! glibc's allocator gives each thread that allocates concurrently its own arena (up to eight
//! per core), and an arena keeps the memory freed into it for reuse. The agent's threads (the
//! capture loop, the delivery tasks, the SQLite readers and the threads that copy and fsync
//! attachment files) each touch a few megabytes at their peak, so with one arena per thread
//! the resident size settles at the sum of the peaks: about 23 MB above the live heap in a
//! 200,000-message backfill (BENCHMARKS.md). One arena serves them all at no measurable cost:
//! the agent's threads mostly wait on fsync, not on the allocator.

/// Limit the allocator to one arena. Call before the runtime starts its threads (arenas that
/// already exist are kept). A no-op where the allocator is not glibc's, and when the
/// environment already tunes it (`MALLOC_ARENA_MAX`, `GLIBC_TUNABLES`): an explicit choice wins.
pub fn limit_allocator_arenas() {
    if ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tunables; it is called before the agent
        // starts its threads, and glibc serialises it with allocation anyway.
        let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if accepted != 1 {
            tracing::debug!("the allocator did not accept M_ARENA_MAX");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn limiting_the_arenas_leaves_allocation_working() {
        super::limit_allocator_arenas();
        let handles: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || vec![i as u8; 1 << 20].iter().map(|&b| b as u64).sum::<u64>()))
            .collect();
        let sums: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(sums, vec![0, 1 << 20, 2 << 20, 3 << 20]);
    }
}
