//! Bounded CBOR decoding and the CTAP2 structures built from it: authenticator data,
//! COSE keys, integer-keyed maps.

use ciborium::Value;
use thiserror::Error;

/// Largest CBOR message accepted from a card (CTAP's default maxMsgSize is 1024; leave room).
pub const MAX_CBOR_SIZE: usize = 8 * 1024;
/// Deepest nesting accepted.
pub const MAX_CBOR_DEPTH: usize = 16;

/// COSE algorithm: EdDSA (Ed25519).
pub const COSE_ALG_EDDSA: i64 = -8;
/// COSE algorithm: ECDSA with SHA-256 on P-256.
pub const COSE_ALG_ES256: i64 = -7;
/// COSE algorithm used for the PIN protocol key agreement (ECDH-ES + HKDF-256).
pub const COSE_ALG_ECDH_ES_HKDF_256: i64 = -25;

/// CBOR decoding and structure errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CborError {
    /// The message exceeds [`MAX_CBOR_SIZE`].
    #[error("CBOR message of {0} bytes exceeds the cap")]
    TooLarge(usize),
    /// Not well-formed CBOR, too deep, or trailing bytes.
    #[error("invalid CBOR: {0}")]
    Invalid(String),
    /// Well-formed CBOR of the wrong shape.
    #[error("unexpected CBOR structure: {0}")]
    Shape(&'static str),
}

/// Decodes exactly one CBOR item from `bytes` (size- and depth-capped, no trailing bytes).
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    let (v, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CborError::Invalid(
            "trailing bytes after the CBOR item".into(),
        ));
    }
    Ok(v)
}

/// Decodes one CBOR item at the start of `bytes`; returns it and the bytes it used.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Value, usize), CborError> {
    if bytes.len() > MAX_CBOR_SIZE {
        return Err(CborError::TooLarge(bytes.len()));
    }
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_CBOR_DEPTH)
        .map_err(|e| CborError::Invalid(e.to_string()))?;
    Ok((v, bytes.len() - rest.len()))
}

/// Encodes a value.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(v, &mut out);
    out
}

/// Integer-keyed map entry lookup.
pub fn get_int(map: &[(Value, Value)], key: i64) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| k.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(key))
        .map(|(_, v)| v)
}

/// Text-keyed map entry lookup.
pub fn get_text<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// The value as a map.
pub fn as_map(v: &Value) -> Result<&[(Value, Value)], CborError> {
    v.as_map()
        .map(|m| m.as_slice())
        .ok_or(CborError::Shape("expected a map"))
}

/// The value as bytes.
pub fn as_bytes(v: &Value) -> Result<&[u8], CborError> {
    v.as_bytes()
        .map(|b| b.as_slice())
        .ok_or(CborError::Shape("expected a byte string"))
}

/// The value as an i64.
pub fn as_i64(v: &Value) -> Result<i64, CborError> {
    v.as_integer()
        .and_then(|i| i64::try_from(i).ok())
        .ok_or(CborError::Shape("expected an integer"))
}

/// An integer CBOR value.
pub fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

/// A COSE public key as used by WebAuthn (kty/alg/crv/x/y with labels 1, 3, -1, -2, -3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoseKey {
    /// OKP / Ed25519, alg -8.
    Ed25519 {
        /// 32-byte public key.
        x: [u8; 32],
    },
    /// EC2 / P-256 with `alg` (-7 for ES256, -25 for the PIN protocol key agreement).
    P256 {
        /// COSE algorithm.
        alg: i64,
        /// X coordinate.
        x: [u8; 32],
        /// Y coordinate.
        y: [u8; 32],
    },
}

impl CoseKey {
    /// COSE algorithm of the key.
    pub fn alg(&self) -> i64 {
        match self {
            CoseKey::Ed25519 { .. } => COSE_ALG_EDDSA,
            CoseKey::P256 { alg, .. } => *alg,
        }
    }

    /// The key as a CBOR map.
    pub fn to_value(&self) -> Value {
        match self {
            CoseKey::Ed25519 { x } => Value::Map(vec![
                (int(1), int(1)),
                (int(3), int(COSE_ALG_EDDSA)),
                (int(-1), int(6)),
                (int(-2), Value::Bytes(x.to_vec())),
            ]),
            CoseKey::P256 { alg, x, y } => Value::Map(vec![
                (int(1), int(2)),
                (int(3), int(*alg)),
                (int(-1), int(1)),
                (int(-2), Value::Bytes(x.to_vec())),
                (int(-3), Value::Bytes(y.to_vec())),
            ]),
        }
    }

    /// Parses a COSE key map.
    pub fn from_value(v: &Value) -> Result<CoseKey, CborError> {
        let m = as_map(v)?;
        let field = |k| get_int(m, k).ok_or(CborError::Shape("COSE key field missing"));
        let kty = as_i64(field(1)?)?;
        let coord = |k| -> Result<[u8; 32], CborError> {
            as_bytes(field(k)?)?
                .try_into()
                .map_err(|_| CborError::Shape("COSE coordinate is not 32 bytes"))
        };
        match (kty, as_i64(field(-1)?)?) {
            (1, 6) => Ok(CoseKey::Ed25519 { x: coord(-2)? }),
            (2, 1) => Ok(CoseKey::P256 {
                alg: get_int(m, 3)
                    .map(as_i64)
                    .transpose()?
                    .unwrap_or(COSE_ALG_ES256),
                x: coord(-2)?,
                y: coord(-3)?,
            }),
            _ => Err(CborError::Shape("unsupported COSE key type or curve")),
        }
    }
}

/// Parsed authenticator data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatorData {
    /// SHA-256 of the RP ID.
    pub rp_id_hash: [u8; 32],
    /// Flags (UP 0x01, UV 0x04, AT 0x40, ED 0x80).
    pub flags: u8,
    /// Signature counter.
    pub sign_count: u32,
    /// Attested credential data, present when the AT flag is set.
    pub attested: Option<AttestedCredential>,
}

/// Attested credential data inside authenticator data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedCredential {
    /// Authenticator model identifier.
    pub aaguid: [u8; 16],
    /// Credential ID.
    pub credential_id: Vec<u8>,
    /// The credential public key exactly as encoded by the card (CBOR COSE key).
    pub cose_key: Vec<u8>,
    /// The parsed key.
    pub key: CoseKey,
}

/// Flag: user present.
pub const FLAG_UP: u8 = 0x01;
/// Flag: user verified.
pub const FLAG_UV: u8 = 0x04;
/// Flag: attested credential data included.
pub const FLAG_AT: u8 = 0x40;
/// Longest credential ID accepted.
pub const MAX_CREDENTIAL_ID: usize = 1023;

impl AuthenticatorData {
    /// Parses authenticator data.
    pub fn parse(b: &[u8]) -> Result<AuthenticatorData, CborError> {
        if b.len() < 37 {
            return Err(CborError::Shape("authenticator data shorter than 37 bytes"));
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&b[..32]);
        let flags = b[32];
        let sign_count = u32::from_be_bytes([b[33], b[34], b[35], b[36]]);
        let mut attested = None;
        if flags & FLAG_AT != 0 {
            let rest = &b[37..];
            if rest.len() < 18 {
                return Err(CborError::Shape("attested credential data truncated"));
            }
            let mut aaguid = [0u8; 16];
            aaguid.copy_from_slice(&rest[..16]);
            let len = u16::from_be_bytes([rest[16], rest[17]]) as usize;
            if len > MAX_CREDENTIAL_ID || rest.len() < 18 + len {
                return Err(CborError::Shape("credential ID length out of range"));
            }
            let credential_id = rest[18..18 + len].to_vec();
            let key_bytes = &rest[18 + len..];
            let (v, used) = decode_prefix(key_bytes)?;
            let key = CoseKey::from_value(&v)?;
            if flags & 0x80 == 0 && used != key_bytes.len() {
                return Err(CborError::Shape("bytes after the credential public key"));
            }
            attested = Some(AttestedCredential {
                aaguid,
                credential_id,
                cose_key: key_bytes[..used].to_vec(),
                key,
            });
        } else if flags & 0x80 == 0 && b.len() != 37 {
            return Err(CborError::Shape("bytes after the authenticator data"));
        }
        Ok(AuthenticatorData {
            rp_id_hash,
            flags,
            sign_count,
            attested,
        })
    }
}
