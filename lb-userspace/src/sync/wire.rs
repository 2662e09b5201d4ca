//! Frames of `cluster.sync`: `length (u32 BE) | version (u8) | kind (u8) |
//! seq (u64 BE) | payload | tag (32 bytes)`, the length judged before anything
//! else is read, and the tag: HMAC-SHA256 (RFC 2104, SHA-256 from RFC 6234)
//! under the shared key over `"lbd cluster.sync v1" | sender nonce | receiver
//! nonce | frame without tag`.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::messages::{encode_payload, Body, Writer};
use super::session::{SendError, SyncError};
use super::{Nonce, MAX_FRAME, VERSION};

/// Shortest shared key accepted.
pub const MIN_KEY_LEN: usize = 32;

pub(super) const PREFIX_LEN: usize = 4;
pub(super) const HEADER_LEN: usize = 10;
pub(super) const TAG_LEN: usize = 32;
const MAC_DOMAIN: &[u8] = b"lbd cluster.sync v1";

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error(
        "the cluster sync key has {len} bytes, at least {MIN_KEY_LEN} are needed: \
         put a longer random secret in cluster.sync.key_file on both nodes"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
}

/// The shared key, ready to compute tags. Cheap to clone; never printed.
#[derive(Clone)]
pub struct SyncKey(Hmac<Sha256>);

impl SyncKey {
    /// Makes a key from the bytes of `cluster.sync.key_file`.
    ///
    /// # Errors
    ///
    /// [`KeyError::TooShort`] under [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        Hmac::new_from_slice(bytes)
            .map(SyncKey)
            .map_err(|_| KeyError::TooShort { len: bytes.len() })
    }

    pub(super) fn mac(&self, sender: &Nonce, receiver: &Nonce, framed: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(MAC_DOMAIN);
        mac.update(sender);
        mac.update(receiver);
        mac.update(framed);
        mac
    }
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncKey(..)")
    }
}

/// Builds a whole frame: prefix, header, payload, tag.
pub(super) fn seal(
    key: &SyncKey,
    sender: &Nonce,
    receiver: &Nonce,
    seq: u64,
    body: &Body,
) -> Result<Vec<u8>, SendError> {
    let mut w = Writer::default();
    w.u32(0);
    w.u8(VERSION);
    w.u8(body.kind());
    w.u64(seq);
    encode_payload(&mut w, body)?;
    let len = w.0.len() + TAG_LEN;
    if len > MAX_FRAME {
        return Err(SendError::TooLarge { len });
    }
    let announced = u32::try_from(len - PREFIX_LEN).map_err(|_| SendError::TooLarge { len })?;
    w.0[..PREFIX_LEN].copy_from_slice(&announced.to_be_bytes());
    let tag = key.mac(sender, receiver, &w.0).finalize().into_bytes();
    w.0.extend_from_slice(&tag);
    Ok(w.0)
}

/// Length of the complete frame at the start of `buf`, `None` while it is
/// incomplete. The prefix is judged as soon as its four bytes are in.
pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, SyncError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let mut announced = [0; PREFIX_LEN];
    announced.copy_from_slice(prefix);
    let total = u64::from(u32::from_be_bytes(announced)) + PREFIX_LEN as u64;
    if total > MAX_FRAME as u64 {
        return Err(SyncError::FrameTooLarge { len: total });
    }
    if total < (PREFIX_LEN + HEADER_LEN + TAG_LEN) as u64 {
        return Err(SyncError::FrameTooShort { len: total });
    }
    let total = usize::try_from(total).map_err(|_| SyncError::FrameTooLarge { len: total })?;
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::sync::fixtures::{entry, key, payload_of};
    use crate::sync::messages::{Hello, KIND_HEARTBEAT};
    use crate::sync::{Message, SnapshotMark, NONCE_LEN};

    #[test]
    fn wire_format_is_pinned() {
        let payload = payload_of(&Body::Hello(Hello {
            nonce: [0xaa; NONCE_LEN],
            node: "lb1".into(),
            role: Role::Primary,
            boot_id: 0x0102_0304_0506_0708,
        }));
        let mut want = vec![0xaa; NONCE_LEN];
        want.extend([1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3, b'l', b'b', b'1']);
        assert_eq!(payload, want);

        let payload = payload_of(&Body::Message(Message::Sessions {
            entries: vec![entry(5)],
            snapshot: Some(SnapshotMark::Begin { total: 1 }),
        }));
        let mut want = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 10];
        want.extend(b"hyperspace");
        want.extend([10, 0, 0, 5, 198, 18, 0, 21, 0, 0, 0x13, 0x88]);
        assert_eq!(payload, want);

        let frame = seal(
            &key(),
            &[1; 16],
            &[2; 16],
            5,
            &Body::Heartbeat { sent_ms: 1 },
        )
        .unwrap();
        assert_eq!(frame.len(), 4 + 10 + 8 + 32);
        assert_eq!(
            frame[..14],
            [0, 0, 0, 50, VERSION, KIND_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        assert_eq!(frame[14..22], [0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            SyncKey::new(&[1; 31]).err(),
            Some(KeyError::TooShort { len: 31 })
        );
        assert!(SyncKey::new(&[1; 32]).is_ok());
        assert_eq!(format!("{:?}", key()), "SyncKey(..)");
    }
}
