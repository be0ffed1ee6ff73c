//! Host patterns of `[[services]] hosts`.

/// A Host header pattern: exact name, `*.suffix`, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    /// Lower-case name without port.
    Exact(String),
    /// Lower-case suffix including the leading dot, e.g. `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        // A fully qualified `example.com.` is `example.com`: hosts are compared without it.
        let s = match s.strip_suffix('.') {
            Some(name) if !name.ends_with('.') => name.to_string(),
            _ => s,
        };
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let valid = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        };
        if let Some(rest) = s.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if valid(&s) {
            return Ok(HostPattern::Exact(s));
        }
        Err(format!(
            "invalid host pattern \"{s}\"; expected an exact name, \"*.example.com\" or \"*\""
        ))
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}
