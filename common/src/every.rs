//! Background rounds on a shared object for as long as it lives.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `round` on `target` every `period`, the first round `first_after` from now,
/// until `target`'s last owner drops it: the task holds it weakly, so a dropped pod
/// (or a test's store) does not live on in its background work. A round that runs
/// longer than `period` delays the next; missed rounds are not made up.
pub fn every<T, F, Fut>(
    first_after: Duration,
    period: Duration,
    target: Weak<T>,
    round: F,
) -> tokio::task::JoinHandle<()>
where
    T: ?Sized + Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first_after, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(target) = target.upgrade() else { return };
            round(target).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Waits (up to 5 s) until `done` holds.
    async fn until(done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "not within 5 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn rounds_come_again_and_stop_with_their_target() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let task = every(
            Duration::ZERO,
            Duration::from_millis(10),
            Arc::downgrade(&rounds),
            |rounds| async move {
                rounds.fetch_add(1, Ordering::SeqCst);
            },
        );
        until(|| rounds.load(Ordering::SeqCst) >= 3).await;
        drop(rounds);
        until(|| task.is_finished()).await;

        // A first round an hour away has not run.
        let waiting = Arc::new(AtomicUsize::new(0));
        let task = every(
            Duration::from_secs(3600),
            Duration::from_millis(10),
            Arc::downgrade(&waiting),
            |rounds| async move {
                rounds.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
        task.abort();
    }
}
