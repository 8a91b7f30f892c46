//! Consent evidence: the consent challenge with a stable byte encoding, and verification of a
//! FIDO2 (CTAP2 `authenticatorGetAssertion`) assertion over it.
//!
//! # Challenge encoding (stable, version 1)
//!
//! `to_bytes()` is the 15 ASCII bytes `hexa-consent-v1`, one `0x00` byte, then the RFC 8785
//! (JCS) canonical JSON of an object with these members (absent options are omitted):
//! `v` (1), `patient`, `grantee_organization`?, `grantee_practitioner`?, `purpose`, `scope`
//! (array of strings, order kept), `period_start`, `period_end`, `data_period_start`?,
//! `data_period_end`?, `decision` (`"permit"`/`"deny"`), `appliance_id`, `nonce` (base64url
//! without padding of 32 bytes), `issued_at`. Times are unix seconds, at most 2^53 - 1.
//! `from_bytes` accepts only this exact canonical form.
//!
//! # Assertion
//!
//! The authenticator signs `authenticatorData || clientDataHash`, where here `clientDataHash =
//! SHA-256(challenge.to_bytes())`. The credential is a COSE key: alg -8 (Ed25519, verified with
//! `verify_strict`) or alg -7 (ES256 on P-256, DER signature, high-S accepted after
//! normalisation). Checked: appliance ID, time window (with [`MAX_FORWARD_SKEW_SECS`] for a
//! challenge issued slightly in the future), rpIdHash, UP (and UV when required), signature,
//! and a strictly increasing signature counter (unless the authenticator keeps none: both 0).

use ciborium::Value as Cbor;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::b64;
use crate::keys::PublicKey;

/// The domain-separation tag that starts every encoded challenge (followed by a `0x00`).
pub const DOMAIN_TAG: &[u8] = b"hexa-consent-v1";
/// Largest integer JSON (IEEE 754 double) represents exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Tolerated clock skew for a challenge issued ahead of the verifier's clock.
pub const MAX_FORWARD_SKEW_SECS: u64 = 30;
/// COSE algorithm identifier for EdDSA (Ed25519).
pub const COSE_ALG_EDDSA: i64 = -8;
/// COSE algorithm identifier for ES256.
pub const COSE_ALG_ES256: i64 = -7;
/// authenticatorData flag: user present.
pub const FLAG_UP: u8 = 0x01;
/// authenticatorData flag: user verified.
pub const FLAG_UV: u8 = 0x04;
/// authenticatorData flag: attested credential data included.
pub const FLAG_AT: u8 = 0x40;
/// authenticatorData flag: extension data included.
pub const FLAG_ED: u8 = 0x80;

/// Errors from consent encoding and assertion verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// The challenge bytes are not a canonical version-1 challenge.
    #[error("malformed consent challenge: {0}")]
    Malformed(String),
    /// The challenge's fields are inconsistent.
    #[error("invalid consent challenge: {0}")]
    Invalid(String),
    /// The challenge was made for another appliance.
    #[error("challenge was issued for appliance {found:?}, not {expected:?}")]
    ApplianceMismatch {
        /// This appliance's ID.
        expected: String,
        /// The ID in the challenge.
        found: String,
    },
    /// The challenge is issued too far in the future.
    #[error("challenge issued at {issued_at} is in the future (now {now})")]
    NotYetValid {
        /// Challenge issue time.
        issued_at: u64,
        /// Verifier time.
        now: u64,
    },
    /// The challenge's time to live has passed.
    #[error("challenge issued at {issued_at} expired (ttl {ttl_secs} s, now {now})")]
    Expired {
        /// Challenge issue time.
        issued_at: u64,
        /// Allowed lifetime.
        ttl_secs: u64,
        /// Verifier time.
        now: u64,
    },
    /// The COSE key is malformed or unsupported.
    #[error("unsupported or malformed COSE key: {0}")]
    CoseKey(String),
    /// The authenticatorData is malformed.
    #[error("malformed authenticatorData: {0}")]
    AuthenticatorData(&'static str),
    /// rpIdHash is not SHA-256 of the expected RP ID.
    #[error("authenticatorData rpIdHash does not match the relying party ID")]
    RpIdMismatch,
    /// The user-present flag is not set.
    #[error("user presence (UP) flag not set: the card was not touched")]
    UserNotPresent,
    /// User verification was required but not performed.
    #[error("user verification (UV) flag not set but required")]
    UserNotVerified,
    /// The assertion signature does not verify.
    #[error("assertion signature does not verify")]
    BadSignature,
    /// The signature counter did not increase: possible cloned authenticator or replay.
    #[error(
        "signature counter {got} is not greater than the last seen {last} (possible cloned card)"
    )]
    CounterNotIncreased {
        /// Last stored counter.
        last: u32,
        /// Counter in this assertion.
        got: u32,
    },
}

/// Whether the patient grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Consent granted.
    Permit,
    /// Consent refused.
    Deny,
}

/// What the patient consents to, bound to one appliance and one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChallenge {
    /// Encoding version; only 1 exists.
    pub version: u8,
    /// Patient identifier (local reference).
    pub patient: String,
    /// Organization receiving access, if any.
    pub grantee_organization: Option<String>,
    /// Practitioner receiving access, if any.
    pub grantee_practitioner: Option<String>,
    /// Purpose of use (e.g. a v3-ActReason code).
    pub purpose: String,
    /// Resource types or scopes covered.
    pub scope: Vec<String>,
    /// Consent validity start (unix seconds).
    pub period_start: u64,
    /// Consent validity end (unix seconds).
    pub period_end: u64,
    /// Start of the period of data covered, if limited.
    pub data_period_start: Option<u64>,
    /// End of the period of data covered, if limited.
    pub data_period_end: Option<u64>,
    /// Permit or deny.
    pub decision: Decision,
    /// The appliance that issued the challenge.
    pub appliance_id: String,
    /// Fresh random nonce from the appliance.
    pub nonce: [u8; 32],
    /// When the appliance issued the challenge (unix seconds).
    pub issued_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    patient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grantee_organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grantee_practitioner: Option<String>,
    purpose: String,
    scope: Vec<String>,
    period_start: u64,
    period_end: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_period_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_period_end: Option<u64>,
    decision: Decision,
    appliance_id: String,
    nonce: String,
    issued_at: u64,
}

impl ConsentChallenge {
    /// The stable byte encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            v: self.version,
            patient: self.patient.clone(),
            grantee_organization: self.grantee_organization.clone(),
            grantee_practitioner: self.grantee_practitioner.clone(),
            purpose: self.purpose.clone(),
            scope: self.scope.clone(),
            period_start: self.period_start,
            period_end: self.period_end,
            data_period_start: self.data_period_start,
            data_period_end: self.data_period_end,
            decision: self.decision,
            appliance_id: self.appliance_id.clone(),
            nonce: b64::url_encode(&self.nonce),
            issued_at: self.issued_at,
        };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(DOMAIN_TAG);
        out.push(0);
        // A struct of strings, integers and arrays always serializes, and JCS cannot fail on a
        // Value (it never holds NaN/Infinity); fall back to an empty object defensively.
        let json = serde_json::to_value(&wire)
            .ok()
            .and_then(|v| crate::jcs::canonicalize(&v).ok())
            .unwrap_or_else(|| b"{}".to_vec());
        out.extend_from_slice(&json);
        out
    }

    /// Parses the canonical encoding; rejects anything `to_bytes` would not produce.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ConsentError> {
        let m = |s: &str| ConsentError::Malformed(s.to_owned());
        let rest = b
            .strip_prefix(DOMAIN_TAG)
            .and_then(|r| r.strip_prefix(&[0u8]))
            .ok_or_else(|| m("missing hexa-consent-v1 domain tag"))?;
        let text = std::str::from_utf8(rest).map_err(|_| m("not UTF-8"))?;
        let value = crate::jcs::parse_strict(text).map_err(|e| m(&e.to_string()))?;
        let wire: Wire = serde_json::from_value(value).map_err(|e| m(&e.to_string()))?;
        if wire.v != 1 {
            return Err(m(&format!("unsupported version {}", wire.v)));
        }
        let nonce: [u8; 32] = b64::url_decode(&wire.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| m("nonce is not base64url of 32 bytes"))?;
        let ch = Self {
            version: wire.v,
            patient: wire.patient,
            grantee_organization: wire.grantee_organization,
            grantee_practitioner: wire.grantee_practitioner,
            purpose: wire.purpose,
            scope: wire.scope,
            period_start: wire.period_start,
            period_end: wire.period_end,
            data_period_start: wire.data_period_start,
            data_period_end: wire.data_period_end,
            decision: wire.decision,
            appliance_id: wire.appliance_id,
            nonce,
            issued_at: wire.issued_at,
        };
        if ch.to_bytes() != b {
            return Err(m("not in canonical form"));
        }
        Ok(ch)
    }

    /// `SHA-256(to_bytes())`, the CTAP2 clientDataHash the authenticator signs.
    pub fn client_data_hash(&self) -> [u8; 32] {
        crate::sha256(&self.to_bytes())
    }

    /// Checks the fields are consistent and representable.
    pub fn validate(&self) -> Result<(), ConsentError> {
        let inv = |s: &str| Err(ConsentError::Invalid(s.to_owned()));
        if self.version != 1 {
            return inv("version must be 1");
        }
        if self.patient.is_empty() || self.purpose.is_empty() || self.appliance_id.is_empty() {
            return inv("patient, purpose and appliance_id must not be empty");
        }
        let times = [
            Some(self.period_start),
            Some(self.period_end),
            self.data_period_start,
            self.data_period_end,
            Some(self.issued_at),
        ];
        if times.iter().flatten().any(|t| *t > MAX_SAFE_INTEGER) {
            return inv("times must be at most 2^53 - 1");
        }
        if self.period_start > self.period_end {
            return inv("period_start is after period_end");
        }
        if let (Some(s), Some(e)) = (self.data_period_start, self.data_period_end)
            && s > e
        {
            return inv("data_period_start is after data_period_end");
        }
        Ok(())
    }
}

/// A FIDO2 credential public key (COSE_Key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoseKey {
    /// OKP / Ed25519, alg -8.
    Ed25519(PublicKey),
    /// EC2 / P-256, alg -7.
    Es256(p256::ecdsa::VerifyingKey),
}

fn cbor_int(v: &Cbor) -> Option<i128> {
    v.as_integer().map(i128::from)
}

impl CoseKey {
    /// Parses a COSE_Key (CBOR map with integer labels: 1 kty, 3 alg, -1 crv, -2 x, -3 y).
    pub fn from_cbor(b: &[u8]) -> Result<Self, ConsentError> {
        let e = |s: &str| ConsentError::CoseKey(s.to_owned());
        let mut rdr = b;
        let v: Cbor = ciborium::de::from_reader(&mut rdr).map_err(|x| e(&x.to_string()))?;
        if !rdr.is_empty() {
            return Err(e("trailing bytes"));
        }
        let map = v.as_map().ok_or_else(|| e("not a CBOR map"))?;
        let mut kty = None;
        let mut alg = None;
        let mut crv = None;
        let mut x: Option<&[u8]> = None;
        let mut y: Option<&[u8]> = None;
        let mut labels = Vec::new();
        for (k, val) in map {
            let label = cbor_int(k).ok_or_else(|| e("non-integer label"))?;
            if labels.contains(&label) {
                return Err(e("duplicate label"));
            }
            labels.push(label);
            match label {
                1 => kty = cbor_int(val),
                3 => alg = Some(cbor_int(val).ok_or_else(|| e("alg not an integer"))?),
                -1 => crv = cbor_int(val),
                -2 => x = Some(val.as_bytes().ok_or_else(|| e("x not bytes"))?),
                -3 => y = Some(val.as_bytes().ok_or_else(|| e("y not bytes"))?),
                _ => {}
            }
        }
        match (kty, crv) {
            (Some(1), Some(6)) => {
                if alg.is_some_and(|a| a != i128::from(COSE_ALG_EDDSA)) {
                    return Err(e("OKP key with alg other than -8"));
                }
                let x: [u8; 32] = x
                    .and_then(|x| x.try_into().ok())
                    .ok_or_else(|| e("Ed25519 x must be 32 bytes"))?;
                let k = PublicKey::from_bytes(&x).map_err(|x| e(&x.to_string()))?;
                Ok(Self::Ed25519(k))
            }
            (Some(2), Some(1)) => {
                if alg.is_some_and(|a| a != i128::from(COSE_ALG_ES256)) {
                    return Err(e("EC2 key with alg other than -7"));
                }
                let (Some(x), Some(y)) = (x, y) else {
                    return Err(e("P-256 key needs x and y"));
                };
                if x.len() != 32 || y.len() != 32 {
                    return Err(e("P-256 x and y must be 32 bytes"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(x);
                sec1.extend_from_slice(y);
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| e("not a valid P-256 point"))?;
                Ok(Self::Es256(k))
            }
            _ => Err(e(
                "only OKP/Ed25519 (alg -8) and EC2/P-256 (alg -7) are supported",
            )),
        }
    }

    /// Encodes as a COSE_Key in CTAP2 canonical order (1, 3, -1, -2, -3).
    pub fn to_cbor(&self) -> Vec<u8> {
        let int = |i: i64| Cbor::Integer(i.into());
        let map = match self {
            Self::Ed25519(k) => vec![
                (int(1), int(1)),
                (int(3), int(COSE_ALG_EDDSA)),
                (int(-1), int(6)),
                (int(-2), Cbor::Bytes(k.as_bytes().to_vec())),
            ],
            Self::Es256(k) => {
                let point = k.to_sec1_point(false);
                let raw = point.as_bytes();
                vec![
                    (int(1), int(2)),
                    (int(3), int(COSE_ALG_ES256)),
                    (int(-1), int(1)),
                    (int(-2), Cbor::Bytes(raw[1..33].to_vec())),
                    (int(-3), Cbor::Bytes(raw[33..65].to_vec())),
                ]
            }
        };
        let mut out = Vec::with_capacity(80);
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::ser::into_writer(&Cbor::Map(map), &mut out);
        out
    }

    /// The COSE algorithm: -8 (EdDSA) or -7 (ES256).
    pub fn alg(&self) -> i64 {
        match self {
            Self::Ed25519(_) => COSE_ALG_EDDSA,
            Self::Es256(_) => COSE_ALG_ES256,
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), ConsentError> {
        match self {
            Self::Ed25519(k) => k
                .verify_strict(msg, sig)
                .map_err(|_| ConsentError::BadSignature),
            Self::Es256(k) => {
                let sig = p256::ecdsa::Signature::from_der(sig)
                    .map_err(|_| ConsentError::BadSignature)?
                    .normalize_s();
                k.verify(msg, &sig).map_err(|_| ConsentError::BadSignature)
            }
        }
    }
}

/// The fixed 37-byte prefix of authenticatorData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatorData {
    /// SHA-256 of the relying party ID.
    pub rp_id_hash: [u8; 32],
    /// Flags (UP 0x01, UV 0x04, AT 0x40, ED 0x80).
    pub flags: u8,
    /// Signature counter (big-endian on the wire).
    pub sign_count: u32,
}

impl AuthenticatorData {
    /// Parses authenticatorData of an assertion. Trailing bytes are accepted only when the ED
    /// (extensions) flag is set; AT (attested credential data) is not expected in assertions.
    pub fn parse(b: &[u8]) -> Result<Self, ConsentError> {
        if b.len() < 37 {
            return Err(ConsentError::AuthenticatorData("shorter than 37 bytes"));
        }
        let flags = b[32];
        if flags & FLAG_AT != 0 {
            return Err(ConsentError::AuthenticatorData(
                "attested credential data in an assertion",
            ));
        }
        if b.len() > 37 && flags & FLAG_ED == 0 {
            return Err(ConsentError::AuthenticatorData(
                "trailing bytes without the ED flag",
            ));
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&b[..32]);
        Ok(Self {
            rp_id_hash,
            flags,
            sign_count: u32::from_be_bytes([b[33], b[34], b[35], b[36]]),
        })
    }
}

/// What the card returned for getAssertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionEvidence {
    /// Raw authenticatorData.
    pub authenticator_data: Vec<u8>,
    /// Signature: 64 raw bytes for Ed25519, ASN.1 DER for ES256.
    pub signature: Vec<u8>,
    /// The credential that signed.
    pub credential_id: Vec<u8>,
}

/// Verification context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyParams<'a> {
    /// The relying party ID the credential is scoped to.
    pub rp_id: &'a str,
    /// This appliance's ID; the challenge must name it.
    pub expected_appliance_id: &'a str,
    /// The last signature counter stored for this credential.
    pub last_sign_count: u32,
    /// Current time (unix seconds).
    pub now: u64,
    /// How long a challenge may be answered after issue.
    pub ttl_secs: u64,
    /// Whether user verification (PIN/biometric) is required.
    pub require_user_verified: bool,
}

/// A verified assertion: what the caller must persist (the new counter) and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The new signature counter to store for the credential.
    pub sign_count: u32,
    /// Whether the user was verified (UV).
    pub user_verified: bool,
    /// The credential that signed.
    pub credential_id: Vec<u8>,
    /// The clientDataHash that was signed.
    pub client_data_hash: [u8; 32],
}

/// Verifies a FIDO2 assertion over `ch` (see the module docs for the checks).
pub fn verify_assertion(
    ch: &ConsentChallenge,
    key: &CoseKey,
    ev: &AssertionEvidence,
    p: &VerifyParams,
) -> Result<VerifiedAssertion, ConsentError> {
    ch.validate()?;
    if ch.appliance_id != p.expected_appliance_id {
        return Err(ConsentError::ApplianceMismatch {
            expected: p.expected_appliance_id.to_owned(),
            found: ch.appliance_id.clone(),
        });
    }
    if ch.issued_at > p.now.saturating_add(MAX_FORWARD_SKEW_SECS) {
        return Err(ConsentError::NotYetValid {
            issued_at: ch.issued_at,
            now: p.now,
        });
    }
    if p.now > ch.issued_at.saturating_add(p.ttl_secs) {
        return Err(ConsentError::Expired {
            issued_at: ch.issued_at,
            ttl_secs: p.ttl_secs,
            now: p.now,
        });
    }
    let ad = AuthenticatorData::parse(&ev.authenticator_data)?;
    let rp_hash = crate::sha256(p.rp_id.as_bytes());
    if !bool::from(ad.rp_id_hash.ct_eq(&rp_hash)) {
        return Err(ConsentError::RpIdMismatch);
    }
    if ad.flags & FLAG_UP == 0 {
        return Err(ConsentError::UserNotPresent);
    }
    let user_verified = ad.flags & FLAG_UV != 0;
    if p.require_user_verified && !user_verified {
        return Err(ConsentError::UserNotVerified);
    }
    let client_data_hash = ch.client_data_hash();
    let mut msg = Vec::with_capacity(ev.authenticator_data.len() + 32);
    msg.extend_from_slice(&ev.authenticator_data);
    msg.extend_from_slice(&client_data_hash);
    key.verify(&msg, &ev.signature)?;
    if !(ad.sign_count == 0 && p.last_sign_count == 0) && ad.sign_count <= p.last_sign_count {
        return Err(ConsentError::CounterNotIncreased {
            last: p.last_sign_count,
            got: ad.sign_count,
        });
    }
    Ok(VerifiedAssertion {
        sign_count: ad.sign_count,
        user_verified,
        credential_id: ev.credential_id.clone(),
        client_data_hash,
    })
}
