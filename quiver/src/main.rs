//! `quiver`: one binary for every way to run Quiver. See `quiver --help`.

use clap::Parser;

mod cli;
mod keys;
mod serve;

/// How long an exit waits for blocking tasks still running once everything else stopped.
const SHUTDOWN_BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let outcome = {
        let _log = quiver_common::telemetry::init(cli.log_format);
        let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
        let outcome = runtime.block_on(cli.run());
        // The runtime's threads stop first, then the guard writes out the last lines,
        // so that they all come before an error below. Blocking tasks still running (a
        // graph being rebuilt aside, an index loading) are left to the exit, not
        // waited for: what they make is rebuilt from the store on the next start. After
        // a second signal nothing is waited for.
        if outcome.as_ref().is_err_and(|err| err.is::<serve::Interrupted>()) {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(SHUTDOWN_BLOCKING_GRACE);
        }
        outcome
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if err.is::<serve::Interrupted>() => std::process::ExitCode::from(130),
        Err(err) => {
            // One line that says what to fix; the cause chain is folded into it.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
