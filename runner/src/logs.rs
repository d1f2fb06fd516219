//! An allocation's output: stdout and stderr are read line by line, scrubbed of secret
//! values, kept in a ring of the last [`RING_LINES`] lines and appended to
//! `allocations/<id>/output.log`.

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

/// The output of one allocation.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    lines: Mutex<VecDeque<String>>,
    file: tokio::sync::Mutex<Option<tokio::fs::File>>,
    path: PathBuf,
    scrubber: Scrubber,
}

impl LogBuffer {
    /// A buffer writing to `path` (created or appended to when the first line comes).
    pub(crate) fn new(path: PathBuf, scrubber: Scrubber) -> Self {
        LogBuffer {
            lines: Mutex::new(VecDeque::with_capacity(RING_LINES)),
            file: tokio::sync::Mutex::new(None),
            path,
            scrubber,
        }
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

    /// Fills the ring with the last lines of the log file (an allocation taken over from an
    /// earlier runner, whose output so far is there).
    pub(crate) fn restore(&self) {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let tail = (RING_LINES * MAX_LINE_BYTES) as u64;
        let len = file.metadata().map_or(0, |m| m.len());
        let mut bytes = Vec::new();
        if file
            .seek(SeekFrom::Start(len.saturating_sub(tail)))
            .is_err()
            || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.lines().collect();
        if len > tail && !lines.is_empty() {
            lines.remove(0); // cut mid-line
        }
        let mut ring = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        ring.clear();
        ring.extend(
            lines[lines.len().saturating_sub(RING_LINES)..]
                .iter()
                .map(|l| (*l).to_owned()),
        );
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
        let mut file = self.file.lock().await;
        if file.is_none() {
            match open_append(&self.path).await {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the allocation log");
                    return;
                }
            }
        }
        if let Some(f) = file.as_mut() {
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            if let Err(e) = f.write_all(&bytes).await {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the allocation log");
            }
        }
    }

    /// Flushes the log file to the OS.
    pub(crate) async fn flush(&self) {
        if let Some(f) = self.file.lock().await.as_mut()
            && let Err(e) = f.flush().await
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot flush the allocation log");
        }
    }
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
}
