//! A small TCP fault proxy between pgrehearse and the S3 server, to make the
//! network fail on cue: `set_down(true)` resets every open connection and
//! resets new ones at once, as a crashed or unreachable server would;
//! `set_down(false)` lets traffic through again.
//!
//! Plain std threads: two copy threads per connection are plenty for a test,
//! and a fault mode is one shared enum, so stalls or injected HTTP errors can
//! be added as further modes without restructuring.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the proxy does with traffic right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward bytes both ways.
    Up,
    /// Reset every connection.
    Down,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// Both ends of every live connection by id, so a mode change can cut
    /// them; an entry leaves when both directions have finished.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

/// A running proxy on a loopback port; stops accepting on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Up),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the proxy, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `true`: reset all current connections and every new one;
    /// `false`: forward again.
    pub fn set_down(&self, down: bool) {
        *self.shared.mode.lock().unwrap() = if down { Mode::Down } else { Mode::Up };
        if down {
            for (_, (a, b)) in self.shared.conns.lock().unwrap().drain() {
                reset(&a);
                reset(&b);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        for (_, (a, b)) in self.shared.conns.lock().unwrap().drain() {
            reset(&a);
            reset(&b);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if *shared.mode.lock().unwrap() == Mode::Down {
            reset(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            reset(&client);
            continue;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.conns.lock().unwrap().insert(id, (c2, s2));
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let pending = Arc::new(AtomicUsize::new(2));
        for (from, to) in [(client, server), (s3, c3)] {
            let (shared, pending) = (shared.clone(), pending.clone());
            thread::spawn(move || {
                pump(from, to);
                if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                    shared.conns.lock().unwrap().remove(&id);
                }
            });
        }
    }
}

/// Copies `from` → `to` until EOF or error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Makes the socket send RST instead of FIN when its last descriptor closes,
/// and shuts it down now so every thread blocked on it wakes up.
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
    let _ = s.shutdown(Shutdown::Both);
}
