//! Standard output for the log, written by a thread of its own in batches.
//!
//! Why: the request log is one line per request, and writing each line to standard output at
//! once costs a `write` system call (which wakes whoever reads the pipe) and takes the process's
//! stdout lock on a runtime thread, with the other runtime threads waiting on it: about 15 % of
//! the server's time under `bench http`. Here a line is formatted where it happens, as before,
//! and handed to the writer thread, which gathers what arrives within [`LINGER`] and writes it
//! with one call.
//!
//! What is kept: every line, in order. The hand-off queue is bounded; when it is full (standard
//! output not being read) a logging thread waits for room, as it waited on a full pipe before;
//! nothing is dropped. [`flush`] writes out what is queued; `main` calls it before the process
//! exits, so only a killed process can lose the last [`LINGER`] of its log.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after the first one before writing them out: long enough
/// to write a busy server's lines a few dozen at a time, short against a person or a log
/// collector reading them.
const LINGER: Duration = Duration::from_millis(1);

/// Lines queued before a logging thread waits for the writer.
const QUEUED: usize = 16 * 1024;

/// Bytes the writer buffers before writing, whatever the linger.
const BUFFER: usize = 64 * 1024;

enum Message {
    Line(Vec<u8>),
    /// Write out everything queued before it, then answer.
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The writer the formatting layer uses: each event is one [`Line`], queued when it is dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One event's text, handed to the writer thread when dropped.
#[derive(Debug)]
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        if let Err(refused) = queue().send(Message::Line(line)) {
            // The writer thread is gone (it cannot be, short of a panic): write it here.
            if let Message::Line(line) = refused.0 {
                let _ = io::stdout().write_all(&line);
            }
        }
    }
}

/// Writes out every line queued so far. Waits at most a second: a stalled standard output must
/// not keep the process from exiting.
pub fn flush() {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let (done, written) = sync_channel(1);
    if queue.send(Message::Flush(done)).is_ok() {
        let _ = written.recv_timeout(Duration::from_secs(1));
    }
}

fn queue() -> &'static SyncSender<Message> {
    QUEUE.get_or_init(|| {
        let (queue, lines) = sync_channel(QUEUED);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(lines));
        if let Err(e) = spawned {
            // Without the thread every send fails and each line is written where it happens.
            eprintln!("mkww-mcp: cannot start the log writer ({e}); writing the log directly");
        }
        queue
    })
}

/// The writer thread: waits for a line, lets more gather for [`LINGER`], writes them all.
fn write_lines(lines: Receiver<Message>) {
    let mut out = io::BufWriter::with_capacity(BUFFER, io::stdout());
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        let mut lingered = false;
        loop {
            while let Some(message) = next.take() {
                match message {
                    // A write error (standard output closed) loses the log, as it did before.
                    Message::Line(line) => {
                        let _ = out.write_all(&line);
                    }
                    Message::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                }
                next = lines.try_recv().ok();
            }
            if lingered {
                break;
            }
            lingered = true;
            std::thread::sleep(LINGER);
            next = lines.try_recv().ok();
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_queued_whole_and_flush_returns() {
        let mut line = Stdout.make_writer();
        line.write_all(b"{\"message\":\"one\"").unwrap();
        line.write_all(b"}\n").unwrap();
        assert_eq!(line.0, b"{\"message\":\"one\"}\n");
        drop(line);
        // Nothing to assert on the process's standard output; the writer must answer.
        flush();
    }
}
