//! Durations and sizes as written: strings, whose units `validate` checks.
//!
//! They are types of their own, not `String`, so that a value of another TOML type is refused
//! with the documented reason ("30 is a number; durations need a unit") rather than serde's
//! "expected a string", which leaves the operator to guess what string.

use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration such as `"250ms"` or `"1m30s"`, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationText(String);

/// A size such as `"64KiB"` or `"512"` (bytes), not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SizeText(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Duration,
    Size,
}

impl Unit {
    /// Why a bare number is refused, with the same number written as this kind of string.
    fn number(self, n: &str) -> String {
        match self {
            Unit::Duration => {
                format!("{n} is a number; durations need a unit, e.g. \"{n}s\" or \"{n}ms\"")
            }
            Unit::Size => {
                format!(
                    "{n} is a number; sizes are strings, e.g. \"{n}\" (bytes), \"64KiB\" or \"1GiB\""
                )
            }
        }
    }

    fn boolean(self, b: bool) -> String {
        match self {
            Unit::Duration => {
                format!(
                    "{b} is a boolean; durations are strings with a unit, e.g. \"30s\" or \"250ms\""
                )
            }
            Unit::Size => {
                format!("{b} is a boolean; sizes are strings, e.g. \"64KiB\" or \"1GiB\"")
            }
        }
    }
}

struct TextVisitor(Unit);

impl Visitor<'_> for TextVisitor {
    type Value = String;

    // Arrays, tables and dates are named by serde's own "invalid type" message, which ends with
    // this.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unit::Duration => {
                f.write_str("a duration string with a unit, e.g. \"30s\" or \"250ms\"")
            }
            Unit::Size => f.write_str("a size string, e.g. \"64KiB\" or \"1GiB\""),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Err(E::custom(self.0.number(&v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Err(E::custom(self.0.number(&v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        // Debug keeps the fraction of 30.0, so the suggestion reads back as what was written.
        Err(E::custom(self.0.number(&format!("{v:?}"))))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Err(E::custom(self.0.boolean(v)))
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(Unit::Duration))
            .map(DurationText)
    }
}

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(Unit::Size)).map(SizeText)
    }
}

impl Deref for DurationText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Deref for SizeText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Doc {
        d: DurationText,
        s: SizeText,
    }

    fn read(d: &str, s: &str) -> Result<Doc, String> {
        toml::from_str::<Doc>(&format!("d = {d}\ns = {s}\n")).map_err(|e| e.message().to_string())
    }

    #[test]
    fn strings_pass_and_everything_else_says_what_to_write() {
        let ok = read("\"1m30s\"", "\"64KiB\"").unwrap();
        assert_eq!((&*ok.d, &*ok.s), ("1m30s", "64KiB"));
        // (duration, size, the refusal)
        let cases = [
            (
                "30",
                "\"1\"",
                "30 is a number; durations need a unit, e.g. \"30s\" or \"30ms\"",
            ),
            (
                "30.0",
                "\"1\"",
                "30.0 is a number; durations need a unit, e.g. \"30.0s\" or \"30.0ms\"",
            ),
            (
                "-5",
                "\"1\"",
                "-5 is a number; durations need a unit, e.g. \"-5s\" or \"-5ms\"",
            ),
            (
                "false",
                "\"1\"",
                "false is a boolean; durations are strings with a unit, e.g. \"30s\" or \"250ms\"",
            ),
            (
                "[\"1s\"]",
                "\"1\"",
                "invalid type: sequence, expected a duration string with a unit, e.g. \"30s\" or \"250ms\"",
            ),
            (
                "\"1s\"",
                "1024",
                "1024 is a number; sizes are strings, e.g. \"1024\" (bytes), \"64KiB\" or \"1GiB\"",
            ),
            (
                "\"1s\"",
                "true",
                "true is a boolean; sizes are strings, e.g. \"64KiB\" or \"1GiB\"",
            ),
            (
                "\"1s\"",
                "{ mib = 1 }",
                "invalid type: map, expected a size string, e.g. \"64KiB\" or \"1GiB\"",
            ),
        ];
        for (d, s, want) in cases {
            assert_eq!(read(d, s).unwrap_err(), want, "d = {d}, s = {s}");
        }
    }
}
