//! The proxy's log streams, written off the request threads: the access log (stdout) and
//! tracing's events (stderr). A request thread that wrote a line itself blocked in
//! `write` once the pipe to a stalled log collector was full, and the proxy answered
//! nothing more, nor exited on SIGTERM, until the pipe was read. Here each stream has a
//! writer thread; up to [`MAX_QUEUED`] bytes wait for it, lines past that are dropped and
//! counted, and the count is reported once the writer moves again. So a log reader that
//! stops reading costs log lines, never requests.
//!
//! Written here rather than with `tracing-appender`'s non-blocking writer: that one bounds
//! its queue by lines, and an access-log line's size is the client's to choose, so its
//! bound in bytes would be the client's too.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of lines that may wait for a stream's writer: a few seconds of a busy proxy's
/// log, bounded whatever the lines.
const MAX_QUEUED: usize = 4 << 20;

/// Bytes of queued lines gathered into one write: lines are added while the batch is
/// shorter, so it may end up one line longer.
const BATCH: usize = 64 << 10;

/// Which stream a sink writes.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

static STDOUT: OnceLock<Sink> = OnceLock::new();
static STDERR: OnceLock<Sink> = OnceLock::new();

impl Stream {
    fn sink(self) -> &'static OnceLock<Sink> {
        match self {
            Stream::Stdout => &STDOUT,
            Stream::Stderr => &STDERR,
        }
    }

    fn write_all(self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Stdout => io::stdout().lock().write_all(bytes),
            Stream::Stderr => io::stderr().lock().write_all(bytes),
        }
    }
}

/// One stream's queue of lines and its writer thread.
pub(crate) struct Sink {
    lines: mpsc::Sender<String>,
    /// Bytes sent to the writer and not yet written.
    queued: AtomicUsize,
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
}

/// The access log's sink (stdout), its thread started with the first line.
pub(crate) fn stdout() -> &'static Sink {
    sink(Stream::Stdout)
}

/// Queues `line` (a newline is added) for stderr: the proxy's own announcements, which
/// must not block a shutdown either.
pub(crate) fn stderr_line(mut line: String) {
    line.push('\n');
    sink(Stream::Stderr).push(line);
}

fn sink(stream: Stream) -> &'static Sink {
    stream.sink().get_or_init(|| {
        let (lines, queue) = mpsc::channel();
        let name = match stream {
            Stream::Stdout => "access-log",
            Stream::Stderr => "event-log",
        };
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_lines(stream, &queue));
        if let Err(err) = spawned {
            // The receiver is gone with the closure: every line is dropped, and counted,
            // rather than the proxy failing.
            let _ = writeln!(io::stderr(), "cannot start the {name} writer: {err}");
        }
        Sink {
            lines,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    })
}

impl Sink {
    /// Queues a line, or drops it when [`MAX_QUEUED`] bytes are already waiting.
    pub(crate) fn push(&self, line: String) {
        let len = line.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > MAX_QUEUED || self.lines.send(line).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A writer thread: writes what is queued, about [`BATCH`] bytes at a time, until the
/// process ends. A closed stream loses its lines, not the requests.
fn write_lines(stream: Stream, queue: &mpsc::Receiver<String>) {
    let mut batch = String::new();
    while let Ok(line) = queue.recv() {
        batch.clear();
        batch.push_str(&line);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(line) => batch.push_str(&line),
                Err(_) => break,
            }
        }
        let _ = stream.write_all(batch.as_bytes());
        // Initialised before the first line was sent.
        let Some(sink) = stream.sink().get() else {
            continue;
        };
        sink.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let dropped = sink.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let what = match stream {
                Stream::Stdout => "access log",
                Stream::Stderr => "log event",
            };
            tracing::warn!(
                lines = dropped,
                "{what} lines dropped: the stream was not read fast enough"
            );
        }
    }
}

/// Flushes (see [`flush`]) when dropped: held by `main`, so that the lines queued before
/// an exit are written on every way out of it, an early error return or a panic that
/// unwinds through it included.
pub(crate) struct FlushOnExit;

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        flush();
    }
}

/// At exit: waits while each writer makes progress on the lines still queued, and gives
/// up once one made none for 100 ms (its stream not being read), or after a second in
/// all (a reader that drains 4 MiB slowly): the proxy's exit must not wait for its log
/// readers much beyond `--shutdown-grace`.
fn flush() {
    let deadline = Instant::now() + Duration::from_secs(1);
    for stream in [Stream::Stdout, Stream::Stderr] {
        let Some(sink) = stream.sink().get() else {
            continue;
        };
        let mut last = sink.queued.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while last > 0 && since.elapsed() < Duration::from_millis(100) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
            let now = sink.queued.load(Ordering::Relaxed);
            if now < last {
                since = Instant::now();
            }
            last = now;
        }
    }
}

/// tracing-subscriber's writer for stderr: each event, formatted whole, becomes one queued
/// line.
#[derive(Clone, Copy)]
pub(crate) struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter(Vec::new())
    }
}

/// One event's bytes, queued when the formatter is done with them (on drop).
pub(crate) struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            // Formatted from `str`s: valid UTF-8 but for a bug, so taken without a copy.
            let line = String::from_utf8(std::mem::take(&mut self.0))
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
            sink(Stream::Stderr).push(line);
        }
    }
}
