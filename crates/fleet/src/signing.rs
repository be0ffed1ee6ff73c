//! Purges signed with a key the fleet shares (`[fleet] key_file`): HMAC-SHA256 over the
//! message's bytes, in a header of its own.
//!
//! NATS permissions decide who may publish on the purge subject; with many PoPs, credentials
//! and accounts, one publisher too many (a leaked PoP credential, a subject permission too
//! wide) could empty every PoP's cache, or purge continuously. With a key, a PoP applies only
//! purges signed with it, whoever published them; the others are counted (`unsigned`) and
//! dropped. (A signed purge replayed is one more purge of the same object: harmless, and
//! refused anyway while its id is remembered.)

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

    /// The signature of `payload`, in lower-case hex.
    pub fn sign(&self, payload: &[u8]) -> String {
        hex(hmac::sign(&self.0, payload).as_ref())
    }

    /// Whether `signature` (hex) is `payload`'s; compared in constant time.
    pub fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        unhex(signature).is_some_and(|tag| hmac::verify(&self.0, payload, &tag).is_ok())
    }
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
    fn signatures_verify_only_with_the_key_and_the_bytes() {
        let key = Key::new(b"0123456789abcdef0123\n").unwrap();
        let other = Key::new(b"fedcba98765432100123").unwrap();
        let sig = key.sign(b"{\"id\":\"a\"}");
        assert_eq!(sig.len(), 64);
        let table = [
            (&key, &b"{\"id\":\"a\"}"[..], sig.as_str(), true),
            (&key, b"{\"id\":\"b\"}", sig.as_str(), false),
            (&other, b"{\"id\":\"a\"}", sig.as_str(), false),
            (&key, b"{\"id\":\"a\"}", &sig[..62], false),
            (&key, b"{\"id\":\"a\"}", "zz", false),
            (&key, b"{\"id\":\"a\"}", "", false),
        ];
        for (k, payload, s, want) in table {
            assert_eq!(k.verifies(payload, s), want, "{s}");
        }
        assert!(key.verifies(b"{\"id\":\"a\"}", &sig.to_ascii_uppercase()));
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
