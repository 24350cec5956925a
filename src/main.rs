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

fn main() -> std::process::ExitCode {
    keep_freed_heap();
    let cli = cartat_rules::commands::Cli::parse();
    cartat_rules::commands::main(cli)
}
