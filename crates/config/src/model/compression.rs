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
    /// A response is compressed only while the encoders of the whole process, with its own,
    /// would hold at most this many bytes ([`Compression::encoder_memory`]); past it the
    /// response is sent as it came.
    pub max_memory: u64,
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
            // 42 brotli encoders at level 4, 80 zstd at level 3, 750 gzip: more than the
            // responses a PoP compresses at once (each is compressed once, then cached),
            // and a bound on what stalled HTTP/2 streams can pin (256 per connection at up to
            // 90 MB each without it).
            max_memory: 256 << 20,
        }
    }
}

impl Compression {
    /// The memory one encoder of `e` at this service's level holds at most, in bytes: the
    /// peak resident size per encoder measured with 20 encoders each fed 4 MiB of HTML-like
    /// text in 16 KiB writes (brotli with its 512 KiB window), rounded up. Smaller bodies take
    /// less (brotli's buffers grow with the input); levels not measured take the next measured
    /// level's figure.
    pub fn encoder_memory(&self, e: Encoding) -> u64 {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        match e {
            // 306 KiB at level 1, 348 KiB at 6 and 9 (zlib's tables are the same size).
            Encoding::Gzip => 384 * KIB,
            Encoding::Brotli => match self.brotli_level {
                // 219 and 136 KiB: levels 0 and 1 keep no window of their own.
                0 | 1 => 256 * KIB,
                // 1.9 MiB at 2 and 3, 5.5 at 4, 6.3 at 5, 7.2 at 6, 13.6 at 7, 21.3 at 8,
                // 33.1 at 9; 13.0 at 10, 11.2 at 11 (another algorithm, with its own window).
                2 | 3 => 2 * MIB,
                4 => 6 * MIB,
                5 | 6 => 8 * MIB,
                7 => 14 * MIB,
                8 | 9 => 34 * MIB,
                _ => 14 * MIB,
            },
            Encoding::Zstd => match self.zstd_level {
                // 0.96 MiB at 1, 1.7 at 2, 3.1 at 3, 4.4 at 4, 5.0 at 5 and 6, 14.2 at 9,
                // 44.3 at 12, 68.2 at 15, 84.8 at 19.
                ..=1 => MIB,
                2 => 2 * MIB,
                3 => 4 * MIB,
                4..=6 => 5 * MIB,
                7..=9 => 15 * MIB,
                10..=12 => 45 * MIB,
                13..=15 => 70 * MIB,
                _ => 90 * MIB,
            },
        }
    }

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
