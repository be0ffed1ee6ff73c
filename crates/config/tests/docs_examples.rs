//! Examples in docs/ are read from the Markdown at test time, so the docs and the parser cannot
//! drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use streamgate_config::parse;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced blocks of language `lang` in the section under the heading `heading` (up to the
/// next heading of any level), in order.
fn blocks(markdown: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = markdown
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown[start + 1..].lines().skip(1) {
        match &mut current {
            None if line.starts_with('#') => break,
            None if line == format!("```{lang}") => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => out.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    out
}

#[test]
fn blocks_are_found_by_heading_and_language() {
    let md = "# T\n```toml\na = 1\n```\n## One\ntext\n```toml\nb = 2\n```\n```sh\nls\n```\n\
              ```toml\nc = 3\n```\n## Two\n```toml\nd = 4\n```\n";
    assert_eq!(blocks(md, "## One", "toml"), ["b = 2\n", "c = 3\n"]);
    assert_eq!(blocks(md, "## One", "sh"), ["ls\n"]);
    assert_eq!(blocks(md, "## Two", "toml"), ["d = 4\n"]);
    assert!(blocks(md, "## Two", "sh").is_empty());
}

#[test]
fn the_error_report_example_is_what_check_prints() {
    let md = doc("configuration.md");
    let heading = "## How errors are reported";
    let [file] = &blocks(&md, heading, "toml")[..] else {
        panic!("one toml block under {heading}");
    };
    let [console] = &blocks(&md, heading, "console")[..] else {
        panic!("one console block under {heading}");
    };
    // The console block is the command, the error lines, then `echo $?` and the exit code.
    let shown: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("streamgate.toml:"))
        .collect();
    let errors = parse(Path::new("streamgate.toml"), file).unwrap_err();
    let printed: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(printed, shown);
}

#[test]
fn the_proxy_protocol_example_is_valid_as_written() {
    let md = doc("tls-and-tcp.md");
    let example = &blocks(&md, "## PROXY protocol", "toml")[0];
    assert!(example.contains("trusted_proxies"), "{example}");
    let config = parse(Path::new("streamgate.toml"), example).unwrap_or_else(|e| panic!("{e}"));
    let geo = config.geo.unwrap();
    assert_eq!(geo.database, None);
    assert_eq!(geo.trusted_proxies, ["10.0.0.0/8".parse().unwrap()]);
    assert!(config.listeners[0].proxy_protocol);
}

#[test]
fn the_dns_example_parses_with_its_names_and_settings() {
    let md = doc("configuration.md");
    let [file] = &blocks(&md, "## `[dns]`", "toml")[..] else {
        panic!("one toml block under [dns]");
    };
    let c = parse(Path::new("dns.toml"), file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dns.servers.len(), 2);
    assert_eq!(c.dns.min_ttl, std::time::Duration::from_secs(5));
    let r = &c.regions[0];
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.named_backends[0].to_string(), "origin.example.com:443");
    assert_eq!(r.named_backends[0].weight.get(), 2);
}

#[test]
fn the_consistent_hash_example_is_valid_as_written() {
    let md = doc("configuration.md");
    let example = &blocks(&md, "### `[services.hash]`", "toml")[0];
    let config = parse(Path::new("streamgate.toml"), example).unwrap_or_else(|e| panic!("{e}"));
    let hash = config.services[0].hash.clone().unwrap();
    assert_eq!(hash.key.to_string(), "header:x-user");
    let cookie = hash.cookie.unwrap();
    assert_eq!(cookie.name, "sg_backend");
    assert_eq!(cookie.ttl, Some(std::time::Duration::from_secs(3600)));
}

#[test]
fn the_compression_example_is_valid_under_a_service() {
    let md = doc("configuration.md");
    let [fragment] = &blocks(&md, "### `[services.compression]`", "toml")[..] else {
        panic!("one toml block under [services.compression]");
    };
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[regions]]\nname = \"r\"\n\
         backends = [ {{ address = \"127.0.0.1:9001\" }} ]\n[[services]]\nname = \"s\"\n\
         listeners = [\"web\"]\nregions = [\"r\"]\n{fragment}"
    );
    let c = parse(Path::new("streamgate.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let z = c.services[0].compression.clone().unwrap();
    assert_eq!(
        z.encodings,
        [
            streamgate_config::Encoding::Brotli,
            streamgate_config::Encoding::Gzip
        ]
    );
    assert_eq!(z.min_size, 512);
    assert!(z.compresses_type("text/css; charset=utf-8"));
    assert!(!z.compresses_type("image/png"));
}

#[test]
fn the_fleet_example_is_valid_with_its_credentials_file() {
    let md = doc("configuration.md");
    let [example] = &blocks(&md, "## `[fleet]`", "toml")[..] else {
        panic!("one toml block under [fleet]");
    };
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("fleet.creds");
    std::fs::write(&creds, "creds").unwrap();
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[regions]]\nname = \"r\"\n\
         backends = [ {{ address = \"127.0.0.1:9001\" }} ]\n[[services]]\nname = \"s\"\n\
         listeners = [\"web\"]\nregions = [\"r\"]\n{}",
        example.replace("/etc/streamgate/fleet.creds", &creds.display().to_string())
    );
    let c = parse(Path::new("streamgate.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let f = c.fleet.unwrap();
    assert_eq!((f.pop.as_str(), f.region.as_str()), ("fra1", "eu-central"));
    assert_eq!(f.stream(), "STREAMGATE_PURGES");
    assert_eq!(f.bucket(), "streamgate_overrides");
}

#[test]
fn fleet_mistakes_are_reported_with_their_lines() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[fleet]\n\
                servers = [\"http://x\"]\npop = \"fra 1\"\nheartbeat = \"0s\"\n";
    let e = parse(Path::new("f.toml"), text).unwrap_err().to_string();
    for want in [
        "f.toml:5: fleet.servers[0]: \"http://x\" is not a NATS URL",
        "f.toml:6: fleet.pop",
        "f.toml:7: fleet.heartbeat: must be more than 0",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
}
