//! A helper for the crash test: writes batches of records to a store as fast as it
//! can and prints `ack <batch> <seq>` only after each write has committed. The test
//! kills it with SIGKILL mid-stream and checks that every acknowledged batch is there.
//!
//! Usage: crash_writer <database-url> <project-id>

use std::io::Write as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(project)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: crash_writer <database-url> <project-id>");
    };
    let project = project.parse()?;
    let store = quiver_store::connect(&url).await?;
    let mut stdout = std::io::stdout().lock();
    for batch in 0.. {
        let records = quiver_tests::crash::batch(batch);
        let outcome = store.upsert(project, quiver_tests::crash::NAMESPACE, &records).await?;
        writeln!(stdout, "ack {batch} {}", outcome.state.seq)?;
        stdout.flush()?;
    }
    Ok(())
}
