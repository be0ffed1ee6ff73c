//! Human units used in the config file: durations ("250ms", "1m30s") and sizes ("64KiB", "1GiB").

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"2s"`, `"5m"`, `"1h"` or a sum like `"1m30s"`.
///
/// Units: `us`, `ms`, `s`, `m`, `h`, `d`. A bare number is refused because its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"250ms\", \"2s\", \"5m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("\"{text}\" has no unit; expected e.g. \"{text}s\" or \"{text}ms\"")
            })?;
        if digits == 0 {
            return Err(format!(
                "\"{text}\" is not a duration; expected e.g. \"250ms\", \"2s\", \"5m\""
            ));
        }
        let number: f64 = rest[..digits].parse().map_err(|_| {
            format!("\"{text}\" is not a duration; expected e.g. \"250ms\", \"2s\"")
        })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds_per_unit = match unit {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => {
                return Err(format!(
                    "\"{text}\": unknown unit \"{unit}\"; expected one of us, ms, s, m, h, d"
                ));
            }
        };
        let secs = number * seconds_per_unit;
        if !secs.is_finite() || secs > 1e12 {
            return Err(format!("\"{text}\" is too long"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Parses a size such as `"64KiB"`, `"1GiB"`, `"10MB"` or `"512"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if split == 0 {
        return Err(format!(
            "\"{text}\" is not a size; expected e.g. \"64KiB\", \"256MiB\", \"1GiB\""
        ));
    }
    let number: f64 = s[..split]
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size; expected e.g. \"64KiB\", \"1GiB\""))?;
    let unit = s[split..].trim();
    let multiplier: f64 = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => {
            return Err(format!(
                "\"{text}\": unknown unit \"{unit}\"; expected one of B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
            ));
        }
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("\"{text}\" is too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert!(
            parse_size("12 furlongs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("KiB").is_err());
    }
}
