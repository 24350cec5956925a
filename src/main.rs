//! The `cartat-rules` binary: parse arguments, run the command, map errors to exit codes.

use clap::Parser;

/// mimalloc instead of glibc's malloc: measured side by side at workload A (README, "the cost
/// of a poll"), glibc spent ~10 % of the daemon's CPU in `malloc`/`free`, most of it
/// consolidating the freed 32 KB reply buffers, and kept an arena per thread. Built without
/// transparent huge pages (`no_thp`): with them each arena's first touch made 2 MB resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cartat_rules::commands::Cli::parse();
    cartat_rules::commands::main(cli)
}
