//! The byte pipeline of a snapshot, run on one blocking thread:
//! raw dump → zstd → (age) → SHA-256 and byte count → 1 MiB chunks sent to the
//! uploader over a bounded channel. The bounded channel and the store's
//! bounded part buffer are what keep memory flat whatever the database size:
//! when the store is slow, this thread blocks, the pipe fills, and pg_dump
//! waits.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const CHUNK: usize = 1 << 20;

/// What went through the pipeline.
#[derive(Debug, Clone)]
pub struct Totals {
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub sha256: String,
}

/// The end of the chain: hashes, counts and ships stored bytes.
struct Sink {
    hasher: Sha256,
    count: u64,
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
}

impl Sink {
    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        // The receiver is gone only when the upload failed: stop reading.
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.count += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.ship()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Either straight to the sink or through age encryption first.
enum Stage {
    Plain(Sink),
    Encrypted(age::stream::StreamWriter<Sink>),
}

impl Write for Stage {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stage::Plain(s) => s.write(data),
            Stage::Encrypted(s) => s.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stage::Plain(s) => s.flush(),
            Stage::Encrypted(s) => s.flush(),
        }
    }
}

/// Parses age recipients (validated at config load already).
pub fn recipients(list: &[String]) -> io::Result<Vec<age::x25519::Recipient>> {
    list.iter()
        .map(|r| r.parse::<age::x25519::Recipient>().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("age recipient {r}: {e}"))))
        .collect()
}

/// Compresses (and encrypts) everything `input` yields into `tx`. Blocking:
/// run it on `spawn_blocking`.
pub fn encode(mut input: impl Read, level: i32, recipients: &[age::x25519::Recipient], tx: mpsc::Sender<Bytes>) -> io::Result<Totals> {
    let sink = Sink { hasher: Sha256::new(), count: 0, buf: BytesMut::with_capacity(CHUNK), tx };
    let stage = if recipients.is_empty() {
        Stage::Plain(sink)
    } else {
        let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Stage::Encrypted(enc.wrap_output(sink)?)
    };
    let mut z = zstd::Encoder::new(stage, level)?;
    let mut raw = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        raw += n as u64;
        z.write_all(&buf[..n])?;
    }
    let mut sink = match z.finish()? {
        Stage::Plain(s) => s,
        Stage::Encrypted(w) => w.finish()?,
    };
    sink.ship()?;
    Ok(Totals { bytes_raw: raw, bytes_stored: sink.count, sha256: hex::encode(sink.hasher.finalize()) })
}
