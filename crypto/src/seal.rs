//! Sealing values at rest: XChaCha20-Poly1305 with random 24-byte nonces, per-purpose keys
//! derived from one master key with HKDF-SHA256, and an AAD that binds a sealed value to where
//! it lives (database, key, version) so that a value moved or replayed elsewhere fails to open.
//! Blind indexes (HMAC-SHA256 keyed hashes) make equality search possible without plaintext.

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the random nonce prefix of a sealed value.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag suffix of a sealed value.
pub const TAG_LEN: usize = 16;

/// Errors from sealing and opening.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The operating system's random number generator failed.
    #[error("the operating system random number generator failed: {0}")]
    Rng(String),
    /// The sealed value is shorter than nonce + tag.
    #[error("sealed value is truncated ({0} bytes)")]
    Truncated(usize),
    /// Authentication failed: wrong key, tampered bytes, or a value moved to another place.
    #[error(
        "sealed value failed authentication (tampered, wrong key, or wrong database/key/version)"
    )]
    Open,
    /// Encryption failed (the plaintext is too long for the AEAD).
    #[error("encryption failed")]
    Seal,
}

/// The 32-byte master key all sealing and blind-index keys derive from. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Generates a master key from the operating system's RNG.
    pub fn generate() -> Result<Self, SealError> {
        let mut k = [0u8; 32];
        crate::os_random(&mut k).map_err(|e| SealError::Rng(e.to_string()))?;
        Ok(Self(k))
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw key bytes (for the key file only).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The sealing key for `purpose` (HKDF-SHA256, info `"hexa seal v1 " + purpose`).
    pub fn sealing_key(&self, purpose: &str) -> SealKey {
        SealKey(self.derive("hexa seal v1 ", purpose))
    }

    /// The blind-index key for `purpose` (HKDF-SHA256, info `"hexa blind index v1 " + purpose`).
    pub fn blind_index_key(&self, purpose: &str) -> BlindIndexKey {
        BlindIndexKey::new(self.derive("hexa blind index v1 ", purpose))
    }

    fn derive(&self, prefix: &str, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut info = Vec::with_capacity(prefix.len() + purpose.len());
        info.extend_from_slice(prefix.as_bytes());
        info.extend_from_slice(purpose.as_bytes());
        let mut okm = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length (<= 255 * 32).
        if hk.expand(&info, &mut okm).is_err() {
            unreachable!("HKDF-SHA256 can always expand 32 bytes");
        }
        okm
    }
}

/// Where a sealed value lives; authenticated but not encrypted.
///
/// Encoded unambiguously as `"hexa-aad-v1" || u64be(len(database)) || database ||
/// u64be(len(key)) || key || u64be(version)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    /// The logical database (table) the value is stored in.
    pub database: &'a str,
    /// The record key the value is stored under.
    pub key: &'a [u8],
    /// The record version, so an old value cannot be replayed as a newer one.
    pub version: u64,
}

impl Aad<'_> {
    /// The unambiguous byte encoding used as AEAD associated data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + 24 + self.database.len() + self.key.len());
        out.extend_from_slice(b"hexa-aad-v1");
        out.extend_from_slice(&(self.database.len() as u64).to_be_bytes());
        out.extend_from_slice(self.database.as_bytes());
        out.extend_from_slice(&(self.key.len() as u64).to_be_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// A per-purpose XChaCha20-Poly1305 key. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Wraps raw key bytes (mainly for test vectors; normally derive from a [`MasterKey`]).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// Seals `plaintext` bound to `aad`; returns `nonce(24) || ciphertext || tag(16)`, the
    /// ciphertext encrypted in place in the one buffer returned.
    pub fn seal(&self, plaintext: &[u8], aad: &Aad) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::pooled_random(&mut nonce).map_err(|e| SealError::Rng(e.to_string()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let cipher = XChaCha20Poly1305::new(&self.0.into());
        let tag = cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &aad.encode(),
                (&mut out[NONCE_LEN..]).into(),
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value produced by [`SealKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &Aad) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated(sealed.len()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Open)?;
        self.open_with_nonce(&nonce, ct, &aad.encode())
    }

    /// Raw XChaCha20-Poly1305 encryption with a caller-chosen nonce; returns `ciphertext || tag`.
    /// Never reuse a nonce: prefer [`SealKey::seal`], which draws a random one.
    pub fn seal_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let cipher = XChaCha20Poly1305::new(&self.0.into());
        cipher
            .encrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Seal)
    }

    /// Raw XChaCha20-Poly1305 decryption of `ciphertext || tag`.
    pub fn open_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let cipher = XChaCha20Poly1305::new(&self.0.into());
        cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Open)
    }
}

/// A key for blind indexes (keyed hashes of searchable fields). Zeroized on drop.
///
/// HMAC-SHA256 (RFC 2104) written over SHA-256's compression function: the SHA-256 states
/// after the key's inner and outer pad blocks are computed once, when the key is derived,
/// and an index is then two compressions for a field and term of up to 47 bytes together
/// (one more per further 64), with no hasher state cloned or buffered. The pad states are
/// as secret as the key and are wiped with it; the buffers an index fills are wiped too.
/// Tests hold it equal to the `hmac` crate's HMAC-SHA256.
#[derive(Clone)]
pub struct BlindIndexKey {
    key: [u8; 32],
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Drop for BlindIndexKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

impl ZeroizeOnDrop for BlindIndexKey {}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexKey(..)")
    }
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The SHA-256 state after one 64-byte block: `key` (zero-padded) XOR `pad`.
fn pad_state(key: &[u8; 32], pad: u8) -> [u32; 8] {
    let mut block = [pad; 64];
    for (b, k) in block.iter_mut().zip(key) {
        *b ^= k;
    }
    let mut state = SHA256_IV;
    sha2::block_api::compress256(&mut state, &[block]);
    block.zeroize();
    state
}

impl BlindIndexKey {
    fn new(key: [u8; 32]) -> Self {
        let (inner, outer) = (pad_state(&key, 0x36), pad_state(&key, 0x5c));
        BlindIndexKey { key, inner, outer }
    }

    /// HMAC-SHA256 over `u64be(len(field)) || field || value`: the field name is bound in, so
    /// equal values in different fields give unrelated indexes.
    pub fn index(&self, field: &str, value: &[u8]) -> [u8; 32] {
        let len = (field.len() as u64).to_be_bytes();
        let parts: [&[u8]; 3] = [&len, field.as_bytes(), value];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Inner hash: the message after the inner pad block, then SHA-256's padding.
        let mut state = self.inner;
        let mut block = [0u8; 64];
        let mut n = 0;
        for mut part in parts {
            while !part.is_empty() {
                let take = part.len().min(64 - n);
                block[n..n + take].copy_from_slice(&part[..take]);
                (n, part) = (n + take, &part[take..]);
                if n == 64 {
                    sha2::block_api::compress256(&mut state, &[block]);
                    n = 0;
                }
            }
        }
        block[n] = 0x80;
        block[n + 1..].fill(0);
        if n >= 56 {
            sha2::block_api::compress256(&mut state, &[block]);
            block.fill(0);
        }
        block[56..].copy_from_slice(&((64 + total as u64) * 8).to_be_bytes());
        sha2::block_api::compress256(&mut state, &[block]);
        // Outer hash: the inner digest after the outer pad block.
        block.fill(0);
        for (out, word) in block.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        block[32] = 0x80;
        block[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        let mut outer = self.outer;
        sha2::block_api::compress256(&mut outer, &[block]);
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(outer) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        block.zeroize();
        state.zeroize();
        outer.zeroize();
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    /// The workspace builds Poly1305's portable backend (`.cargo/config.toml`): for values as
    /// short as the store's, the AVX2 backend's per-key setup costs more than it saves
    /// (`budget/seal_*`, benches/README.md). Fails when that setting is lost. The
    /// XChaCha20-Poly1305 test vector in `tests/vectors.rs` checks the backend's output.
    #[test]
    #[allow(clippy::assertions_on_constants)] // A failing test, not a failing build, says why.
    fn poly1305_is_the_portable_backend() {
        assert!(
            cfg!(poly1305_backend = "soft"),
            "built without --cfg poly1305_backend=\"soft\" (.cargo/config.toml, or RUSTFLAGS replaced it)"
        );
    }

    /// `seal` (in place) writes exactly `nonce || seal_with_nonce(nonce, ..)`.
    #[test]
    fn seal_in_place_equals_the_allocating_form() {
        let k = MasterKey::from_bytes([9; 32]).sealing_key("db");
        let aad = Aad {
            database: "db",
            key: b"k",
            version: 3,
        };
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = k.seal(&pt, &aad).unwrap();
            assert_eq!(sealed.len(), NONCE_LEN + len + TAG_LEN);
            let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().unwrap();
            assert_eq!(
                sealed[NONCE_LEN..],
                k.seal_with_nonce(&nonce, &pt, &aad.encode()).unwrap()[..]
            );
            assert_eq!(k.open(&sealed, &aad).unwrap(), pt);
        }
    }

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let mk = MasterKey::from_bytes([1u8; 32]);
        let k = mk.sealing_key("records");
        let aad = Aad {
            database: "patients",
            key: b"p1",
            version: 3,
        };
        let s = k.seal(b"hello", &aad).unwrap();
        assert_eq!(s.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(k.open(&s, &aad).unwrap(), b"hello");
        let moved = Aad { key: b"p2", ..aad };
        assert_eq!(k.open(&s, &moved), Err(SealError::Open));
        let other = mk.sealing_key("other");
        assert_eq!(other.open(&s, &aad), Err(SealError::Open));
        assert_eq!(k.open(&s[..39], &aad), Err(SealError::Truncated(39)));
    }

    #[test]
    fn aad_is_unambiguous() {
        let a = Aad {
            database: "ab",
            key: b"c",
            version: 1,
        }
        .encode();
        let b = Aad {
            database: "a",
            key: b"bc",
            version: 1,
        }
        .encode();
        assert_ne!(a, b);
    }

    #[test]
    fn blind_index_binds_field_and_key() {
        let mk = MasterKey::from_bytes([2u8; 32]);
        let bi = mk.blind_index_key("search");
        assert_eq!(bi.index("family", b"Doe"), bi.index("family", b"Doe"));
        assert_ne!(bi.index("family", b"Doe"), bi.index("given", b"Doe"));
        assert_ne!(
            bi.index("family", b"Doe"),
            mk.blind_index_key("x").index("family", b"Doe")
        );
    }

    /// The index is HMAC-SHA256 as the `hmac` crate computes it, for every length of field
    /// and term from 0 to 150 bytes together: one, two and three blocks, and the padding on
    /// either side of the 56-byte boundary.
    #[test]
    fn blind_index_matches_hmac_at_every_length() {
        let bi = MasterKey::from_bytes([7u8; 32]).blind_index_key("lengths");
        let text: Vec<u8> = (0..150u8).map(|i| b'a' + i % 26).collect();
        for total in 0..150 {
            for field_len in [0, total / 3, total] {
                let field = std::str::from_utf8(&text[..field_len]).unwrap();
                let value = &text[field_len..total];
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&bi.key).unwrap();
                mac.update(&(field.len() as u64).to_be_bytes());
                mac.update(field.as_bytes());
                mac.update(value);
                let expect: [u8; 32] = mac.finalize().into_bytes().into();
                assert_eq!(
                    bi.index(field, value),
                    expect,
                    "{field_len} + {}",
                    value.len()
                );
            }
        }
    }

    #[test]
    fn blind_index_from_the_prekeyed_state_is_plain_hmac_sha256() {
        // Existing stores hold these values as index keys: the keyed-state reuse must give
        // exactly HMAC-SHA256(key, u64be(len(field)) || field || value), every time.
        let mk = MasterKey::from_bytes([2u8; 32]);
        let bi = mk.blind_index_key("patient.index");
        for (field, value) in [
            ("Patient.family", &b"p:mukamana"[..]),
            ("f", b""),
            ("", b"x"),
        ] {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&bi.key).unwrap();
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
            mac.update(value);
            let expect: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(bi.index(field, value), expect);
            assert_eq!(
                bi.index(field, value),
                expect,
                "the keyed state is not consumed"
            );
        }
        // And the derivation itself is pinned: HKDF-SHA256 of the master key, then the HMAC
        // (value computed independently with Python's hmac and hashlib).
        let hex: String = bi
            .index("Patient.family", b"p:mukamana")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "96b01d131a525d011942c5f13c01a6d7b5645ff8dda0b6d77f91b33d3b436f9a"
        );
    }
}
