//! A real S3 server per test (`moto_server` from the test virtualenv) and an
//! independent client to read it back: the AWS CLI, not the Rust SDK that
//! pgrehearse uses, so an object the SDK mangled (for example aws-chunked
//! framing stored as data) cannot look right by construction.

use super::{output, run_ok, venv, wait_for};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Credentials moto accepts; pgrehearse is configured with the same.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// A running `moto_server`, killed on drop.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    _log_dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto on a free loopback port and waits until it answers HTTP.
    pub fn start() -> S3Server {
        let log_dir = tempfile::Builder::new().prefix("pgr-moto-").tempdir().expect("temp dir");
        let bin = venv().join("bin/moto_server");
        assert!(bin.exists(), "{bin:?} missing: run scripts/test.sh (it installs moto)");
        for attempt in 0..5 {
            // Ask the kernel for a free port, then hand it to moto. Another
            // process may grab it in between: then moto exits and we retry.
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let log = std::fs::File::create(log_dir.path().join(format!("moto-{attempt}.log"))).expect("log file");
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {bin:?}: {e}"));
            let up = wait_for("moto to start", Duration::from_secs(30), Duration::from_millis(50), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                http_answers(addr).then_some(true)
            });
            if up {
                return S3Server { child, addr, _log_dir: log_dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start; logs in {:?}", log_dir.keep());
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An `aws --endpoint-url … s3api <args>` command with test credentials
    /// and no user configuration.
    pub fn aws(&self, args: &[&str]) -> Command {
        self.aws_at(&self.endpoint(), args)
    }

    /// Like [`S3Server::aws`] but through another endpoint (e.g. a proxy).
    pub fn aws_at(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(venv().join("bin/aws"));
        cmd.arg("--endpoint-url")
            .arg(endpoint)
            .arg("--output")
            .arg("json")
            .arg("s3api")
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        cmd
    }

    fn aws_json(&self, args: &[&str]) -> Value {
        let out = run_ok(&mut self.aws(args));
        if out.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?} printed non-JSON ({e}): {out}"))
    }

    pub fn create_bucket(&self, bucket: &str) {
        run_ok(&mut self.aws(&["create-bucket", "--bucket", bucket]));
    }

    /// Keys and sizes of all objects under `prefix`, sorted by key.
    pub fn list_objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let v = self.aws_json(&["list-objects-v2", "--bucket", bucket, "--prefix", prefix]);
        let mut out: Vec<(String, u64)> = v
            .get("Contents")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|o| (o["Key"].as_str().unwrap().to_string(), o["Size"].as_u64().unwrap())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Downloads one object to `path` (plain GetObject).
    pub fn download(&self, bucket: &str, key: &str, path: &Path) {
        run_ok(self.aws(&["get-object", "--bucket", bucket, "--key", key]).arg(path));
    }

    /// Downloads and parses a JSON object.
    pub fn get_json(&self, bucket: &str, key: &str) -> Value {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        self.download(bucket, key, tmp.path());
        let text = std::fs::read_to_string(tmp.path()).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {text}"))
    }

    /// In-progress multipart uploads of the bucket as `(key, upload_id)`.
    pub fn list_multipart_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let v = self.aws_json(&["list-multipart-uploads", "--bucket", bucket]);
        v.get("Uploads")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|u| (u["Key"].as_str().unwrap().to_string(), u["UploadId"].as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Parts uploaded so far as `(part_number, size)`.
    pub fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Vec<(u64, u64)> {
        let v = self.aws_json(&["list-parts", "--bucket", bucket, "--key", key, "--upload-id", upload_id]);
        v.get("Parts")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|p| (p["PartNumber"].as_u64().unwrap(), p["Size"].as_u64().unwrap())).collect())
            .unwrap_or_default()
    }

    /// HeadObject's JSON (ETag, ContentLength, …).
    pub fn head(&self, bucket: &str, key: &str) -> Value {
        self.aws_json(&["head-object", "--bucket", bucket, "--key", key])
    }

    /// Whether an object exists (HeadObject succeeds).
    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        output(&mut self.aws(&["head-object", "--bucket", bucket, "--key", key])).status.success()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once something on `addr` answers an HTTP request with a status line.
fn http_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && buf.starts_with(b"HTTP/"))
}
