//! The `cartat-rules` binary: parse arguments, run the command, map errors to exit codes.

use clap::Parser;

/// mimalloc instead of glibc's malloc: measured side by side at workload A (README, "the cost
/// of a poll"), glibc spent ~10 % of the daemon's CPU in `malloc`/`free`, most of it
/// consolidating the freed 32 KB reply buffers, and kept an arena per thread. Built without
/// transparent huge pages (`no_thp`): with them each arena's first touch made 2 MB resident.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SQLite allocates with the C library's `malloc` (mimalloc serves Rust's allocations only), and
/// every statement that builds a temporary table gives SQLite a page cache of its own, about
/// 85 KB, freed at the statement's end. glibc then returned the top of its heap to the kernel
/// (`brk`) and took it back on the next statement, twenty page faults each time: profiled at
/// workload A, a fifth of the daemon's CPU. Keeping up to 16 MB of freed heap ends that.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_heap() {
    // SAFETY: mallopt only sets glibc's allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_heap() {}

/// mimalloc's options (`mi_option_e` in its `mimalloc.h`; the numbers are the same in its v2
/// and v3). The Rust crate leaves them out on purpose and says to pass the numbers.
#[cfg(feature = "mimalloc")]
mod mi {
    use std::ffi::{c_int, c_long};

    /// `mi_option_purge_delay`: how long freed memory waits before it goes back to the OS.
    pub const PURGE_DELAY: c_int = 15;

    unsafe extern "C" {
        pub fn mi_option_set(option: c_int, value: c_long);
        #[cfg(test)]
        pub fn mi_option_get(option: c_int) -> c_long;
    }
}

/// Freed memory goes back to the OS at once instead of a second later (mimalloc's default):
/// at workload A the daemon frees a reply's buffers every poll, and the second's worth of
/// them kept resident was ≈ 1 MB of its peak; measured in alternating 30 s runs, no CPU cost
/// showed (README, "the cost of a poll").
#[cfg(feature = "mimalloc")]
fn purge_freed_memory_at_once() {
    // SAFETY: sets one of mimalloc's options, before any other thread exists.
    unsafe { mi::mi_option_set(mi::PURGE_DELAY, 0) }
}

#[cfg(not(feature = "mimalloc"))]
fn purge_freed_memory_at_once() {}

fn main() -> std::process::ExitCode {
    keep_freed_heap();
    purge_freed_memory_at_once();
    let cli = cartat_rules::commands::Cli::parse();
    cartat_rules::commands::main(cli)
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_the_option_set() {
        // SAFETY: reads and sets mimalloc's options; no other test touches them.
        let (before, after) = unsafe {
            let before = mi::mi_option_get(mi::PURGE_DELAY);
            purge_freed_memory_at_once();
            (before, mi::mi_option_get(mi::PURGE_DELAY))
        };
        // mimalloc's default purge delay (v3: 1000 ms, v2: 10 ms): the number is that option.
        assert!(before == 1000 || before == 10, "{before}");
        assert_eq!(after, 0);
    }
}
