//! The `cartat-rules` binary: parse arguments, run the command, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = cartat_rules::commands::Cli::parse();
    cartat_rules::commands::main(cli)
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and each keeps
/// what it freed: the runtime's workers, the store's writer and the blocking pool would hold
/// a few MB each. Two arenas are plenty for a daemon whose threads mostly wait.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
