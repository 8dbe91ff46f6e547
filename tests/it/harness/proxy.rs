//! A small TCP fault proxy between pgrehearse and the S3 server or a
//! PostgreSQL cluster, to make the network fail on cue. It listens on a
//! loopback TCP port and forwards to a TCP address ([`Proxy::start`], the S3
//! server) or to a unix socket ([`Proxy::start_unix`], a test cluster, which
//! listens on its socket only). One [`Fault`] is in force at a time:
//!
//! - [`Fault::Up`]: forward bytes both ways;
//! - [`Fault::Reset`]: reset (RST) every open connection and every new one,
//!   as a crashed host would (`set_down(true)` is this);
//! - [`Fault::Drop`]: close every open connection with a FIN and close new
//!   ones at once, as a server that shuts down would;
//! - [`Fault::Stall`]: accept and hold connections but forward nothing until
//!   the deadline passes or the fault is cleared; held bytes flow afterwards;
//! - [`Fault::ResetAfter`]: reset a connection once it has forwarded `bytes`
//!   (both directions counted), for the next `conns` connections that get
//!   that far, or all; clearing the fault disarms connections not yet reset;
//! - [`Fault::HttpError`]: for HTTP upstreams, answer the next `requests` new
//!   connections (or all) with `status`, an S3-style XML error body and
//!   `Connection: close`, after reading the request, instead of forwarding.
//!
//! [`Proxy::set_after`] arms a fault to strike once so many bytes have gone
//! through, so that it lands in the middle of an upload or a download.
//! `ResetAfter` and `HttpError` apply to connections accepted after they
//! were set; a connection open before keeps forwarding.
//! [`Proxy::injected`] counts the faults actually dealt, so a test that means
//! to show survival can prove the fault happened.
//!
//! Plain std threads: two copy threads per connection are plenty for a test.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does with traffic; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Up,
    Reset,
    Drop,
    /// `until: None` holds until the fault is changed.
    Stall {
        until: Option<Instant>,
    },
    /// `conns: None` arms every new connection.
    ResetAfter {
        bytes: u64,
        conns: Option<u32>,
    },
    /// `requests: None` answers every new connection.
    HttpError {
        status: u16,
        requests: Option<u32>,
    },
}

#[derive(Clone, Debug)]
enum Upstream {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The upstream side of a connection.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(to: &Upstream) -> std::io::Result<Conn> {
        Ok(match to {
            Upstream::Tcp(a) => Conn::Tcp(TcpStream::connect(a)?),
            Upstream::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        })
    }
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
    /// RST for TCP; a unix socket has no reset, so it is closed both ways.
    fn reset(&self) {
        match self {
            Conn::Tcp(s) => reset(s),
            Conn::Unix(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One forwarded connection: both ends, bytes forwarded, and the byte
/// count at which it is reset (if armed).
struct Link {
    client: TcpStream,
    server: Conn,
    forwarded: AtomicU64,
    reset_at: Option<u64>,
    cut: AtomicBool,
}

impl Link {
    fn reset(&self) {
        self.cut.store(true, Ordering::SeqCst);
        reset(&self.client);
        self.server.reset();
    }
}

struct Shared {
    upstream: Upstream,
    fault: Mutex<Fault>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    next_id: AtomicU64,
    injected: AtomicU64,
    stopping: AtomicBool,
    /// Bytes forwarded (both directions, all connections) since `set_after`.
    total: AtomicU64,
    /// A fault to put in force once `total` reaches the count.
    armed: Mutex<Option<(u64, Fault)>>,
}

impl Shared {
    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
        if matches!(fault, Fault::Reset | Fault::Drop) {
            let links: Vec<Arc<Link>> = self.links.lock().unwrap().drain().map(|(_, l)| l).collect();
            for l in links {
                self.injected.fetch_add(1, Ordering::SeqCst);
                if fault == Fault::Reset {
                    l.reset();
                } else {
                    l.cut.store(true, Ordering::SeqCst);
                    let _ = l.client.shutdown(Shutdown::Both);
                    l.server.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Counts forwarded bytes; fires the armed fault at its count.
    fn forwarded(&self, n: usize) {
        let total = self.total.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let fire = {
            let mut armed = self.armed.lock().unwrap();
            match *armed {
                Some((at, fault)) if total >= at => {
                    *armed = None;
                    Some(fault)
                }
                _ => None,
            }
        };
        if let Some(fault) = fire {
            // An HTTP error applies to new connections: close the open ones
            // (keep-alive would carry the next requests past it), as a load
            // balancer failing over would.
            if matches!(fault, Fault::HttpError { .. }) {
                self.set(Fault::Drop);
            }
            self.set(fault);
        }
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    /// Blocks while a stall is in force (or until the proxy stops); a chunk
    /// that has to wait counts as a dealt fault as soon as it waits.
    fn wait_while_stalled(&self) {
        let mut waited = false;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            match self.fault() {
                Fault::Stall { until: None } => {}
                Fault::Stall { until: Some(t) } if Instant::now() < t => {}
                _ => break,
            }
            if !waited {
                waited = true;
                self.injected.fetch_add(1, Ordering::SeqCst);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A link armed by `ResetAfter` reached its byte count: whether to reset
    /// it now (the fault is still in force), counting down `conns`.
    fn take_reset(&self) -> bool {
        let mut f = self.fault.lock().unwrap();
        match *f {
            Fault::ResetAfter { conns: None, .. } => true,
            Fault::ResetAfter { bytes, conns: Some(n) } => {
                *f = if n <= 1 { Fault::Up } else { Fault::ResetAfter { bytes, conns: Some(n - 1) } };
                true
            }
            _ => false,
        }
    }
}

/// A running proxy on a loopback port; stops accepting on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (TCP).
    pub fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_to(Upstream::Tcp(upstream))
    }

    /// Listens on a free loopback port and forwards to the unix socket at
    /// `socket` (for a test cluster: `<socket dir>/.s.PGSQL.<port>`).
    pub fn start_unix(socket: &Path) -> Proxy {
        Proxy::start_to(Upstream::Unix(socket.to_path_buf()))
    }

    fn start_to(upstream: Upstream) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Up),
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            total: AtomicU64::new(0),
            armed: Mutex::new(None),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` of the proxy, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `true`: [`Fault::Reset`]; `false`: [`Fault::Up`].
    pub fn set_down(&self, down: bool) {
        self.set(if down { Fault::Reset } else { Fault::Up });
    }

    /// Puts `fault` in force. `Reset` resets and `Drop` closes every open
    /// connection now; the other faults leave open connections alone
    /// (a stall holds them from their next chunk on).
    pub fn set(&self, fault: Fault) {
        self.shared.set(fault);
    }

    /// Forwards normally until `bytes` more have gone through (both
    /// directions, all connections), then puts `fault` in force as
    /// [`Proxy::set`] would: a fault that strikes mid-transfer. An
    /// `HttpError` then also closes the open connections (FIN) first.
    pub fn set_after(&self, bytes: u64, fault: Fault) {
        self.shared.set(Fault::Up);
        self.shared.total.store(0, Ordering::SeqCst);
        *self.shared.armed.lock().unwrap() = Some((bytes, fault));
    }

    /// Back to [`Fault::Up`] (also disarms [`Proxy::set_after`]); held
    /// connections flow again.
    pub fn clear(&self) {
        *self.shared.armed.lock().unwrap() = None;
        self.set(Fault::Up);
    }

    /// The fault in force (a counting fault shows what is left of it).
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// How many faults were dealt so far: connections reset, dropped,
    /// stalled or answered with an error.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.next_id.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        for (_, l) in self.shared.links.lock().unwrap().drain() {
            l.reset();
        }
    }
}

/// What to do with a newly accepted connection, decided (and counted down)
/// under the fault lock.
enum Plan {
    Forward { reset_at: Option<u64> },
    Reset,
    Close,
    Answer(u16),
}

fn plan_for_new(shared: &Shared) -> Plan {
    let mut f = shared.fault.lock().unwrap();
    match *f {
        Fault::Up | Fault::Stall { .. } => Plan::Forward { reset_at: None },
        Fault::Reset => Plan::Reset,
        Fault::Drop => Plan::Close,
        // Counted down when a link is reset (`take_reset`).
        Fault::ResetAfter { bytes, .. } => Plan::Forward { reset_at: Some(bytes) },
        Fault::HttpError { status, requests } => {
            if let Some(n) = requests {
                *f = if n <= 1 { Fault::Up } else { Fault::HttpError { status, requests: Some(n - 1) } };
            }
            Plan::Answer(status)
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        match plan_for_new(&shared) {
            Plan::Reset => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                reset(&client);
            }
            Plan::Close => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
            }
            Plan::Answer(status) => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || answer_http_error(client, status));
            }
            Plan::Forward { reset_at } => forward(&shared, client, reset_at),
        }
    }
}

fn forward(shared: &Arc<Shared>, client: TcpStream, reset_at: Option<u64>) {
    let Ok(server) = Conn::connect(&shared.upstream) else {
        reset(&client);
        return;
    };
    let (Ok(c2), Ok(c3), Ok(s2), Ok(s3)) =
        (client.try_clone(), client.try_clone(), server.try_clone(), server.try_clone())
    else {
        reset(&client);
        return;
    };
    let link = Arc::new(Link { client, server, forwarded: AtomicU64::new(0), reset_at, cut: AtomicBool::new(false) });
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    shared.links.lock().unwrap().insert(id, link.clone());
    let pending = Arc::new(AtomicUsize::new(2));
    let up = (Box::new(c2) as Box<dyn Read + Send>, Box::new(s2) as Box<dyn Write + Send>, Side::Server);
    let down = (Box::new(s3) as Box<dyn Read + Send>, Box::new(c3) as Box<dyn Write + Send>, Side::Client);
    for (from, to, side) in [up, down] {
        let (shared, pending, link) = (shared.clone(), pending.clone(), link.clone());
        thread::spawn(move || {
            pump(&shared, &link, from, to);
            // Half-close the side we were writing to (a cut link must not
            // send a FIN before its RST).
            match side {
                _ if link.cut.load(Ordering::SeqCst) => {}
                Side::Server => link.server.shutdown(Shutdown::Write),
                Side::Client => {
                    let _ = link.client.shutdown(Shutdown::Write);
                }
            }
            if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.links.lock().unwrap().remove(&id);
            }
        });
    }
}

enum Side {
    Server,
    Client,
}

/// Copies `from` → `to` until EOF, an error or a cut; holds while stalled;
/// resets the link once it has forwarded `reset_at` bytes.
fn pump(shared: &Shared, link: &Link, mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        shared.wait_while_stalled();
        if link.cut.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut chunk = &buf[..n];
        if let Some(limit) = link.reset_at {
            let before = link.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            if before < limit && before + n as u64 >= limit && shared.take_reset() {
                let allowed = limit.saturating_sub(before) as usize;
                let _ = to.write_all(&chunk[..allowed.min(chunk.len())]);
                if !link.cut.swap(true, Ordering::SeqCst) {
                    shared.injected.fetch_add(1, Ordering::SeqCst);
                }
                link.reset();
                return;
            }
        }
        while !chunk.is_empty() {
            match to.write(chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => chunk = &chunk[k..],
            }
        }
        shared.forwarded(n);
    }
}

/// Reads one HTTP request (headers, then `Content-Length` bytes of body)
/// and answers it with `status` and an S3-style XML error, then closes.
fn answer_http_error(mut client: TcpStream, status: u16) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: u64 =
        text.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let expects_continue = text.lines().any(|l| l.starts_with("expect:") && l.contains("100-continue"));
    if !expects_continue {
        let _ = std::io::copy(&mut (&client).take(length), &mut std::io::sink());
    }
    let (code, reason, message) = match status {
        503 => ("ServiceUnavailable", "Service Unavailable", "Please reduce your request rate."),
        500 => ("InternalError", "Internal Server Error", "We encountered an internal error. Please try again."),
        _ => ("InjectedError", "Error", "Injected by the test proxy."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>proxy</RequestId><HostId>proxy</HostId></Error>"
    );
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(resp.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
    // Let the client read the answer before the socket goes away.
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = std::io::copy(&mut client, &mut std::io::sink());
}

/// Makes the socket send RST instead of FIN when its last descriptor closes,
/// and shuts its reading side down now so every thread blocked reading it
/// wakes up (`SHUT_RD` sends nothing, so the peer sees the RST, not a FIN).
fn reset(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
}
