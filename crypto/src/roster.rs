//! The roster: a document listing trusted facilities and their appliance node keys with
//! validity periods, signed by a root key (detached JWS over the JCS bytes of the roster).
//!
//! Verification checks the root signature, the roster's own consistency (no duplicate
//! `(facility_id, kid)`, `not_before < not_after`, not issued in the future), and then answers
//! "is this node key trusted for this facility at this time?" rejecting unknown, not-yet-valid
//! and expired entries.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::jws;
use crate::keys::{PublicKey, SigningKey};

/// Clock skew tolerated for a roster's `issued_at` being ahead of the verifier's clock.
pub const MAX_ISSUED_AT_SKEW_SECS: u64 = 300;

/// Errors from roster signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The roster could not be encoded or decoded as JSON.
    #[error("roster JSON is invalid: {0}")]
    Json(String),
    /// The root signature does not verify.
    #[error("roster signature does not verify against the configured root key: {0}")]
    Signature(#[from] jws::JwsError),
    /// The roster is internally inconsistent.
    #[error("roster is invalid: {0}")]
    Invalid(String),
    /// The roster claims to be issued in the future.
    #[error("roster issued_at {issued_at} is in the future (now {now})")]
    IssuedInFuture {
        /// The roster's issue time.
        issued_at: u64,
        /// The verifier's time.
        now: u64,
    },
    /// No entry for this facility and key.
    #[error("no roster entry for facility {facility_id:?} with key {kid:?}")]
    UnknownEntry {
        /// The facility asked about.
        facility_id: String,
        /// The key ID asked about.
        kid: String,
    },
    /// The entry is not valid yet.
    #[error("roster entry for facility {facility_id:?} is not valid before {not_before}")]
    NotYetValid {
        /// The facility.
        facility_id: String,
        /// Start of validity.
        not_before: u64,
    },
    /// The entry has expired.
    #[error("roster entry for facility {facility_id:?} expired at {not_after}")]
    Expired {
        /// The facility.
        facility_id: String,
        /// End of validity.
        not_after: u64,
    },
}

/// One trusted facility appliance key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// Stable facility identifier.
    pub facility_id: String,
    /// Human-readable facility name.
    pub facility_name: String,
    /// The facility appliance's node key, serialized as a public JWK.
    #[serde(serialize_with = "ser_jwk", deserialize_with = "de_jwk")]
    pub node_key: PublicKey,
    /// Start of validity (unix seconds, inclusive).
    pub not_before: u64,
    /// End of validity (unix seconds, exclusive).
    pub not_after: u64,
}

fn ser_jwk<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
    k.to_jwk().serialize(s)
}

fn de_jwk<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    PublicKey::from_jwk(&v).map_err(serde::de::Error::custom)
}

/// The roster document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    /// Who issued the roster (the network operator).
    pub issuer: String,
    /// Monotonic serial number; a newer roster has a larger serial.
    pub serial: u64,
    /// Issue time (unix seconds).
    pub issued_at: u64,
    /// The trusted entries.
    pub entries: Vec<RosterEntry>,
}

impl Roster {
    fn check(&self) -> Result<(), RosterError> {
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if e.facility_id.is_empty() {
                return Err(RosterError::Invalid("empty facility_id".into()));
            }
            if e.not_before >= e.not_after {
                return Err(RosterError::Invalid(format!(
                    "entry for {:?} has not_before >= not_after",
                    e.facility_id
                )));
            }
            if !seen.insert((e.facility_id.clone(), e.node_key.kid())) {
                return Err(RosterError::Invalid(format!(
                    "duplicate entry for {:?}",
                    e.facility_id
                )));
            }
        }
        Ok(())
    }
}

/// A roster as distributed: the JSON document and a detached JWS over its JCS bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedRoster {
    /// The roster JSON (kept as received so that verification hashes exactly what was signed).
    pub roster: serde_json::Value,
    /// Detached compact JWS (EdDSA) over `JCS(roster)`.
    pub signature: String,
}

/// Signs a roster with the root key.
pub fn sign_roster(r: &Roster, root: &SigningKey) -> Result<SignedRoster, RosterError> {
    r.check()?;
    let roster = serde_json::to_value(r).map_err(|e| RosterError::Json(e.to_string()))?;
    let canonical =
        crate::jcs::canonicalize(&roster).map_err(|e| RosterError::Json(e.to_string()))?;
    Ok(SignedRoster {
        signature: jws::sign_detached(root, &canonical),
        roster,
    })
}

impl SignedRoster {
    /// Verifies the root signature and the roster's consistency at time `now`.
    pub fn verify(&self, root: &PublicKey, now: u64) -> Result<VerifiedRoster, RosterError> {
        let canonical =
            crate::jcs::canonicalize(&self.roster).map_err(|e| RosterError::Json(e.to_string()))?;
        jws::verify_detached(&self.signature, &canonical, root)?;
        let roster: Roster = serde_json::from_value(self.roster.clone())
            .map_err(|e| RosterError::Json(e.to_string()))?;
        roster.check()?;
        if roster.issued_at > now.saturating_add(MAX_ISSUED_AT_SKEW_SECS) {
            return Err(RosterError::IssuedInFuture {
                issued_at: roster.issued_at,
                now,
            });
        }
        Ok(VerifiedRoster { roster })
    }
}

/// A roster whose root signature and consistency have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoster {
    roster: Roster,
}

impl VerifiedRoster {
    /// The entry trusting key `kid` for `facility_id` at time `now`, or why there is none.
    pub fn node_key(
        &self,
        facility_id: &str,
        kid: &str,
        now: u64,
    ) -> Result<&RosterEntry, RosterError> {
        let e = self
            .roster
            .entries
            .iter()
            .find(|e| e.facility_id == facility_id && e.node_key.kid() == kid)
            .ok_or_else(|| RosterError::UnknownEntry {
                facility_id: facility_id.to_owned(),
                kid: kid.to_owned(),
            })?;
        if now < e.not_before {
            return Err(RosterError::NotYetValid {
                facility_id: facility_id.to_owned(),
                not_before: e.not_before,
            });
        }
        if now >= e.not_after {
            return Err(RosterError::Expired {
                facility_id: facility_id.to_owned(),
                not_after: e.not_after,
            });
        }
        Ok(e)
    }

    /// All entries (valid or not at any particular time).
    pub fn entries(&self) -> &[RosterEntry] {
        &self.roster.entries
    }

    /// The verified roster document.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }
}
