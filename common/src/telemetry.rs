use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

mod batch;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format \"{other}\": expected pretty or json")),
        }
    }
}

/// Keeps the log writer's thread running; dropping it writes out what is queued.
/// Hold it until the process exits.
#[must_use = "logs queued when the guard drops are written out; drop it only at exit"]
pub struct LogGuard {
    _writer: batch::BatchGuard,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides the default
/// filter.
/// Panics are logged too ([`log_panics`]).
pub fn init(format: LogFormat) -> LogGuard {
    let guard = init_with(format, std::io::stderr(), std::io::stderr().is_terminal());
    log_panics();
    guard
}

/// Installs the global subscriber, writing to `writer` (ANSI colours in the pretty
/// format when `ansi`).
///
/// Lines are formatted on the thread that logs, appended to a buffer in memory, and
/// written out by a thread of their own every 20 ms, so a request never waits on the
/// log's reader (a container runtime's pipe, a collector that falls behind) and a busy
/// pod writes hundreds of lines per syscall. If the reader stalls until 32 MiB wait,
/// further lines are dropped rather than block requests, and a line says how many.
pub fn init_with<W: std::io::Write + Send + 'static>(format: LogFormat, writer: W, ansi: bool) -> LogGuard {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (subscriber, guard) = subscriber(format, writer, ansi);
    // `try_init` also forwards the `log` crate's records (dependencies that log
    // through it); it fails if a subscriber is set already: tests that build
    // several apps in one process keep the first.
    if subscriber.try_init().is_ok()
        && let Some(Err(err)) = std::env::var("RUST_LOG").ok().map(EnvFilter::try_new)
    {
        tracing::warn!(error = %err, "RUST_LOG is not a valid filter; logging with the default one");
    }
    guard
}

/// Panics go to the log, as a line of its format with the request's span, instead of
/// to stderr as plain text past it. (Not for tests, whose harness shows a failing
/// test's panic as it comes.)
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|at| format!("{}:{}", at.file(), at.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not a string)".to_owned());
        let thread = std::thread::current();
        tracing::error!(
            panic = %message,
            location,
            thread = thread.name().unwrap_or("unnamed"),
            backtrace = %std::backtrace::Backtrace::capture(),
            "panicked"
        );
    }));
}

/// The subscriber [`init_with`] installs, and the guard of its writer's thread.
fn subscriber<W: std::io::Write + Send + 'static>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> (Box<dyn tracing::Subscriber + Send + Sync>, LogGuard) {
    let dropped_note = match format {
        LogFormat::Pretty => pretty_dropped_note as fn(u64) -> String,
        LogFormat::Json => json_dropped_note,
    };
    let (writer, guard) = batch::start(writer, dropped_note);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match format {
        LogFormat::Pretty => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(ansi)
                .with_target(false)
                .finish(),
        ),
        // json-subscriber writes the same object as tracing-subscriber's JSON format in
        // about half the time (a request's span and line, 2026-11-29: 2.0–2.8 µs against
        // 3.8–4.8 µs on an idle machine, 3.8–4.2 against 7.3–8.8 beside a build): it
        // keeps each span's fields as JSON text and splices it into every line, where
        // tracing-subscriber parses that text back into a map for each line and again
        // for each field recorded later.
        LogFormat::Json => {
            let mut layer = json_subscriber::JsonLayer::new(writer);
            layer
                .with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime)
                .with_level("level")
                .with_flattened_event()
                // The request span once, as `span`: not again in a `spans` list, which
                // would repeat it (there are no nested spans) in every line.
                .with_current_span("span");
            // A record from the `log` crate comes as an event of the bridge's target
            // ("log"): name the target the record itself gives, as tracing-subscriber does.
            layer.add_dynamic_field("target", |event, _| {
                use tracing_log::NormalizeEvent as _;
                let target = event.normalized_metadata().map(|meta| meta.target().to_owned());
                Some(target.unwrap_or_else(|| event.metadata().target().to_owned()))
            });
            use tracing_subscriber::layer::SubscriberExt as _;
            Box::new(tracing_subscriber::registry().with(layer).with(filter))
        }
    };
    (subscriber, LogGuard { _writer: guard })
}

fn pretty_dropped_note(dropped: u64) -> String {
    format!("WARN {dropped} log lines were dropped: the log's reader fell behind\n")
}

fn json_dropped_note(dropped: u64) -> String {
    let line = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": "WARN",
        "message": "log lines were dropped: the log's reader fell behind",
        "dropped": dropped,
        "target": module_path!(),
    });
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;

    /// A log reader that reads nothing until told to, like a stalled pipe.
    struct Stalled {
        go: mpsc::Receiver<()>,
        lines: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            // Blocks, as a full pipe would, until the test lets the reader go (drops `go`).
            let _ = self.go.recv();
            self.lines.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logging_does_not_wait_for_a_stalled_reader_and_loses_nothing_it_queued() {
        let (go, wait) = mpsc::channel();
        let lines = std::sync::Arc::default();
        let writer = Stalled {
            go: wait,
            lines: std::sync::Arc::clone(&lines),
        };
        let (subscriber, guard) = subscriber(LogFormat::Json, writer, false);
        // Log from another thread: if a line waited on the reader, it would never end.
        let (done, finished) = mpsc::channel();
        let logger = std::thread::spawn(move || {
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("request", path = "/v1/vectors/search");
                let _entered = span.enter();
                for i in 0..100 {
                    tracing::info!(status = 200, i, "request finished");
                }
            });
            done.send(()).expect("the test waits");
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("logging returned while the reader was stalled");
        logger.join().expect("the logger ends");
        // Let the reader go; dropping the guard writes out everything queued.
        drop(go);
        drop(guard);
        let text = String::from_utf8(lines.lock().expect("lock").clone()).expect("utf-8");
        let logged: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object a line"))
            .collect();
        assert_eq!(logged.len(), 100, "{text}");
        for (i, line) in logged.iter().enumerate() {
            assert_eq!(line["message"], "request finished");
            assert_eq!(line["i"], i);
            assert_eq!(line["span"]["path"], "/v1/vectors/search");
            assert!(line.get("spans").is_none(), "the span is logged once: {line}");
        }
    }

    #[test]
    fn the_note_of_dropped_lines_is_a_log_line_of_its_format() {
        let json: serde_json::Value = serde_json::from_str(json_dropped_note(7).trim_end()).expect("one JSON line");
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["dropped"], 7);
        assert!(json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
        assert!(pretty_dropped_note(7).starts_with("WARN 7 log lines were dropped"));
        assert!(json_dropped_note(7).ends_with('\n') && pretty_dropped_note(7).ends_with('\n'));
    }

    #[test]
    fn the_installed_logger_also_writes_what_dependencies_log_through_the_log_crate() {
        let (go, wait) = mpsc::channel::<()>();
        drop(go); // a reader that never stalls
        let lines = std::sync::Arc::default();
        let writer = Stalled {
            go: wait,
            lines: std::sync::Arc::clone(&lines),
        };
        let guard = init_with(LogFormat::Json, writer, false);
        log::warn!(target: "some_dependency", "a record through the log crate");
        drop(guard);
        let text = String::from_utf8(lines.lock().expect("lock").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
        assert_eq!(line["message"], "a record through the log crate", "{text}");
        assert_eq!(line["level"], "WARN");
        assert_eq!(
            line["target"], "some_dependency",
            "the record's own target, not the log bridge's"
        );
    }
}
