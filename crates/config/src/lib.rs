//! streamgate-config: the only crate that knows TOML.
//!
//! `read` (TOML -> `raw`: serde, unknown keys and wrong types refused, every one reported) ->
//! `validate` (collects every error, each with file:line and key path) -> `model` (typed:
//! `Duration`, `SocketAddr`, `NonZero*`). [`diff`] compares two configurations for a reload.

pub mod diff;
mod dns;
mod error;
pub mod fleet;
mod host;
pub mod last_good;
pub mod model;
pub mod path;
mod raw;
mod read;
pub mod rules;
mod suggest;
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
/// relative paths). Every error is returned, in line order: unknown keys, values of the wrong
/// type and what validation finds together; a TOML syntax error alone.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut ctx = validate::Ctx::new(path, text);
    let Some(read) = read::read(text, &mut ctx) else {
        return Err(in_line_order(ctx.errors));
    };
    let mut errors = std::mem::take(&mut ctx.errors);
    let mut config = validate::validate(read.raw, &mut ctx);
    // A refused value was taken out, so validation sees its key absent ("missing field", "an
    // https listener needs certificates"): that is the same error said twice.
    errors.extend(
        ctx.errors
            .into_iter()
            .filter(|e| !read.removed.iter().any(|key| key.covers(&e.path))),
    );
    if !errors.is_empty() {
        return Err(in_line_order(errors));
    }
    config.source = Source {
        path: path.to_path_buf(),
        digest: fnv1a(text.as_bytes()),
        text: text.into(),
    };
    Ok(config)
}

/// Stable: errors on one line keep the order they were found in.
fn in_line_order(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| e.line);
    ConfigErrors(errors)
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
