//! An allocation's output: stdout and stderr are read line by line, scrubbed of secret
//! values, kept in a ring of the last [`RING_LINES`] lines and appended to
//! `allocations/<id>/output.log`, which is rotated at [`MAX_LOG_BYTES`] (the previous one
//! kept as `output.log.1`): an app's output takes at most twice that on the runner's disk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::scrub::Scrubber;

/// Lines kept in memory per allocation.
pub const RING_LINES: usize = 200;
/// A longer line is cut into pieces of this many bytes, so one endless line cannot hold
/// memory without bound.
pub const MAX_LINE_BYTES: usize = 4096;
/// `output.log` is rotated when a line would take it past this size.
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// The open log file and how many bytes it holds.
#[derive(Debug)]
struct LogFile {
    file: tokio::fs::File,
    len: u64,
}

/// The output of one allocation.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    lines: Mutex<VecDeque<String>>,
    file: tokio::sync::Mutex<Option<LogFile>>,
    path: PathBuf,
    scrubber: Scrubber,
    /// Rotation size, [`MAX_LOG_BYTES`] but in tests.
    max_bytes: u64,
}

impl LogBuffer {
    /// A buffer writing to `path` (created or appended to when the first line comes).
    pub(crate) fn new(path: PathBuf, scrubber: Scrubber) -> Self {
        LogBuffer {
            lines: Mutex::new(VecDeque::with_capacity(RING_LINES)),
            file: tokio::sync::Mutex::new(None),
            path,
            scrubber,
            max_bytes: MAX_LOG_BYTES,
        }
    }

    #[cfg(test)]
    fn rotating_at(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub(crate) fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// The last `n` lines, oldest first.
    pub(crate) fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Fills the ring with the last lines of the log (an allocation taken over from an
    /// earlier runner, whose output so far is there): from `output.log`, and from the
    /// rotated `output.log.1` before it when the current one holds fewer lines.
    pub(crate) fn restore(&self) {
        let mut lines = tail_lines(&self.path);
        if lines.len() < RING_LINES {
            let mut older = tail_lines(&self.path.with_extension("log.1"));
            older.append(&mut lines);
            lines = older;
        }
        let mut ring = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        ring.clear();
        ring.extend(lines.drain(lines.len().saturating_sub(RING_LINES)..));
    }

    /// Adds one line of output (without its line break).
    pub(crate) async fn push(&self, raw: &[u8]) {
        let line = self.scrubber.scrub(&String::from_utf8_lossy(raw));
        {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            if lines.len() == RING_LINES {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        let mut file = self.file.lock().await;
        if file
            .as_ref()
            .is_some_and(|f| f.len > 0 && f.len + bytes.len() as u64 > self.max_bytes)
        {
            // Rotate: the full log becomes `output.log.1` (replacing the one before).
            if let Some(mut full) = file.take() {
                let _ = full.file.flush().await;
            }
            let rotated = self.path.with_extension("log.1");
            if let Err(e) = tokio::fs::rename(&self.path, &rotated).await {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the allocation log");
            }
        }
        if file.is_none() {
            match open_append(&self.path).await {
                Ok(f) => {
                    let len = f.metadata().await.map_or(0, |m| m.len());
                    *file = Some(LogFile { file: f, len });
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the allocation log");
                    return;
                }
            }
        }
        if let Some(f) = file.as_mut() {
            match f.file.write_all(&bytes).await {
                Ok(()) => f.len += bytes.len() as u64,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the allocation log");
                }
            }
        }
    }

    /// Flushes the log file to the OS.
    pub(crate) async fn flush(&self) {
        if let Some(f) = self.file.lock().await.as_mut()
            && let Err(e) = f.file.flush().await
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot flush the allocation log");
        }
    }
}

/// The last [`RING_LINES`] lines of the file at `path` (none if it cannot be read).
fn tail_lines(path: &Path) -> Vec<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let tail = (RING_LINES * MAX_LINE_BYTES) as u64;
    let len = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(tail)))
        .is_err()
        || file.read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if len > tail && !lines.is_empty() {
        lines.remove(0); // cut mid-line
    }
    lines[lines.len().saturating_sub(RING_LINES)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// Reads `reader` to its end, one line at a time, into `logs`.
pub(crate) async fn pump(reader: impl AsyncRead + Unpin, logs: Arc<LogBuffer>) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::debug!(error = %e, "reading app output stopped");
                break;
            }
        };
        if chunk.is_empty() {
            break;
        }
        let room = MAX_LINE_BYTES - line.len();
        let (taken, complete) = match chunk.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => {
                let n = chunk.len().min(room);
                (n, line.len() + n == MAX_LINE_BYTES)
            }
        };
        line.extend_from_slice(&chunk[..taken]);
        reader.consume(taken);
        if complete {
            logs.push(trim_newline(&line)).await;
            line.clear();
        }
    }
    if !line.is_empty() {
        logs.push(trim_newline(&line)).await;
    }
    logs.flush().await;
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhone_core::Secret;

    #[tokio::test]
    async fn lines_are_split_capped_scrubbed_and_kept() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("output.log");
        let logs = Arc::new(LogBuffer::new(
            path.clone(),
            Scrubber::new(&[Secret::new("hunter2")]),
        ));
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let mut input = format!("one\r\nkey=hunter2\n{long}\n").into_bytes();
        for i in 0..RING_LINES {
            input.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        input.extend_from_slice(b"no newline at the end");
        pump(&input[..], logs.clone()).await;

        let last = logs.last(3);
        assert_eq!(
            last,
            ["line 198", "line 199", "no newline at the end"],
            "ring keeps the newest"
        );
        let file = tokio::fs::read_to_string(&path).await?;
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(&lines[..2], ["one", "key=***"]);
        assert_eq!(lines[2].len(), MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert!(!file.contains("hunter2"));
        Ok(())
    }

    #[tokio::test]
    async fn the_log_file_is_rotated_at_its_size() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("output.log");
        let logs = Arc::new(LogBuffer::new(path.clone(), Scrubber::new(&[])).rotating_at(1000));
        let mut input = Vec::new();
        for i in 0..300 {
            input.extend_from_slice(format!("line {i:04}\n").as_bytes());
        }
        pump(&input[..], logs.clone()).await;
        logs.flush().await;
        let current = tokio::fs::read_to_string(&path).await?;
        let previous = tokio::fs::read_to_string(dir.path().join("output.log.1")).await?;
        assert!(
            current.len() <= 1000 && previous.len() <= 1000,
            "{} {}",
            current.len(),
            previous.len()
        );
        assert!(
            current.ends_with("line 0299\n"),
            "the newest lines are in output.log"
        );
        // The two files hold the last lines without a gap between them.
        let joined: Vec<&str> = previous.lines().chain(current.lines()).collect();
        let first: usize = joined[0][5..].parse().expect("a line number");
        let expected: Vec<String> = (first..300).map(|i| format!("line {i:04}")).collect();
        assert_eq!(joined, expected);
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 2, "no third file");

        // A runner that takes the allocation over finds its last lines in both files.
        let restored = LogBuffer::new(path.clone(), Scrubber::new(&[]));
        restored.restore();
        let last = restored.last(RING_LINES);
        let expected: Vec<String> = (300 - last.len()..300)
            .map(|i| format!("line {i:04}"))
            .collect();
        assert_eq!(last, expected);
        assert!(
            last.len() > current.lines().count(),
            "lines from output.log.1 too"
        );
        Ok(())
    }
}
