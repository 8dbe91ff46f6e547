//! Tests of the validation pass: located problems, shipped examples, redaction.
use super::*;

fn problems(src: &str) -> Vec<Problem> {
    from_source(Path::new("/etc/pgrehearse/t.toml"), src).err().unwrap_or_default()
}

/// Every example shipped in `config/` must stay valid.
#[test]
fn shipped_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            if let Err(p) = from_source(&path, &src) {
                panic!("{}: {}", path.display(), p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "));
            }
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn problems_are_located_and_collected() {
    let src = "state_dir = \"/x\"\n[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\nlock_timeout = \"3 parsecs\"\non_failure = \"pray\"\n";
    let p = problems(src);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (Some(5), "targets[0].lock_timeout"));
    assert_eq!((p[1].line, p[1].key.as_str()), (Some(6), "targets[0].on_failure"));
}

#[test]
fn lint_rules_are_checked_by_name() {
    let src = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\nlint = { deny = [\"drop_table\", \"drop_tables\"] }\n";
    let p = problems(src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (Some(4), "targets[0].lint.deny[1]"));
    assert!(p[0].message.contains("unknown lint rule `drop_tables`"), "{}", p[0].message);
    assert!(p[0].message.contains("index_not_concurrent"), "the message lists the rules: {}", p[0].message);
}

#[test]
fn unknown_keys_name_their_line() {
    let p = problems("[store]\nkind = \"s3\"\nbucketz = \"x\"\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, Some(3));
    assert!(p[0].message.contains("bucketz"), "{}", p[0].message);
}

#[test]
fn shadow_must_not_be_live() {
    let same =
        "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h:5432/db\"\nshadow_url = \"postgres://postgres@h/db\"\n";
    let p = problems(same);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "targets[0].shadow_url");
    let server = same.replace("postgres@h/db", "postgres@h/postgres");
    assert!(problems(&server)[0].message.contains("shadow_on_live_server"));
    let allowed = format!("{server}shadow_on_live_server = true\n");
    assert!(problems(&allowed).is_empty());
}

#[test]
fn secrets_are_redacted_when_printed() {
    let src = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u:hunter2@h/db\"\n";
    let cfg = from_source(Path::new("/t.toml"), src).unwrap();
    let printed = toml::to_string(&cfg).unwrap() + &serde_json::to_string(&cfg).unwrap() + &format!("{cfg:?}");
    assert!(!printed.contains("hunter2"));
}

#[test]
fn s3_timeouts_default_parse_and_refuse_nonsense() {
    let base = "[store]\nkind = \"s3\"\nbucket = \"b\"\n";
    let target = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n";
    let s3 = |extra: &str| match from_source(Path::new("/t.toml"), &format!("{base}{extra}\n{target}"))
        .unwrap()
        .store
        .kind
    {
        StoreKind::S3(s) => (s.connect_timeout, s.io_timeout),
        other => panic!("not S3: {other:?}"),
    };
    assert_eq!(s3(""), (Duration::from_secs(10), Duration::from_secs(60)));
    assert_eq!(
        s3("connect_timeout = \"2s\"\nio_timeout = \"500ms\""),
        (Duration::from_secs(2), Duration::from_millis(500))
    );
    let p = problems(&format!("{base}io_timeout = \"soon\"\nconnect_timeout = \"1ms\"\n{target}"));
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["store.io_timeout", "store.connect_timeout"], "{p:?}");
}

#[test]
fn migration_role_is_a_name_or_absent() {
    let base = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n";
    let p = problems(&format!("{base}migration_role = \" \"\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (Some(4), "targets[0].migration_role"));
    let c = from_source(Path::new("/t.toml"), &format!("{base}migration_role = \"app_owner\"\n")).unwrap();
    assert_eq!(c.targets[0].migration_role.as_deref(), Some("app_owner"));
    assert_eq!(c.targets[0].restore_no_owner, None, "unset: owners restored when roles are mirrored");
}

#[test]
fn stall_timeout_is_a_duration_of_at_least_a_second() {
    let target = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n";
    let ok = from_source(Path::new("/t.toml"), &format!("stall_timeout = \"5s\"\n{target}")).unwrap();
    assert_eq!(ok.stall_timeout, Duration::from_secs(5));
    let default = from_source(Path::new("/t.toml"), target).unwrap();
    assert_eq!(default.stall_timeout, Duration::from_secs(60));
    for bad in ["500ms", "soon"] {
        let p = problems(&format!("stall_timeout = \"{bad}\"\n{target}"));
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!((p[0].line, p[0].key.as_str()), (Some(1), "stall_timeout"));
    }
}

#[test]
fn fence_writes_needs_a_release_that_can_restore() {
    let base = "[[targets]]\nname = \"a\"\nlive_url = \"postgres://u@h/db\"\n";
    let p = problems(&format!("{base}on_failure = \"down\"\nfence_writes = true\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (Some(5), "targets[0].fence_writes"));
    assert!(p[0].to_string().contains("on_failure = \"restore\""), "{}", p[0]);
    let ok = from_source(Path::new("/t.toml"), &format!("{base}fence_writes = true\n")).unwrap();
    assert!(ok.targets[0].release.fence_writes);
}
