//! The appliance's secrets file: the node signing key and the 32-byte master key.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! plain:      "HEXAKEY" '1' 0x00 || node_seed(32) || master(32) || SHA-256(all preceding bytes)
//! encrypted:  "HEXAKEY" '1' 0x01 || m_cost u32 (KiB) || t_cost u32 || p_cost u32 || salt(16)
//!             || nonce(24) || XChaCha20-Poly1305(key, nonce, node_seed || master, aad = header)
//! ```
//!
//! where `key = Argon2id(passphrase, salt, m_cost, t_cost, p_cost)` and `header` is every byte
//! before the ciphertext. Writing it with mode 0600 is I/O and belongs to the appliance.

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::keys::SigningKey;
use crate::seal::{MasterKey, SealKey};

/// Magic prefix; the byte after it is the format version.
pub const MAGIC: &[u8; 7] = b"HEXAKEY";
/// The only format version this crate writes and reads.
pub const VERSION: u8 = b'1';
/// Argon2id memory cost written into new files (KiB): 19 MiB, the OWASP minimum.
pub const DEFAULT_M_COST: u32 = 19 * 1024;
/// Argon2id passes written into new files.
pub const DEFAULT_T_COST: u32 = 2;
/// Argon2id lanes written into new files.
pub const DEFAULT_P_COST: u32 = 1;
/// Largest memory cost accepted when reading (1 GiB) so a crafted file cannot exhaust memory.
pub const MAX_M_COST: u32 = 1024 * 1024;
/// Largest pass count accepted when reading.
pub const MAX_T_COST: u32 = 64;

const MODE_PLAIN: u8 = 0;
const MODE_ARGON2ID_XCHACHA: u8 = 1;
const SECRET_LEN: usize = 64;
const PLAIN_LEN: usize = 9 + SECRET_LEN + 32;
const ENC_HEADER_LEN: usize = 9 + 12 + 16 + 24;
const ENC_LEN: usize = ENC_HEADER_LEN + SECRET_LEN + 16;

/// Errors reading or writing a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The passphrase does not open the file (or the encrypted file was altered).
    #[error("wrong passphrase for the key file (or the file is corrupted)")]
    WrongPassphrase,
    /// The file is passphrase-protected and no passphrase was given.
    #[error("the key file is protected by a passphrase; supply it to unlock the appliance")]
    PassphraseRequired,
    /// A passphrase was given but the file is not passphrase-protected.
    #[error("a passphrase was given but the key file is not passphrase-protected")]
    NotEncrypted,
    /// An empty passphrase was given for writing.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// The bytes are not a hexa key file, or are truncated or corrupted.
    #[error("malformed key file: {0}")]
    Malformed(&'static str),
    /// A hexa key file of a format version this build does not know.
    #[error("unsupported key file version {0:?}; upgrade hexa to read it")]
    UnsupportedVersion(char),
    /// The Argon2id parameters stored in the file are out of the accepted range.
    #[error("key file Argon2id parameters out of range (m={m} KiB, t={t}, p={p})")]
    BadParams {
        /// Memory cost in KiB.
        m: u32,
        /// Passes.
        t: u32,
        /// Lanes.
        p: u32,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system random number generator failed: {0}")]
    Rng(String),
    /// Argon2id itself failed.
    #[error("Argon2id failed: {0}")]
    Kdf(String),
}

/// The appliance's secrets: node signing key and master key. Zeroized on drop.
pub struct ApplianceSecrets {
    /// The node's Ed25519 signing key (signs records, checkpoints).
    pub node_key: SigningKey,
    /// The master key all sealing and blind-index keys derive from.
    pub master_key: MasterKey,
}

impl std::fmt::Debug for ApplianceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceSecrets")
            .field("node_key", &self.node_key)
            .field("master_key", &self.master_key)
            .finish()
    }
}

impl ApplianceSecrets {
    /// Generates fresh secrets from the OS RNG.
    pub fn generate() -> Result<Self, KeyFileError> {
        Ok(Self {
            node_key: SigningKey::generate().map_err(|e| KeyFileError::Rng(e.to_string()))?,
            master_key: MasterKey::generate().map_err(|e| KeyFileError::Rng(e.to_string()))?,
        })
    }

    /// Serializes to key-file bytes, encrypting under `passphrase` when given
    /// (Argon2id m=19 MiB, t=2, p=1, random 16-byte salt; XChaCha20-Poly1305).
    pub fn to_file_bytes(&self, passphrase: Option<&[u8]>) -> Result<Vec<u8>, KeyFileError> {
        self.to_file_bytes_with_params(passphrase, DEFAULT_M_COST, DEFAULT_T_COST, DEFAULT_P_COST)
    }

    /// Like [`ApplianceSecrets::to_file_bytes`] with explicit Argon2id costs (at least the
    /// defaults: m >= 19456 KiB, t >= 2).
    pub fn to_file_bytes_with_params(
        &self,
        passphrase: Option<&[u8]>,
        m: u32,
        t: u32,
        p: u32,
    ) -> Result<Vec<u8>, KeyFileError> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret[..32].copy_from_slice(self.node_key.seed());
        secret[32..].copy_from_slice(self.master_key.as_bytes());
        let mut out = Vec::with_capacity(ENC_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        match passphrase {
            None => {
                out.push(MODE_PLAIN);
                out.extend_from_slice(secret.as_ref());
                let digest = crate::sha256(&out);
                out.extend_from_slice(&digest);
            }
            Some(pass) => {
                if pass.is_empty() {
                    return Err(KeyFileError::EmptyPassphrase);
                }
                check_params(m, t, p)?;
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 24];
                crate::os_random(&mut salt).map_err(|e| KeyFileError::Rng(e.to_string()))?;
                crate::os_random(&mut nonce).map_err(|e| KeyFileError::Rng(e.to_string()))?;
                out.push(MODE_ARGON2ID_XCHACHA);
                out.extend_from_slice(&m.to_be_bytes());
                out.extend_from_slice(&t.to_be_bytes());
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&salt);
                out.extend_from_slice(&nonce);
                let key = derive(pass, &salt, m, t, p)?;
                let ct = key
                    .seal_with_nonce(&nonce, secret.as_ref(), &out)
                    .map_err(|_| KeyFileError::Malformed("encryption failed"))?;
                out.extend_from_slice(&ct);
            }
        }
        Ok(out)
    }

    /// Parses key-file bytes, decrypting with `passphrase` if the file is protected.
    pub fn from_file_bytes(b: &[u8], passphrase: Option<&[u8]>) -> Result<Self, KeyFileError> {
        if b.len() < 9 || &b[..7] != MAGIC {
            return Err(KeyFileError::Malformed("not a hexa key file (bad magic)"));
        }
        if b[7] != VERSION {
            return Err(KeyFileError::UnsupportedVersion(char::from(b[7])));
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        match b[8] {
            MODE_PLAIN => {
                if passphrase.is_some() {
                    return Err(KeyFileError::NotEncrypted);
                }
                if b.len() != PLAIN_LEN {
                    return Err(KeyFileError::Malformed("wrong length"));
                }
                let digest = crate::sha256(&b[..PLAIN_LEN - 32]);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    &digest[..],
                    &b[PLAIN_LEN - 32..],
                )) {
                    return Err(KeyFileError::Malformed("checksum mismatch"));
                }
                secret.copy_from_slice(&b[9..9 + SECRET_LEN]);
            }
            MODE_ARGON2ID_XCHACHA => {
                let pass = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
                if b.len() != ENC_LEN {
                    return Err(KeyFileError::Malformed("wrong length"));
                }
                let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                let (m, t, p) = (be(9), be(13), be(17));
                check_params(m, t, p)?;
                let salt = &b[21..37];
                let mut nonce = [0u8; 24];
                nonce.copy_from_slice(&b[37..61]);
                let key = derive(pass, salt, m, t, p)?;
                let plain = Zeroizing::new(
                    key.open_with_nonce(&nonce, &b[ENC_HEADER_LEN..], &b[..ENC_HEADER_LEN])
                        .map_err(|_| KeyFileError::WrongPassphrase)?,
                );
                if plain.len() != SECRET_LEN {
                    return Err(KeyFileError::Malformed("wrong secret length"));
                }
                secret.copy_from_slice(&plain);
            }
            _ => return Err(KeyFileError::Malformed("unknown protection mode")),
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&secret[..32]);
        let mut master = [0u8; 32];
        master.copy_from_slice(&secret[32..]);
        Ok(Self {
            node_key: SigningKey::from_seed(&seed),
            master_key: MasterKey::from_bytes(master),
        })
    }
}

fn check_params(m: u32, t: u32, p: u32) -> Result<(), KeyFileError> {
    if !(DEFAULT_M_COST..=MAX_M_COST).contains(&m)
        || !(DEFAULT_T_COST..=MAX_T_COST).contains(&t)
        || !(1..=16).contains(&p)
        || m < 8 * p
    {
        return Err(KeyFileError::BadParams { m, t, p });
    }
    Ok(())
}

fn derive(pass: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<SealKey, KeyFileError> {
    let params = Params::new(m, t, p, Some(32)).map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass, salt, key.as_mut())
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    Ok(SealKey::from_bytes(*key))
}
