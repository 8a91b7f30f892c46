//! Ed25519 keys: generation from the OS RNG, RFC 7638 thumbprint key IDs, JWK/JWKS (RFC 8037).
//!
//! Public keys are validated on construction: a key that does not decode to a curve point, is
//! not canonically encoded, or has small order (a "weak" key) is rejected. Verification always
//! uses Ed25519 `verify_strict` (rejects non-canonical `S` and small-order `R`/`A`).

use std::fmt;
use std::hash::{Hash, Hasher};

use ed25519_dalek::Signer as _;
use serde_json::{Value, json};
use zeroize::ZeroizeOnDrop;

use crate::b64;

/// Errors about keys and raw signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random number generator failed.
    #[error("the operating system random number generator failed: {0}")]
    Rng(String),
    /// The 32 bytes are not the canonical encoding of an Ed25519 curve point.
    #[error("public key is not a valid Ed25519 point encoding")]
    InvalidPoint,
    /// The point has small order; such keys let one signature verify for many messages.
    #[error("public key is a small-order (weak) Ed25519 point")]
    WeakKey,
    /// The JWK is not an Ed25519 OKP public key.
    #[error("JWK is not a valid Ed25519 OKP public key: {0}")]
    InvalidJwk(&'static str),
    /// The JWK's `kid` is not the RFC 7638 thumbprint of its key.
    #[error("JWK kid does not match the key's RFC 7638 thumbprint")]
    KidMismatch,
    /// The signature is malformed or does not verify.
    #[error("signature verification failed")]
    BadSignature,
}

/// An Ed25519 signing key. Zeroized on drop; `Debug` prints only the kid, never the secret.
#[derive(ZeroizeOnDrop)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    /// The secret scalar and nonce prefix of `inner` (SHA-512 of the seed), expanded once
    /// for [`SigningKey::sign_many`]. It wipes itself on drop.
    #[zeroize(skip)]
    expanded: ed25519_dalek::hazmat::ExpandedSecretKey,
    /// The base64url JWS protected header `{"alg":"EdDSA","kid":..}` of this key, built
    /// once: every signed record version uses it (public data, nothing to wipe).
    #[zeroize(skip)]
    jws_header_b64: String,
}

impl SigningKey {
    /// Generates a fresh key from the operating system's RNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        crate::os_random(seed.as_mut()).map_err(|e| KeyError::Rng(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Builds the key from its 32-byte RFC 8032 seed (the "secret key").
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut key = Self {
            inner: ed25519_dalek::SigningKey::from_bytes(seed),
            expanded: ed25519_dalek::hazmat::ExpandedSecretKey::from(seed),
            jws_header_b64: String::new(),
        };
        let header = json!({"alg": "EdDSA", "kid": key.kid()}).to_string();
        key.jws_header_b64 = b64::url_encode(header.as_bytes());
        key
    }

    /// The base64url JWS protected header of this key's signatures (see
    /// [`crate::jws::sign_detached`]).
    pub(crate) fn jws_header_b64(&self) -> &str {
        &self.jws_header_b64
    }

    /// The 32-byte seed; only for writing the key file.
    pub fn seed(&self) -> &[u8; 32] {
        self.inner.as_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        let vk = self.inner.verifying_key();
        PublicKey {
            bytes: vk.to_bytes(),
            vk,
        }
    }

    /// The key ID: RFC 7638 JWK thumbprint of the public key, base64url without padding.
    pub fn kid(&self) -> String {
        self.public().kid()
    }

    /// Signs `msg` (pure Ed25519, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.inner.sign(msg).to_bytes()
    }

    /// Signs each of `msgs` (pure Ed25519, RFC 8032): the same signatures, byte for byte, as
    /// [`SigningKey::sign`] of each message, in order.
    ///
    /// Each signature still computes its own deterministic nonce `r = H(prefix ‖ M)` and
    /// `R = r·B`; what the batch shares is the field inversion that encodes each `R`
    /// (`EdwardsPoint::compress_batch_alloc`, Montgomery's trick: one inversion and three
    /// multiplications per point instead of an inversion per point, about 3.7 µs each on
    /// the appliance's reference VM). One message is signed by `ed25519-dalek` itself.
    pub fn sign_many(&self, msgs: &[&[u8]]) -> Vec<[u8; 64]> {
        use curve25519_dalek::{EdwardsPoint, Scalar};
        use sha2::{Digest, Sha512};
        use zeroize::Zeroizing;

        if msgs.len() < 2 {
            return msgs.iter().map(|m| self.sign(m)).collect();
        }
        let esk = &self.expanded;
        let hash = |parts: &[&[u8]]| {
            let mut h = Sha512::new();
            for p in parts {
                h.update(p);
            }
            let mut wide = Zeroizing::new([0u8; 64]);
            wide.copy_from_slice(&h.finalize());
            Scalar::from_bytes_mod_order_wide(&wide)
        };
        // The nonces are as secret as the key: wiped when the batch is done.
        let nonces: Zeroizing<Vec<Scalar>> =
            Zeroizing::new(msgs.iter().map(|m| hash(&[&esk.hash_prefix, m])).collect());
        let points: Vec<EdwardsPoint> = nonces.iter().map(EdwardsPoint::mul_base).collect();
        let encoded = EdwardsPoint::compress_batch_alloc(&points);
        let public = self.inner.verifying_key().to_bytes();
        msgs.iter()
            .zip(nonces.iter())
            .zip(&encoded)
            .map(|((m, r), big_r)| {
                let k = hash(&[big_r.as_bytes(), &public, m]);
                let s = k * esk.scalar + r;
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(big_r.as_bytes());
                sig[32..].copy_from_slice(s.as_bytes());
                sig
            })
            .collect()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

/// A validated Ed25519 public key.
#[derive(Clone)]
pub struct PublicKey {
    bytes: [u8; 32],
    vk: ed25519_dalek::VerifyingKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}
impl Hash for PublicKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kid())
    }
}

impl PublicKey {
    /// Parses a 32-byte public key, rejecting non-points, non-canonical encodings and
    /// small-order (weak) keys.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, KeyError> {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(b).map_err(|_| KeyError::InvalidPoint)?;
        if vk.to_edwards().compress().as_bytes() != b {
            return Err(KeyError::InvalidPoint);
        }
        if vk.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(Self { bytes: *b, vk })
    }

    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(`{"crv":"Ed25519","kty":"OKP","x":"..."}`)).
    pub fn kid(&self) -> String {
        let canonical = format!(
            "{{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"{}\"}}",
            b64::url_encode(&self.bytes)
        );
        b64::url_encode(&crate::sha256(canonical.as_bytes()))
    }

    /// The public JWK: `{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}`.
    pub fn to_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64::url_encode(&self.bytes),
            "kid": self.kid(),
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Parses a public JWK. Rejects private keys (`d`), other key types and curves, an `alg`
    /// other than `EdDSA`/`Ed25519`, and a `kid` that is not the key's thumbprint.
    pub fn from_jwk(v: &Value) -> Result<Self, KeyError> {
        let obj = v
            .as_object()
            .ok_or(KeyError::InvalidJwk("not a JSON object"))?;
        if obj.get("kty").and_then(Value::as_str) != Some("OKP") {
            return Err(KeyError::InvalidJwk("kty must be \"OKP\""));
        }
        if obj.get("crv").and_then(Value::as_str) != Some("Ed25519") {
            return Err(KeyError::InvalidJwk("crv must be \"Ed25519\""));
        }
        if obj.contains_key("d") {
            return Err(KeyError::InvalidJwk("contains private key material \"d\""));
        }
        if let Some(alg) = obj.get("alg") {
            match alg.as_str() {
                Some("EdDSA") | Some("Ed25519") => {}
                _ => return Err(KeyError::InvalidJwk("alg must be \"EdDSA\"")),
            }
        }
        let x = obj
            .get("x")
            .and_then(Value::as_str)
            .ok_or(KeyError::InvalidJwk("missing \"x\""))?;
        let raw = b64::url_decode(x).ok_or(KeyError::InvalidJwk("\"x\" is not base64url"))?;
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidJwk("\"x\" is not 32 bytes"))?;
        let key = Self::from_bytes(&arr)?;
        if let Some(kid) = obj.get("kid")
            && kid.as_str() != Some(key.kid().as_str())
        {
            return Err(KeyError::KidMismatch);
        }
        Ok(key)
    }

    /// Verifies a 64-byte Ed25519 signature with `verify_strict` (rejects `S >= L`,
    /// small-order `R`, and any length other than 64).
    pub fn verify_strict(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| KeyError::BadSignature)?;
        self.vk
            .verify_strict(msg, &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

/// A JWKS document: `{"keys":[jwk, ...]}`.
pub fn jwks(keys: &[PublicKey]) -> Value {
    json!({ "keys": keys.iter().map(PublicKey::to_jwk).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret() {
        let k = SigningKey::from_seed(&[7u8; 32]);
        let d = format!("{k:?}");
        assert!(d.contains(&k.kid()));
        assert!(!d.contains("07, 07"));
        assert!(!d.contains("[7, 7"));
    }

    #[test]
    fn jwk_roundtrip_and_kid_check() {
        let k = SigningKey::generate().unwrap();
        let p = k.public();
        let jwk = p.to_jwk();
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), p);
        let mut bad = jwk.clone();
        bad["kid"] = json!("nope");
        assert_eq!(PublicKey::from_jwk(&bad), Err(KeyError::KidMismatch));
        let mut priv_ = jwk;
        priv_["d"] = json!("AAAA");
        assert!(PublicKey::from_jwk(&priv_).is_err());
        assert_eq!(
            jwks(std::slice::from_ref(&p))["keys"][0]["kid"],
            json!(p.kid())
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A batch signs exactly what one-by-one `ed25519-dalek` signing signs (Ed25519 is
        /// deterministic), and every signature passes `verify_strict`.
        #[test]
        fn sign_many_equals_signing_each(
            seed in proptest::array::uniform32(proptest::num::u8::ANY),
            msgs in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
        ) {
            let k = SigningKey::from_seed(&seed);
            let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let batch = k.sign_many(&refs);
            proptest::prop_assert_eq!(batch.len(), msgs.len());
            let p = k.public();
            for (m, sig) in msgs.iter().zip(&batch) {
                proptest::prop_assert_eq!(sig, &k.sign(m));
                proptest::prop_assert!(p.verify_strict(m, sig).is_ok());
            }
        }
    }

    /// RFC 8032 section 7.1, TEST 2 and TEST 3, signed together in one batch.
    #[test]
    fn sign_many_matches_rfc_8032_vectors() {
        let seed2: [u8; 32] =
            hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
                .unwrap()
                .try_into()
                .unwrap();
        let seed3: [u8; 32] =
            hex::decode("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
                .unwrap()
                .try_into()
                .unwrap();
        let k2 = SigningKey::from_seed(&seed2);
        let k3 = SigningKey::from_seed(&seed3);
        let sig2 = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";
        let sig3 = "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a";
        let m2 = [0x72u8];
        let m3 = [0xafu8, 0x82];
        // Two keys cannot share a batch, so each key signs its message twice beside another.
        let b2 = k2.sign_many(&[&m2, &m3, &m2]);
        let b3 = k3.sign_many(&[&m2, &m3]);
        assert_eq!(hex::encode(b2[0]), sig2);
        assert_eq!(hex::encode(b2[2]), sig2);
        assert_eq!(hex::encode(b3[1]), sig3);
    }
}
