//! What PoPs tell each other, as JSON. Every message is checked before it is applied: unknown
//! fields, oversize values or a malformed id are refused (logged and counted, never applied).

use serde::{Deserialize, Serialize};

/// Most bytes a message may have; a purge names one URL, prefix or tag.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What a fleet-wide purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    Url(String),
    Prefix(String),
    Tag(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// Unique per purge: PoPs apply each id once; JetStream drops a re-published one.
    pub id: String,
    pub from_pop: String,
    /// Unix milliseconds at publication: the start of the replication lag.
    pub sent_ms: u64,
    /// Only this service's cache; every cache when absent.
    #[serde(default)]
    pub service: Option<String>,
    pub target: Target,
}

/// Each PoP's periodic word to the others (`GET /fleet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub pop: String,
    pub region: String,
    pub sent_ms: u64,
    /// The routing table version (bumped by every reload).
    pub config_version: u64,
    /// Seconds since the newest recovery point (`None`: no `[snapshots]`).
    #[serde(default)]
    pub snapshot_age_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message of {0} bytes is larger than {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("not a message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Ids, PoP and service names: short, printable, no spaces.
pub(crate) fn token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, MessageError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(MessageError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))
}

impl Purge {
    pub fn decode(bytes: &[u8]) -> Result<Purge, MessageError> {
        let p: Purge = decode(bytes)?;
        if !token(&p.id) || !token(&p.from_pop) {
            return Err(MessageError::Invalid(
                "id and from_pop are 1-128 printable characters",
            ));
        }
        check_purge(p.service.as_deref(), &p.target)?;
        Ok(p)
    }
}

/// What every PoP takes in a purge's service and target. Checked before one is published too:
/// a purge the other PoPs would drop must not be answered as sent to them.
pub fn check_purge(service: Option<&str>, target: &Target) -> Result<(), MessageError> {
    if service.is_some_and(|s| !token(s)) {
        return Err(MessageError::Invalid(
            "service is 1-128 printable characters",
        ));
    }
    let text = match target {
        Target::Url(t) | Target::Prefix(t) | Target::Tag(t) => Some(t),
        Target::All => None,
    };
    if text.is_some_and(|t| t.is_empty() || t.len() > 8192 || t.chars().any(char::is_control)) {
        return Err(MessageError::Invalid(
            "a purge target is 1-8192 characters without controls",
        ));
    }
    Ok(())
}

impl Heartbeat {
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, MessageError> {
        let h: Heartbeat = decode(bytes)?;
        if !token(&h.pop) || !token(&h.region) {
            return Err(MessageError::Invalid(
                "pop and region are 1-128 printable characters",
            ));
        }
        Ok(h)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_are_checked_before_they_are_applied() {
        let good =
            br#"{"id":"p1","from_pop":"fra1","sent_ms":1,"target":{"url":"http://a.test/x"}}"#;
        assert_eq!(
            Purge::decode(good).map(|p| p.target),
            Ok(Target::Url("http://a.test/x".into()))
        );
        let all = br#"{"id":"p2","from_pop":"fra1","sent_ms":1,"service":"cdn","target":"all"}"#;
        assert_eq!(Purge::decode(all).map(|p| p.target), Ok(Target::All));
        let bad: [&[u8]; 6] = [
            br#"{"id":"p1","from_pop":"fra1","sent_ms":1,"target":{"url":"x"},"extra":1}"#,
            br#"{"id":"","from_pop":"fra1","sent_ms":1,"target":"all"}"#,
            br#"{"id":"a b","from_pop":"fra1","sent_ms":1,"target":"all"}"#,
            br#"{"id":"p","from_pop":"fra1","sent_ms":1,"target":{"tag":""}}"#,
            br#"{"id":"p","from_pop":"fra1","sent_ms":1,"target":{"nuke":"x"}}"#,
            b"not json",
        ];
        for b in bad {
            assert!(Purge::decode(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        let big = vec![b' '; MAX_MESSAGE + 1];
        assert_eq!(
            Purge::decode(&big),
            Err(MessageError::TooLarge(MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn heartbeats_round_trip() {
        let h = Heartbeat {
            pop: "fra1".into(),
            region: "eu".into(),
            sent_ms: 5,
            config_version: 3,
            snapshot_age_seconds: Some(1.5),
        };
        assert_eq!(Heartbeat::decode(&serde_json::to_vec(&h).unwrap()), Ok(h));
    }
}
