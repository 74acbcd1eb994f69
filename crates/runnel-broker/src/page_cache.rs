//! The node's page cache budget for partition data (`--page-cache-bytes`).
//!
//! A broker that appends faster than the kernel reclaims grows the page
//! cache until free memory runs out. On a virtual machine whose memory the
//! host backs lazily (free page reporting, balloons, DAMON reclaim), every
//! page beyond what the guest recently used then costs a host fault: on the
//! benchmark machine a fresh page cost 3x a recycled one, and a node that
//! had written 8 GB spent the CPU it needed for requests on it (produce-to-
//! consume p99 went from ~10 ms to 70-260 ms; benches/RESULTS.md, "Page
//! cache budget"). So the node keeps at most a budget of written data
//! cached: every 100 ms the oldest cached data beyond it is written back
//! and dropped (`Log::drop_cached`), which keeps new writes on recycled
//! pages. The budget is shared by water level: partitions holding less
//! than the level keep all of theirs; the others are cut down to it.

use std::sync::Arc;

use runnel_storage::Log;

/// Most the default budget gives, whatever the memory: 2 GiB.
///
/// A quarter of memory (6 GiB on the benchmark machine) was first chosen;
/// a fresh node then wrote ~4 GB before the budget acted, and by then it
/// had used up the free memory the host still backed: 6 of 7 runs fell
/// behind for 1-2 s at 50% of the produce peak (p99 430-490 ms), none of 9
/// with 2 GiB (p99 2.5-6.1 ms; benches/RESULTS.md, "Memory the kernel
/// takes back"). Consumers at the tail read what the last seconds wrote,
/// far less than 2 GiB; older data is read from disk, as Redpanda, which
/// bypasses the page cache, always does.
pub const DEFAULT_PAGE_CACHE_MAX: u64 = 2 << 30;

/// Default budget: a quarter of the machine's memory, at least 256 MiB and
/// at most [`DEFAULT_PAGE_CACHE_MAX`] (1 GiB when the size is unknown).
pub fn default_page_cache_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => {
            (pages.saturating_mul(page) / 4).clamp(256 << 20, DEFAULT_PAGE_CACHE_MAX)
        }
        _ => 1 << 30,
    }
}

/// The largest level such that cutting every amount down to it fits the
/// budget: `sum(min(cached[i], level)) <= budget`. `u64::MAX` when all fits.
pub(crate) fn water_level(cached: &[u64], budget: u64) -> u64 {
    let total: u64 = cached.iter().sum();
    if total <= budget {
        return u64::MAX;
    }
    let mut sorted = cached.to_vec();
    sorted.sort_unstable();
    let mut left = budget;
    let mut n = sorted.len() as u64;
    for amount in sorted {
        // Everything below the level is kept whole; the rest share `left`.
        let share = left / n;
        if amount > share {
            return share;
        }
        left -= amount;
        n -= 1;
    }
    // Unreachable: the total exceeds the budget, so some amount exceeds its share.
    0
}

/// Cuts the cached data of `logs` down to `budget` bytes in all (the
/// oldest of the largest first). Blocking: waits for the writeback of what
/// it drops. Returns (bytes cached before, bytes dropped).
pub(crate) fn enforce(logs: &[Arc<Log>], budget: u64) -> (u64, u64) {
    let cached: Vec<u64> = logs
        .iter()
        .map(|log| log.cached_bytes().unwrap_or(0))
        .collect();
    let total = cached.iter().sum();
    let level = water_level(&cached, budget);
    if level == u64::MAX {
        return (total, 0);
    }
    let mut dropped = 0;
    for (log, amount) in logs.iter().zip(&cached) {
        if *amount > level {
            match log.drop_cached(level) {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::debug!(dir = %log.dir().display(), error = %e, "dropping cached pages failed")
                }
            }
        }
    }
    (total, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_is_a_quarter_of_memory_within_its_bounds() {
        let d = default_page_cache_bytes();
        assert!((256 << 20..=DEFAULT_PAGE_CACHE_MAX).contains(&d), "{d}");
    }

    #[test]
    fn small_partitions_keep_everything_and_large_ones_share_the_rest() {
        assert_eq!(water_level(&[10, 20], 30), u64::MAX);
        assert_eq!(water_level(&[], 0), u64::MAX);
        assert_eq!(water_level(&[10, 100, 100], 110), 50);
        assert_eq!(water_level(&[10, 100, 30], 100), 60);
        assert_eq!(water_level(&[100, 100], 0), 0);
    }

    proptest! {
        #[test]
        fn the_level_fits_the_budget_and_is_the_highest_that_does(
            cached in proptest::collection::vec(0u64..1 << 40, 0..40),
            budget in 0u64..1 << 42,
        ) {
            let level = water_level(&cached, budget);
            let kept = |level: u64| cached.iter().map(|c| (*c).min(level)).sum::<u64>();
            prop_assert!(kept(level) <= budget);
            if level != u64::MAX {
                // One more byte per partition would break the budget, unless
                // integer division left less than one byte each.
                let over = cached.iter().filter(|c| **c > level).count() as u64;
                prop_assert!(over > 0);
                prop_assert!(kept(level + 1) > budget || budget - kept(level) < over);
            }
        }
    }
}
