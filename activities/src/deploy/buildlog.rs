//! The build log of one build attempt: output is kept up to the manifest's
//! `build.max_log_bytes` (then a truncation mark), appended to `build_logs` in chunks as the
//! build runs, and its last lines are at hand for the error of a failed build.

use rhone_schema::{SchemaError, logs};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

/// Pending output is written once it reaches this size (or on the caller's tick).
pub const FLUSH_BYTES: usize = 16 * 1024;
/// How much of the latest output is kept for a failure message, whatever the cap.
const TAIL_BYTES: usize = 16 * 1024;
/// At most this much of the tail goes into an error message.
const TAIL_MESSAGE_CHARS: usize = 4000;

pub struct BuildLog {
    db: DatabaseConnection,
    operation_id: Uuid,
    attempt: i32,
    cap: u64,
    /// Output bytes accepted into the log so far (the marks Rhone adds are not counted).
    kept: u64,
    truncated: bool,
    pending: Vec<u8>,
    tail: Vec<u8>,
}

impl BuildLog {
    /// Starts a new attempt of the operation's build log with `header` as its first chunk.
    pub async fn start(
        db: &DatabaseConnection,
        operation_id: Uuid,
        header: &str,
        cap: u64,
    ) -> Result<Self, SchemaError> {
        let first = logs::start_attempt(db, operation_id, header).await?;
        Ok(BuildLog {
            db: db.clone(),
            operation_id,
            attempt: first.attempt,
            cap,
            kept: 0,
            truncated: false,
            pending: Vec::new(),
            tail: Vec::new(),
        })
    }

    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Output bytes kept in the log.
    pub fn kept_bytes(&self) -> u64 {
        self.kept
    }

    /// Takes a piece of the build's output.
    pub fn push(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
        }
        if self.truncated {
            return;
        }
        let room = usize::try_from(self.cap.saturating_sub(self.kept)).unwrap_or(usize::MAX);
        let taken = bytes.len().min(room);
        self.pending.extend_from_slice(&bytes[..taken]);
        self.kept += taken as u64;
        if taken < bytes.len() {
            self.truncated = true;
            let mark = format!(
                "\n[rhone] build log truncated at {} bytes (build.max_log_bytes); \
                 later output is not kept\n",
                self.cap
            );
            self.pending.extend_from_slice(mark.as_bytes());
        }
    }

    /// A line of Rhone's own (not counted against the cap), written at once.
    pub async fn note(&mut self, line: &str) -> Result<(), SchemaError> {
        self.flush(true).await?;
        logs::append(
            &self.db,
            self.operation_id,
            self.attempt,
            &format!("[rhone] {line}\n"),
        )
        .await
        .map(|_| ())
    }

    pub fn should_flush(&self) -> bool {
        self.pending.len() >= FLUSH_BYTES
    }

    /// Writes pending output as one chunk. Unless `all`, an incomplete UTF-8 character at
    /// the end waits for the rest of its bytes.
    pub async fn flush(&mut self, all: bool) -> Result<(), SchemaError> {
        let ready = match std::str::from_utf8(&self.pending) {
            Err(e) if !all && e.error_len().is_none() => e.valid_up_to(),
            _ => self.pending.len(),
        };
        if ready == 0 {
            return Ok(());
        }
        let chunk = String::from_utf8_lossy(&self.pending[..ready]).into_owned();
        logs::append(&self.db, self.operation_id, self.attempt, &chunk).await?;
        self.pending.drain(..ready);
        Ok(())
    }

    /// The last `n` lines of the output (kept or not), at most a few KB.
    pub fn tail_lines(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        let chars = tail.chars().count();
        if chars <= TAIL_MESSAGE_CHARS {
            return tail;
        }
        let cut: String = tail.chars().skip(chars - TAIL_MESSAGE_CHARS).collect();
        format!("…{cut}")
    }
}
