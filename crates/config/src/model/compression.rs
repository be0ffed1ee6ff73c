//! `[services.compression]`: responses compressed at the edge for clients that accept it.

/// A content coding StreamGate produces (RFC 9110 §8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    /// The token in Accept-Encoding and Content-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The coding a token names (any case); `x-gzip` is gzip (RFC 9110 §8.4.1.3).
    pub fn from_token(t: &str) -> Option<Encoding> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.token().eq_ignore_ascii_case(t))
            .or_else(|| t.eq_ignore_ascii_case("x-gzip").then_some(Encoding::Gzip))
    }
}

/// Media types compressed when `types` is not given: text that compresses well and is not
/// compressed by its format already.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "text/plain",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// In the order the service prefers them when a client's q-values tie.
    pub encodings: Vec<Encoding>,
    /// Lower-case media types, or `type/*`.
    pub types: Vec<String>,
    /// Responses declaring a shorter Content-Length are sent as they are.
    pub min_size: u64,
    pub gzip_level: u32,
    pub brotli_level: u32,
    pub zstd_level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            encodings: Encoding::ALL.to_vec(),
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            min_size: 1024,
            // nginx's gzip_comp_level is 1 by default; 6 is zlib's own default and what most
            // configurations set. Brotli 11 is meant for static files compressed ahead of time:
            // 4 is close to gzip 6 in speed with smaller output; zstd 3 is its library default.
            gzip_level: 6,
            brotli_level: 4,
            zstd_level: 3,
        }
    }
}

impl Compression {
    /// Whether a response of this Content-Type value is compressed. Allocation-free.
    pub fn compresses_type(&self, content_type: &str) -> bool {
        let media = content_type.split(';').next().unwrap_or("").trim();
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(top) => media
                .split_once('/')
                .is_some_and(|(m, _)| m.eq_ignore_ascii_case(top)),
            None => media.eq_ignore_ascii_case(t),
        })
    }
}
