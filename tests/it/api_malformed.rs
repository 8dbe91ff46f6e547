//! The daemon's HTTP API under malformed and hostile requests, sent as raw
//! bytes over TCP to the real `pgrehearse daemon` (one live cluster, a local
//! store, a bearer token):
//!
//! - garbage instead of HTTP, a non-UTF-8 request line, unknown methods:
//!   a 4xx (or a closed connection), never a 5xx;
//! - a 1 MiB header and 2000 headers: 431; a 5 MiB body, with a length and chunked: 413;
//! - invalid JSON: 400; JSON with wrong types or no object: 422; a body
//!   that is not UTF-8: 400;
//! - path traversal (`..`, percent-encoded `..%2F`, an encoded NUL): 404 and
//!   no file content;
//! - slowloris clients that send a header line (or a body byte) every
//!   second: the daemon keeps answering others at once, and closes the slow
//!   connections itself (a request must arrive within 30 s);
//! - 300 idle connections held open plus 40 concurrent requests: all served;
//!   a connection that never sends anything is closed after 60 s.
//!
//! A request whose handler is stuck on a store that does not answer (S3
//! behind a stalled proxy) gets a 503 that says so before the connection's
//! deadline, not a connection closed without an answer.
//!
//! After every case `/healthz` answers 200, the process is alive, and its
//! stderr has no "panicked".

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::cli::{Background, Pgr, local_store_toml, s3_store_toml, target_toml};
use crate::harness::daemon::{daemon_toml, start};
use crate::harness::http;
use crate::harness::pg::Cluster;
use crate::harness::proxy::{Fault, Proxy};
use crate::harness::s3::S3Server;

const TOKEN: &str = "malformed-test-token-42a9";

struct Daemon {
    _live: Cluster,
    pgr: Pgr,
    addr: String,
    bg: Background,
}

impl Daemon {
    /// A daemon with a local store.
    fn start() -> Daemon {
        Daemon::with_store(|pgr| local_store_toml(pgr, ""))
    }

    /// A daemon whose `state_dir` and `[store]` are `store(pgr)`.
    fn with_store(store: impl FnOnce(&Pgr) -> String) -> Daemon {
        let live = Cluster::start();
        live.create_app_db("app", "app", "pw-malformed");
        let pgr = Pgr::new();
        let token = pgr.write_secret("api-token", &format!("{TOKEN}\n"));
        let port = http::free_port();
        pgr.write_config(&format!(
            "{}{}{}",
            store(&pgr),
            target_toml("app", &live.url("app", "app", "pw-malformed"), ""),
            daemon_toml(port, Some(&token))
        ));
        let bg = start(&pgr, port);
        Daemon { _live: live, pgr, addr: format!("127.0.0.1:{port}"), bg }
    }

    /// The daemon is alive, has not panicked, and `/healthz` answers 200.
    fn assert_healthy(&mut self, after: &str) {
        let t0 = Instant::now();
        let r = http::get(&self.addr, "/healthz");
        assert!(
            r.as_ref().is_some_and(|r| r.status == 200),
            "after {after}: /healthz did not answer 200: {r:?}\nstderr:\n{}",
            self.bg.stderr_so_far()
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "after {after}: /healthz took {:?}", t0.elapsed());
        assert!(self.bg.running(), "after {after}: the daemon exited\nstderr:\n{}", self.bg.stderr_so_far());
        let err = self.bg.stderr_so_far();
        assert!(!err.contains("panicked"), "after {after}: the daemon panicked:\n{err}");
    }
}

/// Sends `bytes` (write errors ignored: the server may close early) while a
/// second thread reads the answer; returns the status code, if any came,
/// and the raw answer.
fn raw(addr: &str, bytes: Vec<u8>) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in bytes.chunks(64 * 1024) {
            if w.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = w.flush();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    // Read until the server closes, or a whole response head with its
    // declared body has arrived.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if complete(&got) {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
    (status, text)
}

fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok());
    len.is_some_and(|n| body.len() >= n)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

fn approval(body: &[u8]) -> Vec<u8> {
    let auth = format!("Bearer {TOKEN}");
    request("POST", "/api/v1/approvals", &[("Authorization", &auth), ("Content-Type", "application/json")], body)
}

/// A 4xx answer, or the connection closed without one; never 2xx/5xx.
fn assert_refused(case: &str, (status, text): &(Option<u16>, String)) {
    if let Some(s) = status {
        assert!((400..500).contains(s), "{case}: expected a 4xx, got {s}:\n{}", head(text));
    }
}

/// The answer's body is the API's `{"error": "..."}` with a message.
fn assert_json_error(case: &str, answer: &str) {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{case}: no body in {answer}"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {body}"));
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: no error message: {v}");
}

fn head(text: &str) -> &str {
    &text[..text.len().min(600)]
}

#[test]
fn malformed_requests_never_hurt_the_daemon() {
    let mut d = Daemon::start();
    d.assert_healthy("start");
    let addr = d.addr.clone();
    // A connection that never sends a byte: closed by the daemon once idle
    // for 60 s (not at the 30 s a started request gets).
    let idle_one = {
        let mut s = TcpStream::connect(&addr).expect("connect");
        std::thread::spawn(move || {
            let t0 = Instant::now();
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            let mut buf = [0u8; 64];
            let r = s.read(&mut buf);
            (t0.elapsed(), r.map_err(|e| e.kind()))
        })
    };

    // Not HTTP at all.
    let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    garbage.extend_from_slice(b"\r\n\r\n");
    assert_refused("garbage", &raw(&addr, garbage));
    d.assert_healthy("garbage bytes");
    assert_refused(
        "binary request line",
        &raw(&addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()),
    );
    d.assert_healthy("a TLS ClientHello");
    let r = raw(&addr, b"GET /api/v1/rehearsals/\xff\xfe\x00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert_refused("non-UTF-8 path", &r);
    d.assert_healthy("a non-UTF-8 path");
    let r = raw(&addr, request("GET", "/api/v1/rehearsals/%FF%FE", &[], b""));
    assert_refused("percent-encoded non-UTF-8 id", &r);
    assert_eq!(r.0, Some(400), "percent-encoded non-UTF-8 id:\n{}", head(&r.1));
    assert_json_error("percent-encoded non-UTF-8 id", &r.1);
    d.assert_healthy("a percent-encoded non-UTF-8 id");
    let r = raw(&addr, request("GET", "/api/v1/snapshots?target=%FF&x[=1&&=", &[], b""));
    assert_eq!(r.0, Some(400), "a garbage query:\n{}", head(&r.1));
    assert_json_error("a garbage query", &r.1);
    d.assert_healthy("a garbage query");

    // Unknown and unexpected methods.
    for (m, p) in
        [("BREW", "/"), ("DELETE", "/api/v1/approvals"), ("PUT", "/healthz"), ("TRACE", "/"), ("CONNECT", "x:1")]
    {
        let r = raw(&addr, request(m, p, &[], b""));
        assert_refused(&format!("{m} {p}"), &r);
        d.assert_healthy(&format!("{m} {p}"));
    }

    // Path traversal: no file is ever served.
    for p in [
        "/api/v1/rehearsals/../../etc/passwd",
        "/api/v1/rehearsals/..%2F..%2F..%2Fetc%2Fpasswd",
        "/../../../../etc/passwd",
        "/api/v1/releases/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/v1/rehearsals/x%00y",
    ] {
        let r = raw(&addr, request("GET", p, &[], b""));
        assert_refused(p, &r);
        assert_eq!(r.0, Some(404), "{p}: expected 404:\n{}", head(&r.1));
        assert!(!r.1.contains("root:"), "{p} served /etc/passwd:\n{}", r.1);
        d.assert_healthy(p);
    }

    // A header far beyond any sane size.
    let big = "a".repeat(1 << 20);
    let r = raw(&addr, request("GET", "/healthz", &[("X-Big", &big)], b""));
    assert_eq!(r.0, Some(431), "a 1 MiB header:\n{}", head(&r.1));
    d.assert_healthy("a 1 MiB header");
    let many: Vec<(String, String)> = (0..2000).map(|i| (format!("X-H{i}"), "v".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = raw(&addr, request("GET", "/healthz", &many, b""));
    assert_eq!(r.0, Some(431), "2000 headers:\n{}", head(&r.1));
    d.assert_healthy("2000 headers");

    // A body beyond the limit: 413, with a length and chunked.
    let huge = vec![b'{'; 5 << 20];
    let r = raw(&addr, approval(&huge));
    assert_eq!(r.0, Some(413), "a 5 MiB body:\n{}", head(&r.1));
    d.assert_healthy("a 5 MiB body");
    let mut chunked = request(
        "POST",
        "/api/v1/approvals",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    for _ in 0..80 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(&addr, chunked);
    assert_eq!(r.0, Some(413), "a 5 MiB chunked body:\n{}", head(&r.1));
    d.assert_healthy("a 5 MiB chunked body");
    // A length that lies (more than is sent, then the client goes away).
    let mut lying = approval(b"");
    lying.truncate(lying.len() - 2);
    lying.extend_from_slice(b"Content-Length: 1000\r\n\r\n{\"plan\"");
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(&lying).expect("send a short body");
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    d.assert_healthy("a body shorter than its length");

    // Bodies that are not what the API takes.
    for (case, body, want) in [
        ("invalid JSON", &b"{\"plan\": \"abc\", \"by\": "[..], 400),
        ("not UTF-8", &b"{\"plan\": \"\xff\xfe\", \"by\": \"x\"}"[..], 400),
        ("wrong types", &b"{\"plan\": 5, \"by\": [\"a\"], \"note\": {}}"[..], 422),
        ("an array", &b"[1, 2, 3]"[..], 422),
        ("a string", &b"\"plan\""[..], 422),
        // Refused as "not an approval object" before the parser's depth limit.
        ("deep nesting", &"[".repeat(100_000).into_bytes()[..], 422),
        ("a huge number", &b"{\"plan\": 1e999999, \"by\": \"x\"}"[..], 400),
    ] {
        let r = raw(&addr, approval(body));
        assert_eq!(r.0, Some(want), "{case}:\n{}", head(&r.1));
        assert_json_error(case, &r.1);
        d.assert_healthy(case);
    }

    // Slowloris: header lines (or, on every other connection, the bytes of
    // a body) trickling in, one a second.
    let slow: Vec<_> = (0..20)
        .map(|n| {
            let addr = addr.clone();
            std::thread::spawn(move || -> Option<Duration> {
                let mut s = TcpStream::connect(&addr).ok()?;
                let t0 = Instant::now();
                let slow_body = n % 2 == 1;
                let head = if slow_body {
                    format!(
                        "POST /api/v1/approvals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                    )
                } else {
                    "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_string()
                };
                s.write_all(head.as_bytes()).ok()?;
                let mut i = 0;
                while t0.elapsed() < Duration::from_secs(90) {
                    std::thread::sleep(Duration::from_secs(1));
                    i += 1;
                    let more = if slow_body { " ".to_string() } else { format!("X-Slow-{i}: {i}\r\n") };
                    if s.write_all(more.as_bytes()).is_err() {
                        return Some(t0.elapsed()); // the server closed it
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..10 {
        d.assert_healthy(&format!("slowloris, request {i}"));
        std::thread::sleep(Duration::from_millis(300));
    }

    // Many connections at once: 300 idle ones held open, 40 requests in parallel.
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    assert_eq!(idle.len(), 300, "could not open 300 connections");
    let workers: Vec<_> = (0..40)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http::get(&addr, "/api/v1/targets").map(|r| r.status))
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), Some(200), "a request among 300 idle connections");
    }
    d.assert_healthy("300 idle connections and 40 concurrent requests");
    drop(idle);

    // The slow connections are closed by the server, not kept forever.
    let closed: Vec<Option<Duration>> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        closed.iter().all(|c| c.is_some_and(|t| t < Duration::from_secs(60))),
        "slowloris connections were not closed by the daemon within 60 s: {closed:?}"
    );
    d.assert_healthy("slowloris");
    let (after, read) = idle_one.join().unwrap();
    assert!(
        matches!(read, Ok(0)) && after >= Duration::from_secs(55) && after < Duration::from_secs(70),
        "an idle connection: read {read:?} after {after:?} (expected a close after about 60 s)"
    );
    let _ = &d.pgr;
}

#[test]
fn a_handler_stuck_on_the_store_answers_503_in_time() {
    let s3 = S3Server::start();
    s3.create_bucket("stuck");
    let proxy = Proxy::start(s3.addr());
    let endpoint = proxy.endpoint();
    let mut d = Daemon::with_store(|pgr| s3_store_toml(pgr, &endpoint, "stuck", ""));
    d.assert_healthy("start");
    let r = raw(&d.addr, request("GET", "/api/v1/snapshots", &[], b""));
    assert_eq!(r.0, Some(200), "snapshots with S3 up:\n{}", head(&r.1));

    proxy.set(Fault::Stall { until: None });
    let t0 = Instant::now();
    let r = raw(&d.addr, request("GET", "/api/v1/snapshots", &[], b""));
    let took = t0.elapsed();
    eprintln!("stalled store: answered {:?} after {took:?}", r.0);
    assert_eq!(r.0, Some(503), "a stalled store after {took:?}:\n{}", head(&r.1));
    // The handler's own store timeout (10 s) answers, well before the
    // connection's 30 s deadline would have cut it off.
    let (_, body) = r.1.split_once("\r\n\r\n").expect("a body");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert!(v["error"].as_str().is_some_and(|e| e.contains("snapshot store")), "the 503 does not say why: {v}");
    assert!(took < Duration::from_secs(30), "answered only after {took:?}");
    d.assert_healthy("a stalled store");
    proxy.clear();
    let r = raw(&d.addr, request("GET", "/api/v1/snapshots", &[], b""));
    assert_eq!(r.0, Some(200), "snapshots once S3 is back:\n{}", head(&r.1));
    d.assert_healthy("S3 back");
}
