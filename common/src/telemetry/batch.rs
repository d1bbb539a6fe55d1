//! The log writer: lines gather in memory and a thread of their own writes them out in
//! batches, so that logging costs a request a copy under a lock and never a syscall,
//! a wake-up, or a wait on the log's reader.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long lines gather before the writer thread writes them out: a busy pod writes
/// hundreds of lines per syscall and wakes the thread at most this often.
const GATHER: Duration = Duration::from_millis(20);

/// The most bytes that may wait for a stalled reader; lines beyond it are dropped
/// (and counted) rather than grow memory without bound or block the request.
const MAX_WAITING: usize = 32 << 20;

/// What lines are written to: each logging call borrows it.
pub(crate) struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread running; dropping it writes out every line waiting and
/// ends the thread.
pub(crate) struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The most bytes that may wait; lines beyond are dropped.
    max_waiting: usize,
    /// Signalled when lines arrive in an empty buffer, and when the guard drops.
    arrived: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    dropped: u64,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts the thread that writes to `out`. `dropped_note` renders the line that says
/// how many lines were dropped, in the log's format.
pub(crate) fn start<W: Write + Send + 'static>(out: W, dropped_note: fn(u64) -> String) -> (BatchWriter, BatchGuard) {
    start_with(out, dropped_note, MAX_WAITING)
}

fn start_with<W: Write + Send + 'static>(
    mut out: W,
    dropped_note: fn(u64) -> String,
    max_waiting: usize,
) -> (BatchWriter, BatchGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        max_waiting,
        arrived: Condvar::new(),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("quiver-log".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    let (dropped, closing) = {
                        let mut state = shared.lock();
                        while state.lines.is_empty() && state.dropped == 0 && !state.closing {
                            state = shared.arrived.wait(state).unwrap_or_else(|p| p.into_inner());
                        }
                        // Let more lines gather, unless the process is ending.
                        if !state.closing {
                            state = shared
                                .arrived
                                .wait_timeout_while(state, GATHER, |state| !state.closing)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        std::mem::swap(&mut batch, &mut state.lines);
                        (std::mem::take(&mut state.dropped), state.closing)
                    };
                    // A reader that fails (a closed stderr) loses lines; logging goes on.
                    let _ = out.write_all(&batch);
                    if dropped > 0 {
                        let _ = out.write_all(dropped_note(dropped).as_bytes());
                    }
                    let _ = out.flush();
                    batch.clear();
                    if closing {
                        return;
                    }
                }
            })
            .expect("the log writer thread starts")
    };
    let writer = BatchWriter {
        shared: Arc::clone(&shared),
    };
    (
        writer,
        BatchGuard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Write for &BatchWriter {
    /// Queues `bytes` (a whole line: the formatters write each line at once).
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if state.lines.len() + bytes.len() > self.shared.max_waiting {
            state.dropped += 1;
        } else {
            let was_empty = state.lines.is_empty();
            state.lines.extend_from_slice(bytes);
            // The thread sleeps only while the buffer is empty: wake it once a batch.
            if was_empty {
                self.shared.arrived.notify_one();
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A reader that keeps what it is given, after waiting for `go` (a stalled pipe
    /// until the test drops the sender).
    struct Sink {
        go: Mutex<mpsc::Receiver<()>>,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.go.lock().expect("lock").recv();
            self.kept.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> (Sink, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
        let (go, wait) = mpsc::channel();
        let kept = Arc::default();
        let sink = Sink {
            go: Mutex::new(wait),
            kept: Arc::clone(&kept),
        };
        (sink, go, kept)
    }

    fn note(dropped: u64) -> String {
        format!("dropped {dropped}\n")
    }

    #[test]
    fn lines_are_written_out_without_waiting_for_the_guard() {
        let (sink, go, kept) = sink();
        drop(go);
        let (writer, _guard) = start(sink, note);
        (&writer).write_all(b"one line\n").expect("queued");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while kept.lock().expect("lock").is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(kept.lock().expect("lock").as_slice(), b"one line\n");
    }

    #[test]
    fn a_stalled_reader_costs_lines_beyond_the_cap_and_a_line_says_how_many() {
        let (sink, go, kept) = sink();
        let (writer, guard) = start_with(sink, note, 1000);
        for i in 0..100 {
            (&writer)
                .write_all(format!("line {i:03} of a log, some forty bytes\n").as_bytes())
                .expect("never blocks");
        }
        drop(go);
        drop(guard);
        let text = String::from_utf8(kept.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let (note_line, logged) = lines.split_last().expect("lines");
        let dropped: usize = note_line
            .strip_prefix("dropped ")
            .expect("the note comes last")
            .parse()
            .expect("a count");
        assert!(dropped > 0, "{text}");
        assert_eq!(logged.len() + dropped, 100, "{text}");
        // What was kept is whole lines, in order, from the first.
        for (i, line) in logged.iter().enumerate() {
            assert_eq!(*line, format!("line {i:03} of a log, some forty bytes"));
        }
    }
}
