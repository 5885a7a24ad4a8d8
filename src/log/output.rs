//! Where log lines go: standard error, each line written as it is logged, or —
//! for access lines, when `[log] buffer_bytes` is set — through a bounded
//! in-memory buffer, like nginx's `access_log ... buffer=... flush=...`.
//!
//! Why: writing an access line is one system call per request, about half of
//! the line's cost at small payloads (see the README's performance section).
//! With a buffer, access lines are written in batches: when the next line
//! would not fit, at least every `flush_ms` (a timer thread), before any other
//! event (so warnings and errors are written at once and never overtake the
//! access lines logged before them), before a panic's message, and on every
//! exit path of the process ([`flush`], after which lines are no longer
//! buffered). The buffer never grows past its size.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// The target of access lines.
pub const ACCESS_TARGET: &str = "hookgate::access";

/// A bounded buffer in front of a sink (standard error in the gateway).
pub struct LineBuffer<W: Write + Send> {
    inner: Mutex<State<W>>,
    cap: usize,
}

struct State<W> {
    buf: Vec<u8>,
    sink: W,
    /// After the final flush: write every line at once.
    closed: bool,
}

impl<W: Write + Send> LineBuffer<W> {
    /// A buffer of `cap` bytes in front of `sink`.
    pub fn new(sink: W, cap: usize) -> Self {
        LineBuffer {
            inner: Mutex::new(State {
                buf: Vec::with_capacity(cap),
                sink,
                closed: false,
            }),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A poisoned lock only means a writer panicked mid-append: the bytes
        // are still a valid buffer, so keep logging.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append bytes; writes the buffer out first when they would not fit.
    /// Bytes larger than the whole buffer are written straight through.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        if st.buf.len() + bytes.len() > self.cap {
            st.write_out()?;
        }
        if st.closed || bytes.len() >= self.cap {
            st.sink.write_all(bytes)
        } else {
            st.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Write the buffered bytes, then `bytes`, at once and in that order.
    pub fn write_through(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        st.write_out()?;
        st.sink.write_all(bytes)
    }

    /// Write out whatever is buffered.
    pub fn flush(&self) -> io::Result<()> {
        self.lock().write_out()
    }

    /// The final flush: write out, and from now on write every line at once
    /// (the process is about to exit; a line logged after this is not lost).
    pub fn close(&self) -> io::Result<()> {
        let mut st = self.lock();
        st.closed = true;
        st.write_out()
    }

    /// Write out if nobody holds the buffer (a panic hook must not wait for a
    /// lock its own thread may hold).
    pub fn try_flush(&self) {
        if let Ok(mut st) = self.inner.try_lock() {
            let _ = st.write_out();
        }
    }

    /// Bytes waiting in the buffer.
    pub fn pending(&self) -> usize {
        self.lock().buf.len()
    }
}

impl<W: Write> State<W> {
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // The buffer is emptied even when the write fails: a broken standard
        // error must not turn into a buffer that only grows.
        let res = self
            .sink
            .write_all(&self.buf)
            .and_then(|()| self.sink.flush());
        self.buf.clear();
        res
    }
}

type Stderr = LineBuffer<io::Stderr>;

/// The process's buffer, when access lines are buffered ([`flush`] uses it).
static BUFFER: OnceLock<Arc<Stderr>> = OnceLock::new();

/// Write out buffered access lines, if any, and write later ones at once.
/// Call before the process exits.
pub fn flush() {
    if let Some(b) = BUFFER.get() {
        let _ = b.close();
    }
}

/// The subscriber's writer: standard error, with access lines buffered when a
/// buffer is configured.
#[derive(Clone)]
pub struct LogOutput {
    buffer: Option<Arc<Stderr>>,
}

impl LogOutput {
    /// Unbuffered: every line is written as it is logged.
    pub fn direct() -> Self {
        LogOutput { buffer: None }
    }

    /// As configured: `bytes` 0 writes every line at once, more buffers
    /// access lines ([`LogOutput::buffered`]).
    pub fn new(bytes: usize, every: Duration) -> Self {
        if bytes == 0 {
            LogOutput::direct()
        } else {
            LogOutput::buffered(bytes, every)
        }
    }

    /// Access lines through a buffer of `bytes`, written at least every
    /// `flush` by a background thread. The buffer becomes the process's (the
    /// one [`flush`] writes out) unless one was installed before.
    pub fn buffered(bytes: usize, every: Duration) -> Self {
        let buffer = Arc::new(LineBuffer::new(io::stderr(), bytes.max(1)));
        let installed = BUFFER.get_or_init(|| buffer.clone());
        if !Arc::ptr_eq(installed, &buffer) {
            // Already set up in this process (tests, embedders): share it.
            return LogOutput {
                buffer: Some(installed.clone()),
            };
        }
        // A panic's message goes straight to standard error: write the access
        // lines logged before it first.
        let on_panic = buffer.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            on_panic.try_flush();
            previous(info);
        }));
        let timer = buffer.clone();
        let every = every.max(Duration::from_millis(10));
        let spawned = std::thread::Builder::new()
            .name("hookgate-log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let _ = timer.flush();
            });
        if spawned.is_err() {
            // No timer thread: lines would wait for the next full buffer, so
            // do not buffer at all.
            return LogOutput::direct();
        }
        LogOutput {
            buffer: Some(buffer),
        }
    }
}

/// One event's writer.
pub enum EventWriter<'a> {
    /// Straight to standard error (no buffer configured).
    Direct,
    /// An access line, into the buffer.
    Buffered(&'a Stderr),
    /// Any other event: the buffer first, then the line.
    Through(&'a Stderr),
}

impl Write for EventWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            EventWriter::Direct => io::stderr().write_all(bytes)?,
            EventWriter::Buffered(b) => b.append(bytes)?,
            EventWriter::Through(b) => b.write_through(bytes)?,
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> EventWriter<'a> {
        match &self.buffer {
            None => EventWriter::Direct,
            Some(b) => EventWriter::Through(b),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter<'a> {
        match &self.buffer {
            None => EventWriter::Direct,
            Some(b) if meta.target() == ACCESS_TARGET => EventWriter::Buffered(b),
            Some(b) => EventWriter::Through(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink that records each write separately.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn writes(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        }
    }

    #[test]
    fn lines_wait_until_the_next_would_not_fit() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 30);
        b.append(b"line one\n").unwrap();
        b.append(b"line two\n").unwrap();
        b.append(b"line three\n").unwrap();
        assert!(sink.writes().is_empty(), "29 bytes fit in 30");
        assert_eq!(b.pending(), 29);
        b.append(b"line four\n").unwrap();
        assert_eq!(sink.writes(), vec!["line one\nline two\nline three\n"]);
        assert_eq!(b.pending(), 10);
        b.flush().unwrap();
        assert_eq!(sink.writes().last().unwrap(), "line four\n");
        assert_eq!(b.pending(), 0);
        b.flush().unwrap();
        assert_eq!(sink.writes().len(), 2, "an empty buffer writes nothing");
    }

    #[test]
    fn other_events_go_out_at_once_after_the_lines_before_them() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 1024);
        b.append(b"access 1\n").unwrap();
        b.append(b"access 2\n").unwrap();
        b.write_through(b"WARN upstream down\n").unwrap();
        assert_eq!(
            sink.writes().concat(),
            "access 1\naccess 2\nWARN upstream down\n"
        );
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn a_line_larger_than_the_buffer_is_written_through_in_order() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 16);
        b.append(b"short\n").unwrap();
        let long = "x".repeat(40) + "\n";
        b.append(long.as_bytes()).unwrap();
        assert_eq!(sink.writes(), vec!["short\n".to_string(), long]);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn the_buffer_never_holds_more_than_its_size() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 100);
        for i in 0..1000 {
            b.append(format!("line {i:04}\n").as_bytes()).unwrap();
            assert!(b.pending() <= 100);
        }
        b.flush().unwrap();
        let all = sink.writes().concat();
        assert_eq!(all.lines().count(), 1000);
        assert!(all
            .lines()
            .enumerate()
            .all(|(i, l)| l == format!("line {i:04}")));
    }

    #[test]
    fn after_the_final_flush_lines_are_written_at_once() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 1024);
        b.append(b"before exit\n").unwrap();
        b.close().unwrap();
        assert_eq!(sink.writes(), vec!["before exit\n"]);
        b.append(b"late line\n").unwrap();
        assert_eq!(sink.writes(), vec!["before exit\n", "late line\n"]);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn try_flush_does_not_wait_for_a_held_lock() {
        let sink = Sink::default();
        let b = LineBuffer::new(sink.clone(), 1024);
        b.append(b"held\n").unwrap();
        let guard = b.lock();
        b.try_flush(); // would deadlock with a blocking lock
        drop(guard);
        assert!(sink.writes().is_empty());
        b.try_flush();
        assert_eq!(sink.writes(), vec!["held\n"]);
    }

    #[test]
    fn a_failing_sink_does_not_grow_the_buffer() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let b = LineBuffer::new(Broken, 20);
        for _ in 0..100 {
            let _ = b.append(b"0123456789\n");
            assert!(b.pending() <= 20);
        }
    }
}
