//! Checks of the harness itself, independent of the binary: if these fail,
//! the machine is not set up (run `scripts/test.sh`), not pgrehearse broken.

use crate::harness::pg::Cluster;
use crate::harness::proxy::Proxy;
use crate::harness::s3::S3Server;
use crate::harness::{data, output};

#[test]
fn cluster_starts_and_enforces_passwords() {
    let c = Cluster::start();
    assert_eq!(c.psql("postgres", "SELECT 1 + 1"), "2");
    c.create_app_db("app", "app", "right pw");
    data::create_rich_schema(&c, "app", "app", 10);
    assert_eq!(c.psql("app", "SELECT count(*) FROM customers"), "10");
    assert_eq!(c.psql("app", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"), "app");

    // The app role really needs its password: right one works, wrong one and
    // none are refused.
    let try_login = |pw: Option<&str>| {
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(c.url("app", "app", pw.unwrap_or("")))
            .args(["-XAtq", "-w", "-c", "SELECT current_user"])
            .env_remove("PGPASSWORD");
        output(&mut cmd)
    };
    let ok = try_login(Some("right pw"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "app");
    assert!(!try_login(Some("wrong")).status.success());
    assert!(!try_login(None).status.success());

    c.restart();
    assert_eq!(c.psql("app", "SELECT count(*) FROM orders"), "20");
}

#[test]
fn moto_and_aws_cli_round_trip() {
    let s3 = S3Server::start();
    s3.create_bucket("smoke");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("obj");
    std::fs::write(&src, b"hello moto").unwrap();
    crate::harness::run_ok(s3.aws(&["put-object", "--bucket", "smoke", "--key", "a/b.txt", "--body"]).arg(&src));
    assert_eq!(s3.list_objects("smoke", "a/"), vec![("a/b.txt".to_string(), 10)]);
    let dst = dir.path().join("back");
    s3.download("smoke", "a/b.txt", &dst);
    assert_eq!(std::fs::read(&dst).unwrap(), b"hello moto");
    assert!(s3.list_multipart_uploads("smoke").is_empty());
}

#[test]
fn proxy_forwards_and_cuts() {
    let s3 = S3Server::start();
    let proxy = Proxy::start(s3.addr());
    let through = |endpoint: &str| {
        let mut cmd = s3.aws_at(endpoint, &["list-buckets"]);
        cmd.env("AWS_MAX_ATTEMPTS", "1").env("AWS_RETRY_MODE", "standard");
        output(&mut cmd).status.success()
    };
    assert!(through(&proxy.endpoint()), "proxy does not forward");
    proxy.set_down(true);
    assert!(!through(&proxy.endpoint()), "proxy forwards while down");
    proxy.set_down(false);
    assert!(through(&proxy.endpoint()), "proxy does not recover");
}
