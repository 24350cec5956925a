//! The `cartat-rules` binary: parse arguments, run the command, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cartat_rules::commands::Cli::parse();
    cartat_rules::commands::main(cli)
}
