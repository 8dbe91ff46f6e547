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
        self.tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
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

/// Reads pg_dump's stdout ahead of the compressor on its own thread: the
/// pipe is enlarged to 1 MiB and read in batches into a small bounded queue,
/// so pg_dump keeps writing while zstd works on the previous chunk instead of
/// the two taking turns through a 64 KiB pipe. When a read finds little
/// data the reader naps for a millisecond: pg_dump writes in 4-8 KiB pieces,
/// and waking for each one costs more CPU in context switches (on both
/// sides) than the compression of the data itself. A millisecond at the
/// fastest pg_dump rate is far less than the pipe holds, so pg_dump never
/// waits on the nap.
pub fn read_ahead(stdout: tokio::process::ChildStdout) -> io::Result<ChannelReader> {
    use std::os::fd::AsRawFd;
    let fd = stdout.into_owned_fd()?;
    // SAFETY: fcntl on a pipe fd we own; failure of F_SETPIPE_SZ only leaves
    // the default size. Tokio made the fd non-blocking; this thread blocks.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let mut pipe = std::fs::File::from(fd);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_AHEAD_CHUNKS);
    std::thread::Builder::new().name("pg_dump-reader".into()).spawn(move || {
        loop {
            let mut buf = BytesMut::zeroed(READ_CHUNK);
            let item = match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if n < READ_CHUNK / 2 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok(buf.freeze())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            // A closed receiver means the encoder stopped: stop reading, and
            // the caller kills pg_dump.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    })?;
    Ok(ChannelReader { rx, cur: Bytes::new() })
}

const READ_CHUNK: usize = 256 << 10;
const READ_AHEAD_CHUNKS: usize = 16;

/// A blocking `Read` over chunks arriving on a channel.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.cur = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Parses age recipients (validated at config load already).
pub fn recipients(list: &[String]) -> io::Result<Vec<age::x25519::Recipient>> {
    list.iter()
        .map(|r| {
            r.parse::<age::x25519::Recipient>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("age recipient {r}: {e}")))
        })
        .collect()
}

/// Compresses (and encrypts) everything `input` yields into `tx`. Blocking:
/// run it on `spawn_blocking`.
pub fn encode(
    mut input: impl Read,
    level: i32,
    recipients: &[age::x25519::Recipient],
    tx: mpsc::Sender<Bytes>,
) -> io::Result<Totals> {
    let sink = Sink { hasher: Sha256::new(), count: 0, buf: BytesMut::with_capacity(CHUNK), tx };
    let stage = if recipients.is_empty() {
        Stage::Plain(sink)
    } else {
        let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Stage::Encrypted(enc.wrap_output(sink)?)
    };
    let mut z = zstd::Encoder::new(stage, level)?;
    // A checksum per frame lets a restore notice corruption while decoding,
    // before pg_restore reads garbage.
    z.include_checksum(true)?;
    if level == 1 {
        // Level 1 with larger match tables (hashLog 18, window 2 MiB): on the
        // benchmark's realistic dump this is 1% smaller than pg_dump's gzip
        // output (plain level 1: 7% larger) for 87% of level 3's CPU, which
        // matters on small hosts that also run PostgreSQL and pg_dump. A
        // zstd worker thread did not help there: the CPU is already busy.
        z.set_parameter(zstd::stream::raw::CParameter::WindowLog(21))?;
        z.set_parameter(zstd::stream::raw::CParameter::HashLog(18))?;
    }
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
