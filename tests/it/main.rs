//! The integration test binary: every test runs the real `pgrehearse`
//! executable (or the harness itself) against real PostgreSQL clusters and a
//! real S3 server, and reads results back with independent tools (AWS CLI,
//! `zstd`, `pg_restore`, `psql`).
//!
//! Prerequisites are installed by `scripts/test.sh`.

mod harness; // the real components the tests start (clusters, moto, SMTP, proxy) and shared rigs

mod api; // the daemon's HTTP API (tokens, request validation, degraded reads) on a real daemon
mod api_malformed; // hostile and malformed raw requests to the API; the daemon stays up
mod approve; // `approve`: which plans may be approved, and what `status` shows of it
mod cli_docs; // completions, man pages and --help from the real binary, without a config
mod command_secrets; // a failing `command` tool never leaks live's password anywhere
mod config; // `config check`: located refusals (exit 78), redacted echo, --json
mod crash; // pgrehearse killed or stopped mid-snapshot; two snapshots of one target
mod daemon; // `pgrehearse daemon` end to end: schedules, sd_notify, SIGHUP, SIGTERM
mod demo; // `pgrehearse demo`, the README's first command
mod email; // mail through a real SMTP server and the file transport
mod encryption; // age client-side encryption round trip and a wrong identity
mod errors; // errors classify themselves: exit codes and the daemon's error_kind
mod faults_kill; // SIGKILL at random points of releases
mod faults_pg; // network faults between pgrehearse and PostgreSQL (fault proxy)
mod faults_s3; // network faults between pgrehearse and S3 (fault proxy)
mod faults_stop; // live's server stopped mid-release, recovered after its restart
mod fence; // the write fence (fence_writes): a writer's attempts fail, nothing stranded, lifted on every path
mod jobs; // the job runner: CLI mail, --no-mail, pruning and the mail digest in the daemon
mod migration_files; // odd migration files (BOM, CRLF, empty, bad names) as tools run them
mod payload_after_release; // a Payload project's next rehearsal after a release (CLI and daemon)
mod progress; // progress output on a terminal and in logs
mod prune; // retention on a synthetic history; prune refuses after a failure
mod readme; // the README checked against the binary (TOML, commands, metrics)
mod rehearse_checks; // what a rehearsal flags: drift, failures, reversibility, lint, catch-up
mod rehearse_command; // rehearsals of a `command` migration source
mod rehearse_diesel; // rehearsals and status of a diesel project
mod rehearse_downs; // every down judged on its own: column order, failed, differing and no-op downs
mod rehearse_payload; // rehearsals of a real Payload CMS 3 project through its CLI
mod rehearse_probes; // what the application would wait for while each migration runs (probes, 1 M rows)
mod rehearse_queries; // query plans before and after the plan on the copy: dropped index, unrelated column, live's pg_stat_statements (1 M rows)
mod rehearse_roles; // the rehearsal runs as live's role: privileges, owners, shadow role changes, ANALYZE
mod rehearse_sqlx; // rehearsals of a sqlx project on 1 M rows: locks, rewrites, timings
mod release; // `apply` with sqlx: happy path, refusals, promotion, post-checks, signals
mod release_command; // releases of a `command` migration source
mod release_crash; // SIGKILL at every journaled step of a release: live exactly pre or post
mod release_failure; // releases that fail on live (rollback, restore, down, halt) and lock waits
mod release_payload; // releases of a real Payload CMS 3 project, incl. password via PGPASSWORD
mod release_queue; // the lock-queue guard: readers behind a waiting ALTER, retries, the blocker named, preflight
mod release_watch; // the performance watch after a release: pg_stat_statements before and after
mod release_writes; // the application's writes during a release that ends restored (sequences carried forward)
mod report_accuracy; // what failure reports say: PostgreSQL's DETAIL/HINT, one error object, server version, sampling
mod restore; // disaster recovery: `restore --as` and `--replace-live`
mod roundtrip; // shared checks of a snapshot read back with independent clients
mod salvage; // `salvage`: stranded writes of a restored release put back into live, skips, refusals
mod secrets; // the password never in argv, logs or written files
mod smoke; // the harness itself (moto, AWS CLI, fault proxy)
mod snapshot_failures; // snapshots that fail midway leave nothing that looks like one
mod snapshot_local; // snapshots to the local store; row counts in the dump's MVCC snapshot
mod snapshot_s3; // snapshots to S3 read back with the AWS CLI and pg_restore
mod status_page; // the status page in headless Chromium: approve with the token
mod stranded; // writes a restore strands: counted exactly, told everywhere, an honest unknown on failure
mod systemd; // the shipped unit, sysusers and tmpfiles checked with systemd's tools
mod targets; // multi-target configs, credentials directory, dump_globals
mod verify; // restore drills: restore, template clone, RTO, mismatches
mod verify_checks; // a drill's own queries and pg_amcheck
