//! Fleet-wide operator words: a region in or out of service, a backend drained or not, a
//! service's primary region. Each is one key of the overrides bucket (so JetStream keeps the
//! latest word per thing, and a PoP that joins or comes back reads them all), its value says
//! what and who; deleting the key withdraws the fleet's word.
//!
//! Keys are `region.<name>`, `backend.<ip>=<port>` and `primary.<service>`. Bucket keys allow
//! only `[-/_=.a-zA-Z0-9]`, so names are escaped (`_XX` per other byte) and an address's IPv6
//! colons are written `_`; both are undone exactly on the way in.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::message::{MessageError, token};
use crate::signing::Key;

/// What the fleet says about one thing; `None`: it says nothing (withdrawn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// A region taken in (`true`) or out of service at every PoP.
    Region(String, Option<bool>),
    /// A backend address drained (`true`) or undrained in every service at every PoP.
    Backend(SocketAddr, Option<bool>),
    /// A service's primary region at every PoP.
    Primary(String, Option<String>),
}

/// The value stored under a key: one of the three fields, by the key's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drained: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    from_pop: String,
    /// Unix milliseconds at publication: the start of the replication lag.
    sent_ms: u64,
    /// With `[fleet] key_file`: the bucket revision of the key this word replaced (0: none),
    /// so that a signed word put again later (a replay) is told from a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<u64>,
    /// With `[fleet] key_file`: the key's signature of the value without this field, on the
    /// key's subject (see [`signed_with`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

/// How a word is signed: with the fleet's key, for the NATS subject its value is put on, over
/// the bucket revision it replaces.
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub key: &'a Key,
    pub subject: &'a str,
    pub after: u64,
}

const REGION: &str = "region.";
const BACKEND: &str = "backend.";
const PRIMARY: &str = "primary.";

/// A word read from the bucket, with when it was sent (`None` for a withdrawal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub word: Word,
    pub from_pop: Option<String>,
    pub sent_ms: Option<u64>,
    /// The bucket revision a signed word replaced.
    pub after: Option<u64>,
}

impl Word {
    /// Says something (not a withdrawal).
    pub fn is_said(&self) -> bool {
        match self {
            Word::Region(_, v) | Word::Backend(_, v) => v.is_some(),
            Word::Primary(_, v) => v.is_some(),
        }
    }

    /// The bucket key this word is stored under.
    pub fn key(&self) -> String {
        match self {
            Word::Region(name, _) => format!("{REGION}{}", escape(name)),
            Word::Backend(addr, _) => format!(
                "{BACKEND}{}={}",
                addr.ip().to_string().replace(':', "_"),
                addr.port()
            ),
            Word::Primary(service, _) => format!("{PRIMARY}{}", escape(service)),
        }
    }

    /// The value to store, or `None` when the word is a withdrawal (the key is deleted).
    /// With `signer` (the fleet key and the NATS subject the value is put on) the value is
    /// signed, and a withdrawal is a signed value that says nothing: a deleted key carries no
    /// signature, so a PoP with the key cannot tell the fleet's withdrawal from anyone's.
    pub fn value(
        &self,
        from_pop: &str,
        sent_ms: u64,
        signer: Option<Signer<'_>>,
    ) -> Option<Vec<u8>> {
        let mut s = Stored {
            active: None,
            drained: None,
            region: None,
            from_pop: from_pop.to_string(),
            sent_ms,
            after: signer.map(|s| s.after),
            signature: None,
        };
        match self {
            Word::Region(_, Some(a)) => s.active = Some(*a),
            Word::Backend(_, Some(d)) => s.drained = Some(*d),
            Word::Primary(_, Some(r)) => s.region = Some(r.clone()),
            _ if signer.is_none() => return None,
            _ => {}
        }
        if let Some(signer) = signer {
            s.signature = Some(
                signer
                    .key
                    .sign(signer.subject, &serde_json::to_vec(&s).ok()?),
            );
        }
        serde_json::to_vec(&s).ok()
    }

    /// Reads the word under `key`; `value` is `None` for a deleted key.
    pub fn decode(key: &str, value: Option<&[u8]>) -> Result<Received, MessageError> {
        let unknown = || MessageError::Invalid("unknown override key");
        let stored = match value {
            Some(bytes) => {
                let s: Stored = crate::message::decode(bytes)?;
                if !token(&s.from_pop) {
                    return Err(MessageError::Invalid(
                        "from_pop is 1-128 printable characters",
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let mismatch = || MessageError::Invalid("the value does not fit the key");
        let word = if let Some(name) = key.strip_prefix(REGION) {
            let name = unescape(name).ok_or_else(unknown)?;
            let active = match &stored {
                Some(s) if s.withdraws() => None,
                Some(Stored {
                    active: Some(a),
                    drained: None,
                    region: None,
                    ..
                }) => Some(*a),
                Some(_) => return Err(mismatch()),
                None => None,
            };
            Word::Region(name, active)
        } else if let Some(addr) = key.strip_prefix(BACKEND) {
            let (ip, port) = addr.rsplit_once('=').ok_or_else(unknown)?;
            let ip: IpAddr = ip.replace('_', ":").parse().map_err(|_| unknown())?;
            let port: u16 = port.parse().map_err(|_| unknown())?;
            let drained = match &stored {
                Some(s) if s.withdraws() => None,
                Some(Stored {
                    active: None,
                    drained: Some(d),
                    region: None,
                    ..
                }) => Some(*d),
                Some(_) => return Err(mismatch()),
                None => None,
            };
            Word::Backend(SocketAddr::new(ip, port), drained)
        } else if let Some(service) = key.strip_prefix(PRIMARY) {
            let service = unescape(service).ok_or_else(unknown)?;
            let region = match &stored {
                Some(s) if s.withdraws() => None,
                Some(Stored {
                    active: None,
                    drained: None,
                    region: Some(r),
                    ..
                }) if !r.is_empty() && r.len() <= 128 && !r.chars().any(char::is_control) => {
                    Some(r.clone())
                }
                Some(_) => return Err(mismatch()),
                None => None,
            };
            Word::Primary(service, region)
        } else {
            return Err(unknown());
        };
        // One key per thing: `backend.10.0.0.1=080` or an IPv6 address spelt another way
        // would be a second key whose deletion leaves the first in force.
        if word.key() != key {
            return Err(MessageError::Invalid("not the canonical key of its word"));
        }
        Ok(Received {
            word,
            from_pop: stored.as_ref().map(|s| s.from_pop.clone()),
            sent_ms: stored.as_ref().map(|s| s.sent_ms),
            after: stored.and_then(|s| s.after),
        })
    }
}

impl Stored {
    /// Says nothing: a signed withdrawal.
    fn withdraws(&self) -> bool {
        self.active.is_none() && self.drained.is_none() && self.region.is_none()
    }
}

/// Whether `value`, put on `subject`, carries `key`'s signature of what it says. The signature
/// covers the value's fields, not its bytes (the value without it, written again), and the
/// subject, so that a signed word cannot be moved to another thing's key. A deleted key
/// (`None`) is never signed.
pub fn signed_with(key: &Key, subject: &str, value: Option<&[u8]>) -> bool {
    let Some(mut stored) = value.and_then(|v| crate::message::decode::<Stored>(v).ok()) else {
        return false;
    };
    let Some(signature) = stored.signature.take() else {
        return false;
    };
    serde_json::to_vec(&stored).is_ok_and(|unsigned| key.verifies(subject, &unsigned, &signature))
}

/// `[A-Za-z0-9-]` as is, every other byte as `_XX`.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The name [`escape`] made `key` from; `None` if it is not one (or longer than 128 bytes).
fn unescape(key: &str) -> Option<String> {
    let mut out = Vec::with_capacity(key.len());
    let b = key.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => {
                let hex = key.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(hex, 16).ok()?;
                // Only what escape writes, so each name has exactly one key.
                if byte.is_ascii_alphanumeric() || byte == b'-' || hex != format!("{byte:02X}") {
                    return None;
                }
                out.push(byte);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'-' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    let name = String::from_utf8(out).ok()?;
    (!name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(w: Word) -> Word {
        let key = w.key();
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "{key} is a valid bucket key"
        );
        let value = w.value("fra1", 7, None);
        Word::decode(&key, value.as_deref()).unwrap().word
    }

    #[test]
    fn words_survive_the_bucket() {
        let table = [
            Word::Region("eu-west".into(), Some(false)),
            Word::Region("us east.1_x".into(), Some(true)),
            Word::Region("zürich".into(), None),
            Word::Backend("10.0.0.1:8080".parse().unwrap(), Some(true)),
            Word::Backend("[2001:db8::1]:443".parse().unwrap(), Some(false)),
            Word::Backend("[::1]:80".parse().unwrap(), None),
            Word::Primary("web".into(), Some("eu-west".into())),
            Word::Primary("api.v2".into(), None),
        ];
        for w in table {
            assert_eq!(round_trip(w.clone()), w);
        }
        assert_eq!(
            Word::Backend("10.0.0.1:8080".parse().unwrap(), None).key(),
            "backend.10.0.0.1=8080"
        );
        assert_eq!(Word::Region("eu-west".into(), None).key(), "region.eu-west");
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let bad: [(&str, Option<&[u8]>); 12] = [
            ("nodes.x", None),
            ("region.", None),
            ("region.a_2", None),
            ("region.a_61", None), // an escaped letter: a second key for "aa"
            ("region.a_2e", None), // lower-case hex: likewise
            ("backend.10.0.0.1", None),
            ("backend.nope=80", None),
            ("backend.10.0.0.1=080", None),
            ("backend.0_0_0_0_0_0_0_1=80", None),
            (
                "region.eu",
                Some(br#"{"drained":true,"from_pop":"a","sent_ms":1}"#),
            ),
            (
                "primary.web",
                Some(br#"{"region":"","from_pop":"a","sent_ms":1}"#),
            ),
            (
                "region.eu",
                Some(br#"{"active":true,"from_pop":"a b","sent_ms":1}"#),
            ),
        ];
        for (key, value) in bad {
            assert!(Word::decode(key, value).is_err(), "{key} {value:?}");
        }
        let ok = Word::decode(
            "region.eu",
            Some(br#"{"active":false,"from_pop":"fra1","sent_ms":9}"#),
        )
        .unwrap();
        assert_eq!(ok.word, Word::Region("eu".into(), Some(false)));
        assert_eq!(
            (ok.from_pop.as_deref(), ok.sent_ms),
            (Some("fra1"), Some(9))
        );
    }

    #[test]
    fn a_signed_word_verifies_only_as_written_on_its_own_subject() {
        let key = Key::new(b"0123456789abcdef0123").unwrap();
        let subject = "$KV.b.region.eu";
        let signer = |subject| {
            Some(Signer {
                key: &key,
                subject,
                after: 4,
            })
        };
        let out = Word::Region("eu".into(), Some(false));
        let signed = out.value("fra1", 7, signer(subject)).unwrap();
        let text = String::from_utf8(signed.clone()).unwrap();
        let withdrawal = Word::Region("eu".into(), None)
            .value("fra1", 8, signer(subject))
            .expect("a signed withdrawal is a value");
        let table: [(&str, Option<Vec<u8>>, bool); 6] = [
            (subject, Some(signed.clone()), true),
            (subject, Some(withdrawal.clone()), true),
            ("$KV.b.region.us", Some(signed.clone()), false),
            (
                subject,
                Some(text.replace("false", "true").into_bytes()),
                false,
            ),
            (
                subject,
                Some(text.replace("\"after\":4", "\"after\":9").into_bytes()),
                false,
            ),
            (subject, None, false),
        ];
        for (subj, value, want) in table {
            assert_eq!(
                signed_with(&key, subj, value.as_deref()),
                want,
                "{subj} {value:?}"
            );
        }
        assert!(!signed_with(
            &key,
            subject,
            out.value("fra1", 7, None).as_deref()
        ));
        let r = Word::decode("region.eu", Some(&withdrawal)).unwrap();
        assert_eq!(
            (r.word, r.after),
            (Word::Region("eu".into(), None), Some(4))
        );
    }
}
