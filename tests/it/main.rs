//! The integration test binary: every test runs the real `pgrehearse`
//! executable (or the harness itself) against real PostgreSQL clusters and a
//! real S3 server, and reads results back with independent tools (AWS CLI,
//! `zstd`, `pg_restore`, `psql`).
//!
//! Prerequisites are installed by `scripts/test.sh`.

mod harness;

mod api;
mod api_malformed;
mod approve;
mod cli_docs;
// A failing `command` tool: the database password appears in no output, record, store row, report or mail.
mod command_secrets;
mod config;
mod crash;
mod daemon;
mod demo;
mod email;
mod encryption;
mod errors;
mod faults_kill;
mod faults_pg;
mod faults_s3;
mod jobs;
mod migration_files;
mod progress;
mod prune;
mod readme;
mod rehearse_checks;
mod rehearse_command;
mod rehearse_diesel;
mod rehearse_payload;
mod rehearse_sqlx;
mod release;
mod release_command;
mod release_crash;
mod release_failure;
mod release_payload;
mod restore;
mod roundtrip;
mod secrets;
mod smoke;
mod snapshot_failures;
mod snapshot_local;
mod snapshot_s3;
mod status_page;
mod systemd;
mod targets;
mod verify;
mod verify_checks;
