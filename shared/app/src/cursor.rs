//! Page cursors: opaque to clients, tamper-evident, and bound to the list that gave them out.
//!
//! A cursor is the position to resume after, with a MAC over the list's key and that position.
//! A cursor this API never gave out, or gave out for another list (another customer's orders,
//! another shop's catalog), is refused instead of being read as a position.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::AppError;

/// Bytes of the MAC kept in a cursor: enough that guessing one is hopeless.
const TAG_BYTES: usize = 16;

/// Seals and opens cursors with one key.
#[derive(Clone)]
pub struct Cursors {
    key: [u8; 32],
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cursors(..)")
    }
}

impl Cursors {
    /// Cursors keyed from `secret`. Every process serving the same lists needs the same secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"commerce page cursors\n");
        hash.update(secret);
        Self {
            key: hash.finalize().into(),
        }
    }

    /// Cursors with a key of their own, good for one process only.
    pub fn ephemeral() -> Self {
        Self::new(uuid::Uuid::new_v4().as_bytes())
    }

    /// The cursor that resumes `list` after `position`.
    pub fn seal(&self, list: &str, position: &str) -> String {
        format!(
            "{}.{}",
            hex::encode(position),
            hex::encode(self.tag(list, position))
        )
    }

    /// The position a cursor from `list` resumes after.
    pub fn open(&self, list: &str, cursor: &str) -> Result<String, AppError> {
        let refused =
            || AppError::BadRequest("cursor is not one this API gave out for this list".into());
        let (position, tag) = cursor.split_once('.').ok_or_else(refused)?;
        let position = hex::decode(position).map_err(|_| refused())?;
        let position = String::from_utf8(position).map_err(|_| refused())?;
        let tag = hex::decode(tag).map_err(|_| refused())?;
        if tag.len() != TAG_BYTES {
            return Err(refused());
        }
        self.mac(list, &position)
            .verify_truncated_left(&tag)
            .map_err(|_| refused())?;
        Ok(position)
    }

    fn mac(&self, list: &str, position: &str) -> Hmac<Sha256> {
        // The key is 32 bytes; HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(list.as_bytes());
        mac.update(&[0]);
        mac.update(position.as_bytes());
        mac
    }

    fn tag(&self, list: &str, position: &str) -> Vec<u8> {
        let full = self.mac(list, position).finalize().into_bytes();
        full.get(..TAG_BYTES)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_on_its_own_list_only() {
        let cursors = Cursors::new(b"secret");
        let cursor = cursors.seal("acme#catalog", "MUG");
        assert_eq!(cursors.open("acme#catalog", &cursor).unwrap(), "MUG");
        assert!(
            cursors.open("globex#catalog", &cursor).is_err(),
            "another list"
        );
        assert!(
            Cursors::new(b"other")
                .open("acme#catalog", &cursor)
                .is_err(),
            "another key"
        );
    }

    #[test]
    fn made_up_and_altered_cursors_are_refused() {
        let cursors = Cursors::new(b"secret");
        let cursor = cursors.seal("list", "k5");
        let (position, tag) = cursor.split_once('.').unwrap();
        let forged = format!("{}.{tag}", hex::encode("k9"));
        let short = format!("{position}.{}", &tag[..8]);
        for bad in ["", "k5", "zz.zz", &forged, &short, "6b35.", "6b35"] {
            assert!(cursors.open("list", bad).is_err(), "{bad:?}");
        }
    }
}
