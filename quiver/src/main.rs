//! `quiver`: one binary for every way to run Quiver. See `quiver --help`.

use clap::Parser;

mod cli;
mod keys;
mod serve;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let outcome = {
        let _log = quiver_common::telemetry::init(cli.log_format);
        let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
        let outcome = runtime.block_on(cli.run());
        // The runtime's threads stop first, then the guard writes out the last lines,
        // so that they all come before an error below.
        drop(runtime);
        outcome
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line that says what to fix; the cause chain is folded into it.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
