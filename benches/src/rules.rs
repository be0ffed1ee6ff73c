//! `[[services.rules]]` that no benchmark request matches, to price rule evaluation on the
//! proxied path (loadbench `--rules`) and in the `rules` criterion bench.

/// `n` rules of every kind of condition and action, as `[[services.rules]]` tables; none of
/// them matches a GET of `/1k` over http from loopback without extra headers.
pub fn unmatched(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let rule = match i % 5 {
            0 => format!(
                "match = {{ scheme = \"http\", hosts = [\"h{i}.test\"] }}\nredirect = {{ scheme = \"https\" }}"
            ),
            1 => format!(
                "match = {{ path_prefix = \"/api/v{i}/\" }}\nrewrite = {{ strip_prefix = \"/api\" }}"
            ),
            2 => format!(
                "match = {{ path_regex = \"^/blog/{i}/(\\\\d+)$\" }}\nredirect = {{ path = \"/posts/$1\" }}"
            ),
            3 => format!(
                "match = {{ headers = {{ \"X-Debug-{i}\" = \"*\" }}, methods = [\"POST\"] }}\n\
                 request_headers = {{ set = {{ \"X-Debug\" = \"$client_ip\" }} }}"
            ),
            _ => format!(
                "match = {{ clients = [\"10.{i}.0.0/16\"], path = \"/admin\" }}\ndeny = true"
            ),
        };
        s.push_str(&format!("\n[[services.rules]]\nname = \"r{i}\"\n{rule}\n"));
    }
    s
}
