//! `streamgate check` on files with several mistakes: the real binary names every one of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use streamgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `check` said the file is fine (exit 0), or its errors are shown.
fn passes(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_two_misspelt_keys_and_a_bare_number_duration_at_once() {
    let (_dir, path) = write_config(
        r#"[runtime]
workerz = 2

[timeouts]
idle = 30

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
protcol = "http"
"#,
    );
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let file = path.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{file}:2: runtime.workerz: unknown field `workerz`; did you mean `workers`?\n\
             {file}:5: timeouts.idle: 30 is a number; durations need a unit, e.g. \"30s\" or \"30ms\"\n\
             {file}:10: listeners[0].protcol: unknown field `protcol`; did you mean `protocol`?\n"
        )
    );
    assert!(out.stdout.is_empty());
}

/// The PROXY protocol example of docs/tls-and-tcp.md, read from the docs so the two cannot drift.
fn proxy_protocol_example() -> String {
    let md = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tls-and-tcp.md"),
    )
    .unwrap();
    let section = &md[md.find("\n## PROXY protocol\n").expect("the PROXY section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_string()
}

#[test]
fn the_documented_proxy_protocol_example_passes_check_without_a_geo_database() {
    let example = proxy_protocol_example();
    assert!(
        example.contains("trusted_proxies") && !example.contains("database"),
        "{example}"
    );
    let (_dir, path) = write_config(&example);
    let out = check(&path);
    passes(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (1 listeners, 0 regions, 0 services)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A fleet key too short to sign with is named by `check`, before a start would fail on it.
#[test]
fn check_refuses_a_short_fleet_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, "short\n").unwrap();
    let (_dir, path) = write_config(&format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\npop = \"a\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fleet.key_file") && err.contains("the key is 5 bytes"),
        "{err}"
    );
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let out = check(&path);
    passes(&out);
}
