//! Purges and fleet words signed with a key the fleet shares (`[fleet] key_file`):
//! HMAC-SHA256 over the subject and the message, a purge's in a header of its own, a word's in
//! a field of its stored value (see `word::signed_with`).
//!
//! NATS permissions decide who may publish on the purge subject; with many PoPs, credentials
//! and accounts, one publisher too many (a leaked PoP credential, a subject permission too
//! wide) could empty every PoP's cache, or purge continuously. With a key, a PoP applies only
//! purges signed with it, whoever published them; the others are counted (`unsigned`) and
//! dropped. A signed purge captured and published again is refused once it is older than the
//! stream keeps purges (`purge_retention`): only a replay can be (see `link::signed`); a
//! younger one is refused while its id is remembered, and after a restart applies once more.

use std::io;
use std::path::Path;

use aws_lc_rs::hmac;

/// The header that carries a purge's signature, in lower-case hex.
pub const HEADER: &str = "Streamgate-Signature";

/// Keys shorter than this are refused: HMAC's strength is the key's.
pub const MIN_KEY_BYTES: usize = 16;

/// The fleet's shared key.
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key in `secret` (surrounding white space trimmed), if long enough.
    pub fn new(secret: &[u8]) -> Result<Key, String> {
        let s = secret.trim_ascii();
        if s.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the key is {} bytes; use at least {MIN_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`)",
                s.len()
            ));
        }
        Ok(Key(hmac::Key::new(hmac::HMAC_SHA256, s)))
    }

    /// The key in the file at `path`.
    pub fn read(path: &Path) -> io::Result<Key> {
        let bytes = std::fs::read(path)?;
        Key::new(&bytes).map_err(io::Error::other)
    }

    /// The signature of `payload` published on `subject`, in lower-case hex. The subject is
    /// signed too: a fleet that shares the key file with another (another `subject_prefix`)
    /// does not take the other's purges.
    pub fn sign(&self, subject: &str, payload: &[u8]) -> String {
        hex(hmac::sign(&self.0, &input(subject, payload)).as_ref())
    }

    /// Whether `signature` (hex) is that of `payload` on `subject`; compared in constant time.
    pub fn verifies(&self, subject: &str, payload: &[u8], signature: &str) -> bool {
        unhex(signature)
            .is_some_and(|tag| hmac::verify(&self.0, &input(subject, payload), &tag).is_ok())
    }
}

/// What is signed: the subject, a line feed (which no subject holds), the payload.
fn input(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(subject.len() + 1 + payload.len());
    v.extend_from_slice(subject.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(payload);
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_key_the_subject_and_the_bytes() {
        let key = Key::new(b"0123456789abcdef0123\n").unwrap();
        let other = Key::new(b"fedcba98765432100123").unwrap();
        let (subject, body) = ("acme.purge", &b"{\"id\":\"a\"}"[..]);
        let sig = key.sign(subject, body);
        assert_eq!(sig.len(), 64);
        let table = [
            (&key, subject, body, sig.as_str(), true),
            (&key, subject, &b"{\"id\":\"b\"}"[..], sig.as_str(), false),
            (&key, "other.purge", body, sig.as_str(), false),
            (&other, subject, body, sig.as_str(), false),
            (&key, subject, body, &sig[..62], false),
            (&key, subject, body, "zz", false),
            (&key, subject, body, "", false),
        ];
        for (k, subj, payload, s, want) in table {
            assert_eq!(k.verifies(subj, payload, s), want, "{subj} {s}");
        }
        assert!(key.verifies(subject, body, &sig.to_ascii_uppercase()));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Key::new(b"short").is_err());
        assert!(
            Key::new(b"   0123456789abcde   ").is_err(),
            "15 bytes once trimmed"
        );
        assert!(Key::new(b"0123456789abcdef").is_ok());
    }
}
