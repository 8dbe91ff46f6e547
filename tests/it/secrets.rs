//! The database password never appears in any process's argv (children get
//! it through their environment), nor in pgrehearse's output or logs at
//! debug level, nor in the files it writes.

use crate::harness::cli::{Pgr, local_store_toml};
use crate::harness::pg::{Cluster, percent_encode};
use crate::harness::proc::{cmdline, processes};
use crate::harness::{data, files_under};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Distinctive, and with characters that need percent-encoding in a URL.
const PASSWORD: &str = "Pgr#Leak@Canary:7Qx/z";

#[test]
fn password_never_in_argv_or_logs() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 500);
    // Enough data that the dump runs for a second or two while we watch.
    data::create_blob_table(&c, "app", "app", 48);

    let mut pgr = Pgr::new();
    pgr.env("RUST_LOG", "debug");
    let url_file = pgr.write_secret("live-url", &format!("{}\n", c.url("app", "app", PASSWORD)));
    pgr.write_config(&format!(
        "{}[[targets]]\nname = \"app\"\nlive_url_file = \"{}\"\n",
        local_store_toml(&pgr, ""),
        url_file.display()
    ));
    let needles = [PASSWORD.to_string(), percent_encode(PASSWORD)];

    let done = AtomicBool::new(false);
    let leaks = Mutex::new(Vec::<String>::new());
    let saw_pg_dump = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                for (pid, _, comm) in processes() {
                    let Some(argv) = cmdline(pid) else { continue };
                    if comm == "pg_dump" {
                        saw_pg_dump.store(true, Ordering::SeqCst);
                    }
                    if needles.iter().any(|n| argv.contains(n.as_str())) {
                        leaks.lock().unwrap().push(format!("{pid} {comm}: {argv}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        let run = pgr.run_json(&["snapshot"]);
        done.store(true, Ordering::SeqCst);
        run
    });
    run.ok();
    assert!(saw_pg_dump.load(Ordering::SeqCst), "never saw pg_dump running: the scan proved nothing");
    let leaks = leaks.into_inner().unwrap();
    assert!(leaks.is_empty(), "password on a command line: {leaks:?}");
    assert!(run.stderr.contains("DEBUG"), "RUST_LOG=debug produced no debug logs:\n{}", run.stderr);
    for n in &needles {
        assert!(!run.stdout.contains(n.as_str()), "password in stdout:\n{}", run.stdout);
        assert!(!run.stderr.contains(n.as_str()), "password in logs:\n{}", run.stderr);
    }

    // Nor in anything it wrote: state, manifest, dump metadata.
    for f in files_under(pgr.dir()) {
        // The dump itself holds table data, not connection settings; it is
        // big and compressed, so scanning it proves little and costs much.
        let is_dump = f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dump.pgdump"));
        if f == url_file || f == pgr.config_path() || is_dump {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        for n in &needles {
            assert!(!bytes.windows(n.len()).any(|w| w == n.as_bytes()), "password written to {f:?}");
        }
    }
}
