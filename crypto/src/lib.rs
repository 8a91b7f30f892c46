//! hexa-crypto: the pure cryptographic core of hexa.
//!
//! No I/O beyond the bytes a caller hands in; time is always a parameter
//! (`now: u64`, unix seconds); randomness comes only from the OS RNG
//! (`getrandom`). Auditors' tools link this crate and nothing else of ours.
//!
//! Modules:
//! - [`keys`]: Ed25519 keys, RFC 7638 thumbprint key IDs, JWK/JWKS (RFC 8037).
//! - [`keyfile`]: the appliance's secrets file (optionally Argon2id + XChaCha20-Poly1305).
//! - [`jcs`]: RFC 8785 JSON canonicalization.
//! - [`jws`]: detached compact JWS (RFC 7515 appendix F) with `alg: EdDSA`.
//! - [`seal`]: XChaCha20-Poly1305 sealing with AAD binding, HKDF per-purpose keys, blind indexes.
//! - [`merkle`]: RFC 6962/9162 Merkle tree hashing, proofs, frontier, storage-friendly proofs.
//! - [`checkpoint`]: C2SP tlog-checkpoint bodies and C2SP signed notes (Ed25519).
//! - [`roster`]: the signed roster of trusted facilities and their node keys.
//! - [`consent`]: consent challenges and FIDO2 (CTAP2) assertion verification.
//!
//! API notes relative to the original design sketch:
//! - `merkle::*_from` functions return `Result<_, merkle::SourceError<S::Error>>`, which wraps
//!   either the source's own error or a [`merkle::ProofError`].
//! - `consent::ConsentChallenge::validate` exists; `verify_assertion` calls it (all integer
//!   times must be at most 2^53 - 1 so that the JCS encoding is exact).
//! - `jcs::canonicalize` never fails for a `serde_json::Value` (it cannot hold NaN/Infinity),
//!   but keeps its `Result` signature; integers beyond ±2^53 are formatted as the nearest
//!   IEEE 754 double, exactly as RFC 8785 prescribes.
//! - Additions beyond the sketch: `jcs::parse_strict` (JSON parse rejecting duplicate member
//!   names) and `jcs::format_es6`; `seal::SealKey::{from_bytes, seal_with_nonce,
//!   open_with_nonce}` (raw AEAD, used for the key file and the published vector);
//!   `keyfile::ApplianceSecrets::to_file_bytes_with_params`; `checkpoint::{key_hash,
//!   try_sign_note}` (`sign_note` stays infallible; a malformed body simply will not open);
//!   `roster::VerifiedRoster::roster`; `consent::VerifiedAssertion` carries the new
//!   `sign_count` the caller must persist.
//! - `roster::SignedRoster` and `merkle::Frontier` implement serde `Serialize`/`Deserialize`
//!   (a `Frontier` with the wrong number of hashes for its size is rejected on load).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod consent;
pub mod jcs;
pub mod jws;
pub mod keyfile;
pub mod keys;
pub mod merkle;
pub mod roster;

pub mod seal;

/// Base64 helpers shared by the modules (URL-safe without padding, and standard with padding).
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    /// Encodes as base64url without padding.
    pub(crate) fn url_encode(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Appends the base64url (no padding) of `b` to `out`.
    pub(crate) fn url_encode_into(b: &[u8], out: &mut String) {
        URL_SAFE_NO_PAD.encode_string(b, out);
    }

    /// Decodes strict base64url without padding (non-canonical trailing bits are rejected).
    pub(crate) fn url_decode(s: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(s).ok()
    }

    /// Encodes as standard base64 with padding.
    pub(crate) fn std_encode(b: &[u8]) -> String {
        STANDARD.encode(b)
    }

    /// Decodes strict standard base64 with padding.
    pub(crate) fn std_decode(s: &str) -> Option<Vec<u8>> {
        STANDARD.decode(s).ok()
    }
}

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// Bytes of one thread's pool in [`pooled_random`].
const POOL: usize = 4096;

/// A thread's pool of OS random bytes, zeroed as they are handed out and when the thread
/// ends.
struct Pool {
    bytes: Box<[u8; POOL]>,
    used: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.bytes.zeroize();
    }
}

thread_local! {
    static RANDOM_POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool {
        bytes: Box::new([0u8; POOL]),
        used: POOL,
    });
}

/// Fills `buf` (nonces, ids) with bytes from the operating system's random number
/// generator, fetched [`POOL`] bytes at a time per thread instead of one system call per
/// value: a store create draws six values (three seal nonces, three ids), and the calls
/// cost about 2 % of its CPU. Every byte still comes from the OS and is handed out once,
/// then zeroed in the pool; nothing is derived or stretched. Requests over a quarter of
/// the pool go to the OS directly. Long-lived secrets (keys, salts) use [`os_random`].
pub fn pooled_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    use zeroize::Zeroize as _;
    if buf.len() > POOL / 4 {
        return getrandom::fill(buf);
    }
    // `try_with`: during the thread's own teardown (a destructor that seals) the pool may
    // be gone already; the OS is asked directly then, never a panic.
    let pooled = RANDOM_POOL.try_with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return getrandom::fill(buf);
        };
        if pool.used + buf.len() > POOL {
            getrandom::fill(&mut pool.bytes[..])?;
            pool.used = 0;
        }
        let range = pool.used..pool.used + buf.len();
        buf.copy_from_slice(&pool.bytes[range.clone()]);
        pool.bytes[range].zeroize();
        pool.used += buf.len();
        Ok(())
    });
    match pooled {
        Ok(r) => r,
        Err(_) => getrandom::fill(buf),
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod random_tests {
    use super::*;

    #[test]
    fn pooled_random_hands_out_each_byte_once_and_refills() {
        let mut seen = std::collections::HashSet::new();
        // Several pools' worth of 24-byte nonces: all distinct, none all zero.
        for _ in 0..(3 * POOL / 24) {
            let mut n = [0u8; 24];
            pooled_random(&mut n).unwrap();
            assert_ne!(n, [0u8; 24]);
            assert!(seen.insert(n), "a nonce repeated");
        }
        // The handed-out bytes are zeroed in the pool.
        RANDOM_POOL.with(|p| {
            let p = p.borrow();
            assert!(p.bytes[..p.used].iter().all(|&b| b == 0));
        });
        // Large requests bypass the pool and are filled too.
        let mut big = vec![0u8; POOL];
        pooled_random(&mut big).unwrap();
        assert!(big.iter().any(|&b| b != 0));
        let mut empty = [0u8; 0];
        pooled_random(&mut empty).unwrap();
    }

    /// A thread-local destructor that draws randomness while the thread ends gets bytes,
    /// whether the pool is still there or already gone; it never panics.
    #[test]
    fn pooled_random_works_in_thread_local_destructors() {
        struct DrawsOnDrop(std::sync::mpsc::Sender<[u8; 24]>);
        impl Drop for DrawsOnDrop {
            fn drop(&mut self) {
                let mut n = [0u8; 24];
                pooled_random(&mut n).expect("randomness during teardown");
                let _ = self.0.send(n);
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<DrawsOnDrop>> =
                const { std::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            LATE.with(|l| *l.borrow_mut() = Some(DrawsOnDrop(tx)));
            let mut n = [0u8; 24];
            pooled_random(&mut n).unwrap();
        })
        .join()
        .expect("no panic while the thread ends");
        assert_ne!(rx.recv().unwrap(), [0u8; 24]);
    }
}
