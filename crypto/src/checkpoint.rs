//! C2SP tlog-checkpoint bodies and C2SP signed notes with Ed25519 signatures.
//!
//! A checkpoint body is `origin\nsize\nbase64(root)\n` followed by optional extension lines.
//! A signed note is `body + "\n" + signature lines`, each `"— " name " " base64(key_hash(4) ||
//! signature(64)) "\n"`, where key_hash is the first four bytes (big-endian `u32`) of
//! `SHA-256(name || "\n" || 0x01 || public_key)` and the Ed25519 signature covers the body bytes.
//! Verifier keys are written as `name+hex(key_hash)+base64(0x01 || public_key)`.

use crate::b64;
use crate::keys::{PublicKey, SigningKey};
use crate::merkle::Hash;

/// Signature type byte for Ed25519 in C2SP signed notes.
pub const ALG_ED25519: u8 = 0x01;
/// Upper bound on signature lines parsed from one note (as in the Go implementation).
pub const MAX_SIGNATURES: usize = 100;

/// Errors about checkpoints and signed notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The checkpoint body is malformed.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    /// The note text is malformed.
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    /// The verifier key string is malformed.
    #[error("malformed verifier key: {0}")]
    MalformedVkey(&'static str),
    /// The key name is empty or contains whitespace or '+'.
    #[error("invalid key name {0:?}")]
    InvalidName(String),
    /// A signature by a known key does not verify.
    #[error("note signature by {0:?} does not verify")]
    BadSignature(String),
    /// No signature by any of the given verifiers was found.
    #[error("note has no signature from a known key")]
    NoKnownSignature,
    /// The signing key already signed this note.
    #[error("note is already signed by {0:?}")]
    AlreadySigned(String),
}

/// A C2SP tlog checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (unique name of the log).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Merkle tree root hash.
    pub root: Hash,
    /// Optional extension lines (without trailing newline).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint body text, each line ending in `\n`.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64::std_encode(&self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body (as returned by [`open_note`]).
    pub fn parse_body(s: &str) -> Result<Self, NoteError> {
        let m = NoteError::MalformedCheckpoint;
        let text = s
            .strip_suffix('\n')
            .ok_or(m("body must end with a newline"))?;
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(m("empty origin"))?;
        let size_s = lines.next().ok_or(m("missing size"))?;
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(m("size is not a canonical decimal"));
        }
        let size: u64 = size_s.parse().map_err(|_| m("size out of range"))?;
        let root_s = lines.next().ok_or(m("missing root hash"))?;
        let root: Hash = b64::std_decode(root_s)
            .and_then(|r| r.try_into().ok())
            .ok_or(m("root is not base64 of 32 bytes"))?;
        let mut extensions = Vec::new();
        for e in lines {
            if e.is_empty() {
                return Err(m("empty extension line"));
            }
            extensions.push(e.to_owned());
        }
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(m("control character"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// The C2SP key hash of an Ed25519 verifier key.
pub fn key_hash(name: &str, key: &PublicKey) -> u32 {
    let mut data = Vec::with_capacity(name.len() + 34);
    data.extend_from_slice(name.as_bytes());
    data.push(b'\n');
    data.push(ALG_ED25519);
    data.extend_from_slice(key.as_bytes());
    let h = crate::sha256(&data);
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

fn signature_line(body: &str, key_name: &str, key: &SigningKey) -> String {
    let hash = key_hash(key_name, &key.public());
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&hash.to_be_bytes());
    blob.extend_from_slice(&key.sign(body.as_bytes()));
    format!("\u{2014} {key_name} {}\n", b64::std_encode(&blob))
}

/// Signs `body` (which must end in `\n`) and returns the full note text. Invalid inputs (a body
/// not ending in a newline, a name with spaces or '+') are the caller's bug; see
/// [`try_sign_note`] for the checked version.
pub fn sign_note(body: &str, key_name: &str, key: &SigningKey) -> String {
    format!("{body}\n{}", signature_line(body, key_name, key))
}

/// Checked [`sign_note`]: rejects a body without a final newline, containing a blank line
/// or control characters, and invalid key names.
pub fn try_sign_note(body: &str, key_name: &str, key: &SigningKey) -> Result<String, NoteError> {
    check_name(key_name)?;
    check_body(body)?;
    Ok(sign_note(body, key_name, key))
}

fn check_body(body: &str) -> Result<(), NoteError> {
    let m = NoteError::MalformedNote;
    if !body.ends_with('\n') {
        return Err(m("text must end with a newline"));
    }
    if body.contains("\n\n") || body.starts_with('\n') {
        return Err(m("text must not contain a blank line"));
    }
    if body.chars().any(|c| c.is_control() && c != '\n') {
        return Err(m("text contains control characters"));
    }
    Ok(())
}

struct SigLine<'a> {
    name: &'a str,
    hash: u32,
    sig: Vec<u8>,
}

fn split_note(note: &str) -> Result<(&str, Vec<SigLine<'_>>), NoteError> {
    let m = NoteError::MalformedNote;
    let i = note.rfind("\n\n").ok_or(m("no signature block"))?;
    let body = &note[..i + 1];
    check_body(body)?;
    let sigs = &note[i + 2..];
    let sigs = sigs
        .strip_suffix('\n')
        .ok_or(m("signature block must end with a newline"))?;
    let mut out = Vec::new();
    for line in sigs.split('\n') {
        if out.len() >= MAX_SIGNATURES {
            return Err(m("too many signatures"));
        }
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or(m("signature line must start with an em dash"))?;
        let (name, sig_b64) = rest
            .split_once(' ')
            .ok_or(m("signature line lacks a name"))?;
        check_name(name).map_err(|_| m("invalid signer name"))?;
        let blob = b64::std_decode(sig_b64).ok_or(m("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(m("signature too short"));
        }
        out.push(SigLine {
            name,
            hash: u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]),
            sig: blob[4..].to_vec(),
        });
    }
    Ok((body, out))
}

/// Adds a signature by `key` to an existing signed note (a cosignature over the same body).
pub fn add_cosignature(note: &str, key_name: &str, key: &SigningKey) -> Result<String, NoteError> {
    check_name(key_name)?;
    let (body, sigs) = split_note(note)?;
    let hash = key_hash(key_name, &key.public());
    if sigs.iter().any(|s| s.name == key_name && s.hash == hash) {
        return Err(NoteError::AlreadySigned(key_name.to_owned()));
    }
    let mut out = note.to_owned();
    out.push_str(&signature_line(body, key_name, key));
    Ok(out)
}

/// A note verifier: a named Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key name (for a log: its origin).
    pub name: String,
    /// The C2SP key hash of (name, key).
    pub key_hash: u32,
    /// The Ed25519 public key.
    pub key: PublicKey,
}

impl NoteVerifier {
    /// Builds a verifier for `name` and `key`.
    pub fn new(name: &str, key: PublicKey) -> Self {
        Self {
            name: name.to_owned(),
            key_hash: key_hash(name, &key),
            key,
        }
    }

    /// The verifier key string `name+hash+base64(0x01 || key)`.
    pub fn vkey(&self) -> String {
        let mut blob = vec![ALG_ED25519];
        blob.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_hash,
            b64::std_encode(&blob)
        )
    }

    /// Parses a verifier key string, checking the embedded key hash.
    pub fn from_vkey(s: &str) -> Result<Self, NoteError> {
        let m = NoteError::MalformedVkey;
        let mut parts = s.split('+');
        let (Some(name), Some(hash_s), Some(key_s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(m("expected name+hash+key"));
        };
        check_name(name).map_err(|_| m("invalid name"))?;
        if hash_s.len() != 8 || !hash_s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(m("hash must be 8 hex digits"));
        }
        let hash = u32::from_str_radix(hash_s, 16).map_err(|_| m("hash must be hex"))?;
        let blob = b64::std_decode(key_s).ok_or(m("key is not base64"))?;
        if blob.len() != 33 || blob[0] != ALG_ED25519 {
            return Err(m("not an Ed25519 key"));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&blob[1..]);
        let key = PublicKey::from_bytes(&raw).map_err(|_| m("invalid Ed25519 public key"))?;
        let v = Self::new(name, key);
        if v.key_hash != hash {
            return Err(m("key hash does not match name and key"));
        }
        Ok(v)
    }
}

/// Opens a signed note: returns the body and the names of the verifiers whose signatures
/// verified. Signatures by unknown keys are ignored; at least one known signature is required,
/// and a known key's signature that fails to verify is an error.
pub fn open_note(
    note: &str,
    verifiers: &[NoteVerifier],
) -> Result<(String, Vec<String>), NoteError> {
    let (body, sigs) = split_note(note)?;
    let mut names: Vec<String> = Vec::new();
    for s in &sigs {
        let Some(v) = verifiers
            .iter()
            .find(|v| v.name == s.name && v.key_hash == s.hash)
        else {
            continue;
        };
        v.key
            .verify_strict(body.as_bytes(), &s.sig)
            .map_err(|_| NoteError::BadSignature(s.name.to_owned()))?;
        if !names.iter().any(|n| n == s.name) {
            names.push(s.name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(NoteError::NoKnownSignature);
    }
    Ok((body.to_owned(), names))
}
