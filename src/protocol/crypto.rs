//! Keys and the primitives built on them, all from `ring`.
//!
//! One secret (the cluster secret, or a content key file for offline use)
//! yields every key by HKDF-SHA256 with a distinct label, so a key leaked from
//! one purpose says nothing about another. Content encryption uses
//! AES-256-GCM with a fresh subkey per assignment (HKDF with a random salt
//! stored in the header) and a nonce made from the chunk's offset, so no
//! nonce is ever reused under one key. Datagrams are sealed with
//! AES-256-GCM under a key per channel and sender ([`DatagramKeyRoot`], see
//! `wire` for the nonce); node-to-node HTTP requests are signed with
//! HMAC-SHA256 ([`MacKey`]).

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::hkdf;
use ring::hmac;
use thiserror::Error;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Bytes added to every encrypted chunk (the GCM tag).
pub const AEAD_TAG_LEN: usize = 16;

/// Errors from key handling and decryption.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The secret is too short to be a key.
    #[error("key is {len} bytes; at least {MIN_SECRET_LEN} are needed (generate one with `cmover keygen`)")]
    ShortSecret {
        /// Bytes found.
        len: usize,
    },
    /// A key file is neither hex nor long enough raw bytes.
    #[error("key file is not a hex-encoded key ({0})")]
    BadKeyFile(String),
    /// The AEAD tag did not verify: wrong key or corrupted ciphertext.
    #[error("decryption failed at data offset {offset}: wrong key or corrupted data")]
    Decrypt {
        /// Offset of the chunk in the data part.
        offset: u64,
    },
}

/// Parses a key file: hex digits (surrounding white space ignored), at least
/// [`MIN_SECRET_LEN`] bytes once decoded.
pub fn parse_key_file(contents: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let text = std::str::from_utf8(contents).map_err(|_| CryptoError::BadKeyFile("not text".into()))?;
    let secret = hex::decode(text.trim()).map_err(|e| CryptoError::BadKeyFile(e.to_string()))?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(CryptoError::ShortSecret { len: secret.len() });
    }
    Ok(secret)
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// Derives a 32-byte key for `label` from `secret` (HKDF-SHA256, fixed salt).
pub fn derive_key(secret: &[u8], label: &str) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cmover v1").extract(secret);
    expand(&prk, label.as_bytes())
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let info = [info];
    // Both calls only fail for output lengths over 255 × 32 bytes; ours is 32.
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// An HMAC-SHA256 key, derived for one purpose (the node API's request signatures).
#[derive(Clone)]
pub struct MacKey(hmac::Key);

impl MacKey {
    /// Derives the key for `label` from the cluster secret.
    pub fn derive(secret: &[u8], label: &str) -> Self {
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, &derive_key(secret, label)))
    }

    /// The full 32-byte tag of `parts`, concatenated.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Checks a tag (any length from 16 to 32 bytes, a prefix of the full tag)
    /// in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        if !(16..=32).contains(&tag.len()) {
            return false;
        }
        let full = self.sign(parts);
        // Constant time: fold every byte difference, branch once.
        full.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// Bytes of a datagram's AEAD nonce.
pub const DATAGRAM_NONCE_LEN: usize = 12;
/// Bytes of a datagram's AEAD tag.
pub const DATAGRAM_TAG_LEN: usize = 16;

/// Where the datagram keys of one channel come from: the cluster secret
/// through HKDF-SHA256 with the channel's label, then one key per sender
/// (the label followed by the sender's id). A key per sender lets the nonce
/// be the sender's own sequence number: no two senders ever share a key,
/// so no coordination between them is needed for nonces to be unique.
#[derive(Clone)]
pub struct DatagramKeyRoot {
    prk: hkdf::Prk,
    label: &'static str,
}

impl std::fmt::Debug for DatagramKeyRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatagramKeyRoot({:?})", self.label)
    }
}

impl DatagramKeyRoot {
    /// The root of the keys labelled `label`, from the cluster secret.
    pub fn derive(secret: &[u8], label: &'static str) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cmover v1").extract(secret);
        DatagramKeyRoot { prk, label }
    }

    /// The key `sender` seals its datagrams of this channel with (and
    /// everyone else opens them with).
    pub fn sender_key(&self, sender: u64) -> DatagramKey {
        let mut key = [0u8; 32];
        let id = sender.to_le_bytes();
        let info = [self.label.as_bytes(), &id[..]];
        // Only fails for output lengths over 255 × 32 bytes; ours is 32.
        if let Ok(okm) = self.prk.expand(&info, Len32) {
            let _ = okm.fill(&mut key);
        }
        // AES-256 takes any 32-byte key.
        let unbound = UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("32-byte key"));
        DatagramKey(LessSafeKey::new(unbound))
    }
}

/// One sender's AES-256-GCM key on one datagram channel. The caller
/// supplies the nonce and must never use one twice with the same key.
#[derive(Clone)]
pub struct DatagramKey(LessSafeKey);

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(..)")
    }
}

impl DatagramKey {
    /// Encrypts `in_out` in place, authenticates it with `aad`, and returns
    /// the tag.
    pub fn seal(
        &self,
        nonce: [u8; DATAGRAM_NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; DATAGRAM_TAG_LEN] {
        let mut out = [0u8; DATAGRAM_TAG_LEN];
        // Sealing only fails for inputs over 64 GiB; datagrams are under 64 KiB.
        if let Ok(tag) =
            self.0.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Checks `tag` over `aad` and `in_out` and decrypts `in_out` in place.
    /// False (and `in_out` garbled) if the tag does not verify.
    pub fn open(
        &self,
        nonce: [u8; DATAGRAM_NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; DATAGRAM_TAG_LEN],
    ) -> bool {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                Tag::from(*tag),
                in_out,
                0..,
            )
            .is_ok()
    }
}

/// The key that encrypts assignment data. Holds only derived material.
#[derive(Clone)]
pub struct ContentKey {
    prk: hkdf::Prk,
    id: [u8; 8],
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentKey(id {})", hex::encode(self.id))
    }
}

impl ContentKey {
    /// Derives the content key from a secret (a key file's bytes or the cluster secret).
    pub fn from_secret(secret: &[u8]) -> Result<Self, CryptoError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(CryptoError::ShortSecret { len: secret.len() });
        }
        let root = derive_key(secret, "content encryption");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cmover content").extract(&root);
        let check = derive_key(secret, "content key id");
        let mut id = [0u8; 8];
        id.copy_from_slice(&check[..8]);
        Ok(ContentKey { prk, id })
    }

    /// A public fingerprint of the key, stored in the header so that a wrong
    /// key is reported as such before any decryption is tried.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The cipher for one assignment, keyed by the assignment's random salt.
    pub fn cipher(&self, salt: &[u8; 32]) -> ChunkCipher {
        let mut info = b"assignment ".to_vec();
        info.extend_from_slice(salt);
        let key = expand(&self.prk, &info);
        // AES-256 takes any 32-byte key.
        let unbound = UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("32-byte key"));
        ChunkCipher(LessSafeKey::new(unbound))
    }
}

/// Seals and opens the chunks of one assignment.
pub struct ChunkCipher(LessSafeKey);

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCipher(..)")
    }
}

fn nonce(offset: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&offset.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl ChunkCipher {
    /// Encrypts `buf` in place and appends the tag. `offset` (the chunk's
    /// position in the data part) is the nonce; `aad` binds it to its header.
    pub fn seal(&self, offset: u64, aad: &[u8], buf: &mut Vec<u8>) {
        // Sealing only fails for inputs over 64 GiB; chunks are bounded far below.
        let _ = self.0.seal_in_place_append_tag(nonce(offset), Aad::from(aad), buf);
    }

    /// Decrypts `buf` in place (ciphertext + tag) and returns the plaintext.
    pub fn open<'b>(&self, offset: u64, aad: &[u8], buf: &'b mut [u8]) -> Result<&'b mut [u8], CryptoError> {
        self.0.open_in_place(nonce(offset), Aad::from(aad), buf).map_err(|_| CryptoError::Decrypt { offset })
    }
}

/// A SHA-256 digest. Shown and serialised as hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(sha256(data))
    }

    /// The first 8 bytes in hex, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// An incremental SHA-256.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256(..)")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }

    /// The digest as a [`Digest`].
    pub fn digest(self) -> Digest {
        Digest(self.finish())
    }
}

impl std::io::Write for Sha256 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_wrong_key_fails() {
        let k = ContentKey::from_secret(&[7u8; 32]).unwrap();
        let salt = [1u8; 32];
        let mut buf = b"hello world".to_vec();
        k.cipher(&salt).seal(42, b"aad", &mut buf);
        assert_eq!(buf.len(), 11 + AEAD_TAG_LEN);
        let mut copy = buf.clone();
        assert_eq!(k.cipher(&salt).open(42, b"aad", &mut copy).unwrap(), b"hello world");
        let other = ContentKey::from_secret(&[8u8; 32]).unwrap();
        assert_ne!(other.id(), k.id());
        assert!(other.cipher(&salt).open(42, b"aad", &mut buf.clone()).is_err());
        assert!(k.cipher(&salt).open(43, b"aad", &mut buf.clone()).is_err());
        assert!(k.cipher(&[2u8; 32]).open(42, b"aad", &mut buf.clone()).is_err());
        assert!(k.cipher(&salt).open(42, b"aae", &mut buf).is_err());
    }

    #[test]
    fn key_files_are_hex_and_long_enough() {
        assert_eq!(parse_key_file(b"  00112233445566778899aabbccddeeff\n").unwrap().len(), 16);
        assert!(matches!(parse_key_file(b"0011"), Err(CryptoError::ShortSecret { len: 2 })));
        assert!(matches!(parse_key_file(b"zz"), Err(CryptoError::BadKeyFile(_))));
    }

    #[test]
    fn datagram_keys_are_per_label_and_sender() {
        let secret = b"secret secret secret";
        let data = DatagramKeyRoot::derive(secret, "data");
        let nonce = [3u8; DATAGRAM_NONCE_LEN];
        let mut buf = b"frame".to_vec();
        let tag = data.sender_key(7).seal(nonce, b"header", &mut buf);
        assert_ne!(&buf[..], b"frame");
        let opens = |key: DatagramKey, aad: &[u8], nonce, tag| {
            let mut copy = buf.clone();
            key.open(nonce, aad, &mut copy, &tag) && copy == b"frame"
        };
        assert!(opens(data.sender_key(7), b"header", nonce, tag));
        assert!(!opens(data.sender_key(8), b"header", nonce, tag));
        assert!(!opens(DatagramKeyRoot::derive(secret, "control").sender_key(7), b"header", nonce, tag));
        assert!(!opens(
            DatagramKeyRoot::derive(b"other secret!!!!", "data").sender_key(7),
            b"header",
            nonce,
            tag
        ));
        assert!(!opens(data.sender_key(7), b"headex", nonce, tag));
        assert!(!opens(data.sender_key(7), b"header", [4u8; DATAGRAM_NONCE_LEN], tag));
        let mut bad = tag;
        bad[15] ^= 1;
        assert!(!opens(data.sender_key(7), b"header", nonce, bad));
    }

    #[test]
    fn macs_verify_prefixes_and_reject_others() {
        let a = MacKey::derive(b"secret secret secret", "control");
        let b = MacKey::derive(b"secret secret secret", "data");
        let tag = a.sign(&[b"x", b"y"]);
        assert!(a.verify(&[b"xy"], &tag[..16]));
        assert!(!b.verify(&[b"xy"], &tag[..16]));
        assert!(!a.verify(&[b"xz"], &tag));
        assert!(!a.verify(&[b"xy"], &tag[..8]));
    }
}
