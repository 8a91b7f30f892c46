//! CTAP 2.1 PIN/UV auth protocol 2: P-256 ECDH key agreement, HKDF-SHA-256 key
//! derivation, AES-256-CBC encryption and HMAC-SHA-256 authentication. Used by the
//! driver (platform side) and by the simulated card (authenticator side).

use aes::Aes256;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::cbor::{COSE_ALG_ECDH_ES_HKDF_256, CoseKey};

/// PIN protocol errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PinError {
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// The peer's key agreement key is not a valid P-256 point.
    #[error("invalid key agreement public key")]
    BadPublicKey,
    /// A ciphertext is not an IV followed by whole AES blocks.
    #[error("ciphertext length {0} is not 16 + a multiple of 16")]
    BadCiphertext(usize),
}

/// Fills an array from the system random generator.
pub fn random<const N: usize>() -> Result<[u8; N], PinError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| PinError::Random)?;
    Ok(b)
}

/// The two keys derived from the ECDH shared point.
#[derive(Clone)]
pub struct SharedSecret {
    hmac_key: [u8; 32],
    aes_key: [u8; 32],
}

impl core::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl SharedSecret {
    /// KDF of protocol 2: HKDF-SHA-256 with a zero salt over Z, info "CTAP2 HMAC key"
    /// and "CTAP2 AES key".
    pub fn derive(z: &[u8]) -> SharedSecret {
        let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
        let mut hmac_key = [0u8; 32];
        let mut aes_key = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA-256 output length.
        let _ = hk.expand(b"CTAP2 HMAC key", &mut hmac_key);
        let _ = hk.expand(b"CTAP2 AES key", &mut aes_key);
        SharedSecret { hmac_key, aes_key }
    }

    /// encrypt(): a random IV followed by AES-256-CBC of `plaintext` (whole blocks).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, PinError> {
        self.encrypt_with_iv(random::<16>()?, plaintext)
    }

    /// encrypt() with a given IV (tests pin bytes with it).
    pub fn encrypt_with_iv(&self, iv: [u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, PinError> {
        if !plaintext.len().is_multiple_of(16) {
            return Err(PinError::BadCiphertext(plaintext.len()));
        }
        let mut enc = cbc::Encryptor::<Aes256>::new(&self.aes_key.into(), &iv.into());
        let mut out = iv.to_vec();
        for chunk in plaintext.chunks_exact(16) {
            let mut block = aes::Block::default();
            block.copy_from_slice(chunk);
            enc.encrypt_block(&mut block);
            out.extend_from_slice(&block);
        }
        Ok(out)
    }

    /// decrypt(): splits the IV and decrypts the blocks.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, PinError> {
        if ciphertext.len() < 32 || !ciphertext.len().is_multiple_of(16) {
            return Err(PinError::BadCiphertext(ciphertext.len()));
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&ciphertext[..16]);
        let mut dec = cbc::Decryptor::<Aes256>::new(&self.aes_key.into(), &iv.into());
        let mut out = Vec::with_capacity(ciphertext.len() - 16);
        for chunk in ciphertext[16..].chunks_exact(16) {
            let mut block = aes::Block::default();
            block.copy_from_slice(chunk);
            dec.decrypt_block(&mut block);
            out.extend_from_slice(&block);
        }
        Ok(out)
    }

    /// authenticate() with the shared HMAC key.
    pub fn authenticate(&self, message: &[u8]) -> [u8; 32] {
        authenticate(&self.hmac_key, message)
    }
}

/// authenticate(key, message) of protocol 2: the full 32-byte HMAC-SHA-256.
pub fn authenticate(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// verify(key, message, signature) in constant time.
pub fn verify(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        Err(_) => false,
    }
}

/// LEFT(SHA-256(pin), 16).
pub fn pin_hash(pin: &str) -> [u8; 16] {
    let d = Sha256::digest(pin.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// An ephemeral P-256 key pair for the key agreement.
pub struct KeyAgreement {
    secret: p256::SecretKey,
}

impl KeyAgreement {
    /// A fresh random key pair.
    pub fn generate() -> Result<KeyAgreement, PinError> {
        for _ in 0..16 {
            if let Ok(secret) = p256::SecretKey::from_slice(&random::<32>()?) {
                return Ok(KeyAgreement { secret });
            }
        }
        Err(PinError::Random)
    }

    /// The public key as a COSE key (alg -25).
    pub fn public_cose(&self) -> CoseKey {
        let bytes = self.secret.public_key().to_sec1_bytes();
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        if bytes.len() == 65 {
            x.copy_from_slice(&bytes[1..33]);
            y.copy_from_slice(&bytes[33..65]);
        }
        CoseKey::P256 {
            alg: COSE_ALG_ECDH_ES_HKDF_256,
            x,
            y,
        }
    }

    /// ECDH with the peer's COSE key, then the protocol 2 KDF.
    pub fn shared_secret(&self, peer: &CoseKey) -> Result<SharedSecret, PinError> {
        let CoseKey::P256 { x, y, .. } = peer else {
            return Err(PinError::BadPublicKey);
        };
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..33].copy_from_slice(x);
        sec1[33..].copy_from_slice(y);
        let pk = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| PinError::BadPublicKey)?;
        let z = self.secret.diffie_hellman(&pk);
        Ok(SharedSecret::derive(z.raw_secret_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_secret_and_round_trip() {
        let a = KeyAgreement::generate().unwrap();
        let b = KeyAgreement::generate().unwrap();
        let sa = a.shared_secret(&b.public_cose()).unwrap();
        let sb = b.shared_secret(&a.public_cose()).unwrap();
        let ct = sa.encrypt(&pin_hash("1234")).unwrap();
        assert_eq!(ct.len(), 32);
        assert_eq!(sb.decrypt(&ct).unwrap(), pin_hash("1234"));
        let tag = sa.authenticate(b"m");
        assert!(verify(&sb.hmac_key, b"m", &tag));
        assert!(!verify(&sb.hmac_key, b"n", &tag));
        assert_eq!(sb.decrypt(&ct[..20]), Err(PinError::BadCiphertext(20)));
    }
}
