//! `parse` reports every problem of a file at once: unknown keys (with a suggestion), values of
//! the wrong type, missing keys and what validation finds, each with its line and key path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use streamgate_config::parse;

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("sg.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const LISTENER: &str = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n";

/// (what, file, every expected error in order)
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "two misspelt keys in two tables",
        "[runtime]\nworkerz = 2\n\n[timeouts]\nidel = \"30s\"\n",
        &[
            "sg.toml:2: runtime.workerz: unknown field `workerz`; did you mean `workers`?",
            "sg.toml:5: timeouts.idel: unknown field `idel`; did you mean `idle`?",
        ],
    ),
    (
        "a bare number for a duration hides nothing else",
        "[timeouts]\nidle = 30\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1\"\n",
        &[
            "sg.toml:2: timeouts.idle: 30 is a number; durations need a unit, e.g. \"30s\" or \"30ms\"",
            "sg.toml:6: listeners[0].listen: \"127.0.0.1\" is not an address; expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
        ],
    ),
    (
        "other non-strings for durations",
        "[timeouts]\nconnect = 2.5\nidle = true\n",
        &[
            "sg.toml:2: timeouts.connect: 2.5 is a number; durations need a unit, e.g. \"2.5s\" or \"2.5ms\"",
            "sg.toml:3: timeouts.idle: true is a boolean; durations are strings with a unit, e.g. \"30s\" or \"250ms\"",
        ],
    ),
    (
        "unknown keys in nested tables, inline tables and arrays of tables",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ { address = \"127.0.0.1:9001\", wieght = 2 } ]\n\n\
         [[services]]\nname = \"a\"\nlisteners = [\"web\"]\nregions = [\"local\"]\n\n\
         [services.cache]\nmax_size = \"64MiB\"\nmax_objekt_size = \"1MiB\"\n\n\
         [services.helth]\ninterval = \"1s\"\n",
        &[
            "sg.toml:7: regions[0].backends[0].wieght: unknown field `wieght`; did you mean `weight`?",
            "sg.toml:16: services[0].cache.max_objekt_size: unknown field `max_objekt_size`; did you mean `max_object_size`?",
            "sg.toml:18: services[0].helth: unknown field `helth`; did you mean `health`?",
        ],
    ),
    (
        "a key far from every known one lists them",
        "[runtime]\ncolour = \"blue\"\n[metrics]\nport = 9100\n[timout]\n",
        &[
            "sg.toml:2: runtime.colour: unknown field `colour`; expected one of `workers`, `shutdown_timeout`, `max_connections`",
            "sg.toml:4: metrics.port: unknown field `port`; expected `listen`",
            "sg.toml:5: timout: unknown field `timout`; did you mean `timeouts`?",
        ],
    ),
    (
        "a wrong-typed required key is not also reported missing",
        "[[listeners]]\nname = 5\nlisten = \"127.0.0.1:8080\"\nprotcol = \"http\"\n",
        &[
            "sg.toml:2: listeners[0].name: invalid type: integer `5`, expected a string",
            "sg.toml:4: listeners[0].protcol: unknown field `protcol`; did you mean `protocol`?",
        ],
    ),
    (
        "a missing required key is reported with the rest",
        "[[listeners]]\nlisten = \"127.0.0.1:8080\"\nmax_conections = 5\n",
        &[
            "sg.toml:1: listeners[0].name: missing field `name`",
            "sg.toml:3: listeners[0].max_conections: unknown field `max_conections`; did you mean `max_connections`?",
        ],
    ),
    (
        "a wrong type inside an array drops the array, not its neighbours",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ { address = \"127.0.0.1:9001\" } ]\n\n\
         [[services]]\nname = \"a\"\nlisteners = [\"web\", 7]\nregions = [\"nowhere\"]\n",
        &[
            "sg.toml:11: services[0].listeners[1]: invalid type: integer `7`, expected a string",
            "sg.toml:12: services[0].regions[0]: no region named \"nowhere\"; defined regions: local",
        ],
    ),
    (
        "a number for a size says what sizes look like",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nmax_header_bytes = 65536\n",
        &[
            "sg.toml:4: listeners[0].max_header_bytes: 65536 is a number; sizes are strings, e.g. \"65536\" (bytes), \"64KiB\" or \"1GiB\"",
        ],
    ),
    (
        "the geo policy needs a database even when [geo] is there for trusted_proxies",
        "[geo]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ { address = \"127.0.0.1:9001\" } ]\n\n\
         [[services]]\nname = \"a\"\nlisteners = [\"web\"]\nregions = [\"local\"]\nregion_policy = \"geo\"\n",
        &[
            "sg.toml:16: services[0].region_policy: policy \"geo\" needs geo.database; the [geo] table at line 1 has none",
        ],
    ),
    (
        "paths written otherwise than requests are matched (normalised) would never match",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ { address = \"127.0.0.1:9001\" } ]\n\n\
         [[services]]\nname = \"a\"\nlisteners = [\"web\"]\nregions = [\"local\"]\n\
         path_prefix = \"/a//b/\"\n\
         rules = [\n\
           { match = { path_prefix = \"/admin%2f\" }, deny = true },\n\
           { match = { path = \"/%61dmin\" }, deny = true },\n\
           { match = { path = \"/x/..;/y\" }, deny = true },\n\
           { match = { path_prefix = \"/api/\" }, rewrite = { strip_prefix = \"/api/./v1\" } },\n\
           { match = { path_prefix = \"/b/\" }, rewrite = { add_prefix = \"/v%\" } },\n\
           { match = { path_prefix = \"/c/\" }, rewrite = { add_prefix = \"/v2//\" } },\n\
         ]\n",
        &[
            "sg.toml:13: services[0].path_prefix: request paths are matched normalised, so \"/a//b/\" would not match as written: write \"/a/b/\"",
            "sg.toml:15: services[0].rules[0].match.path_prefix: request paths are matched normalised, so \"/admin%2f\" would not match as written: write \"/admin%2F\"",
            "sg.toml:16: services[0].rules[1].match.path: request paths are matched normalised, so \"/%61dmin\" would not match as written: write \"/admin\"",
            "sg.toml:17: services[0].rules[2].match.path: \"/x/..;/y\" has a dot segment with ';' parameters: requests with such a path are refused (400)",
            "sg.toml:18: services[0].rules[3].rewrite.strip_prefix: request paths are matched normalised, so \"/api/./v1\" would not match as written: write \"/api/v1\"",
            "sg.toml:19: services[0].rules[4].rewrite.add_prefix: \"/v%\" has a '%' not followed by two hex digits: every rewritten request would be refused (400)",
        ],
    ),
    (
        "a syntax error is the one error reported",
        "[runtime]\nworkerz = 2\nworkers = = 2\n",
        &["sg.toml:3: "],
    ),
];

#[test]
fn every_error_is_reported_with_its_line_path_and_reason() {
    for (what, text, want) in CASES {
        let got = errors(text);
        assert_eq!(got.len(), want.len(), "{what}: {got:#?}");
        for (g, w) in got.iter().zip(want.iter()) {
            // The syntax error's wording is the TOML parser's own: only its line is pinned.
            assert!(g.starts_with(w), "{what}:\n got {g}\nwant {w}");
            if !w.ends_with(": ") {
                assert_eq!(g, w, "{what}");
            }
        }
    }
}

#[test]
fn a_file_with_every_kind_of_error_lists_them_in_line_order() {
    let text = format!(
        "{LISTENER}max_conections = 5\n\n[timeouts]\nidle = 30\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ {{ address = \"127.0.0.1:99999\" }} ]\n\n\
         [runtime]\nworkerz = 4\n"
    );
    let lines: Vec<usize> = errors(&text)
        .iter()
        .map(|e| e.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, [4, 7, 11, 14], "{:#?}", errors(&text));
}

#[test]
fn reporting_stops_after_a_hundred_errors() {
    let text: String = (0..150).map(|i| format!("bogus{i} = 1\n")).collect();
    let got = errors(&text);
    assert_eq!(got.len(), 101, "{got:#?}");
    assert_eq!(
        got[100],
        "sg.toml:100: stopped after 100 errors; fix these and check again"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = parse(&path, &text) {
                panic!("{} is no longer valid:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "config/demo.toml and config/example.toml");
}
