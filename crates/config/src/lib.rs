//! streamgate-config: the only crate that knows TOML.
//!
//! `raw` (serde, unknown keys refused) -> `validate` (collects every error, each with file:line and
//! key path) -> `model` (typed: `Duration`, `SocketAddr`, `NonZero*`). [`diff`] compares two
//! configurations for a reload.

pub mod diff;
mod error;
pub mod last_good;
pub mod model;
mod raw;
pub mod units;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, LoadError};
pub use model::*;

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(path, &text)?)
}

/// Validates `text` as the content of the file at `path` (used in messages and to resolve
/// relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut ctx = validate::Ctx::new(path, text);
    let raw: raw::RawConfig = match toml::Deserializer::parse(text) {
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ctx.err(span, "", e.message().trim_end());
            return Err(ConfigErrors(ctx.errors));
        }
        Ok(de) => match serde_path_to_error::deserialize(de) {
            Ok(raw) => raw,
            Err(e) => {
                let key_path = key_path(e.path());
                let inner = e.into_inner();
                let span = inner.span().unwrap_or(0..0);
                ctx.err(span, key_path, inner.message().trim_end());
                return Err(ConfigErrors(ctx.errors));
            }
        },
    };
    let mut config = validate::validate(raw, &mut ctx);
    if !ctx.errors.is_empty() {
        let mut errors = ctx.errors;
        errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(errors));
    }
    config.source = Source {
        path: path.to_path_buf(),
        digest: fnv1a(text.as_bytes()),
        text: text.into(),
    };
    Ok(config)
}

/// `services[0].backend_policy`, without the segments `toml::Spanned` adds internally.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
