//! `[fleet]`: this PoP's link to the other PoPs over NATS JetStream. Without the table the
//! daemon stands alone.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// NATS URLs (`nats://host:4222`, `tls://…`); the client fails over between them.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT + NKey seed), as `nsc` writes it.
    pub credentials: Option<PathBuf>,
    /// The key every PoP signs its purges with and checks others' against.
    pub key_file: Option<PathBuf>,
    /// This PoP's name: unique in the fleet, its durable consumer's name.
    pub pop: String,
    /// This PoP's region, the label of its replication lag.
    pub region: String,
    /// Subjects, the purge stream and the overrides bucket are named from this.
    pub subject_prefix: String,
    /// How long the stream keeps purges: a PoP away longer misses older ones.
    pub purge_retention: Duration,
    /// Between this PoP's heartbeats; a peer silent for three is shown stale.
    pub heartbeat: Duration,
}

impl Fleet {
    /// The JetStream stream of fleet-wide purges.
    pub fn stream(&self) -> String {
        format!(
            "{}_PURGES",
            self.subject_prefix
                .to_ascii_uppercase()
                .replace(['.', '-'], "_")
        )
    }

    /// The subject purges are published on.
    pub fn purge_subject(&self) -> String {
        format!("{}.purge", self.subject_prefix)
    }

    /// The key-value bucket of fleet-wide operator overrides.
    pub fn bucket(&self) -> String {
        format!("{}_overrides", self.subject_prefix.replace('.', "_"))
    }

    pub fn heartbeat_subject(&self, pop: &str) -> String {
        format!("{}.heartbeat.{pop}", self.subject_prefix)
    }
}

/// Letters, digits, `-` and `_`: what a NATS subject token and a consumer name both accept.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
