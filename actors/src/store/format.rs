//! On-disk format: versioned postcard envelopes and key layout.
//!
//! Format version [`FORMAT_VERSION`] is recorded in the `meta` database; a data directory
//! with a newer version is refused. Layout per component `<c>`:
//! - `<c>.versions`: `{type}/{id}/{version:u64 BE}` -> sealed postcard [`Envelope`]
//! - `<c>.current`:  `{type}/{id}` -> [`Current`] (17 bytes, plaintext: version, time, deleted)
//! - `<c>.index`:    `{type} 0x00 {blind index:32} {id}` -> empty (blind search index)
//!
//! The audit component adds `audit.log` (entry index BE -> sealed AuditEvent JCS bytes),
//! `audit.tree` (level u8 + index u64 BE -> subtree hash), `audit.checkpoints`
//! (size BE -> signed note), `audit.ids` (AuditEvent id -> entry index BE),
//! `audit.provenance` (`{type}/{id}/{version BE}` -> sealed [`StoredProvenance`]; JSON
//! of the whole Provenance in directories written before format 3) and
//! `audit.provids` (Provenance id -> its `audit.provenance` key); `shr.journal` (write
//! transaction id BE -> the postings of the shared health record and of the client registry
//! a group commit added to or removed from the index journal, see [`super::journal`]); `meta` holds the format,
//! the key check, the Merkle frontier, the last checkpoint and the audit index watermark.

use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};

/// Current on-disk format version.
///
/// 5: the client registry's new postings (Patient) wait in the index journal too, before
/// they are filed in `patient.index` ([`super::journal`]); a format-4 journal holds
/// postings of the shared health record only, so a format-4 directory is upgraded by
/// marking it 5.
///
/// 4: new postings of the shared health record wait in `shr.journal` before they are filed
/// in `shr.index` ([`super::journal`]); a format-3 directory has an empty journal, so it is
/// upgraded by marking it 4.
///
/// 3: `audit.provenance` holds a [`StoredProvenance`] (what the Provenance does not share
/// with its version) instead of the Provenance's JSON; format-2 values (JSON) stay
/// readable, so a format-2 directory is upgraded by marking it 3.
///
/// 2: AuditEvent search terms are filed after the event's commit (the `audit-indexed`
/// watermark in `meta`, see [`super::audit_index`]); a format-1 directory (every entry
/// filed inline, no watermark) is read as fully filed and upgraded in place on open.
pub const FORMAT_VERSION: u32 = 5;

/// One stored version of a resource (postcard-encoded, then sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version (= [`FORMAT_VERSION`] when written).
    pub format: u32,
    /// FHIR resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version number, 1-based, never reused.
    pub version_id: u64,
    /// Commit time of this version, unix milliseconds.
    pub last_updated: u64,
    /// True if this version records a logical deletion.
    pub deleted: bool,
    /// RFC 8785 canonical JSON of the resource, including `meta.versionId`/`meta.lastUpdated`.
    pub canonical: Vec<u8>,
    /// Appliance node key's detached JWS over exactly `canonical`.
    pub jws: String,
    /// Optional detached JWS of the authoring health worker over `canonical`.
    pub author_jws: Option<String>,
}

impl Envelope {
    /// postcard bytes of the envelope.
    pub fn to_bytes(&self) -> StoreResult<Vec<u8>> {
        // Sized for the canonical bytes, both JWS and the names, so it is written without
        // growing (postcard's own vector starts empty and doubles).
        let cap = self.canonical.len()
            + self.jws.len()
            + self.author_jws.as_ref().map_or(0, String::len)
            + self.resource_type.len()
            + self.id.len()
            + 48;
        postcard::to_extend(self, Vec::with_capacity(cap))
            .map_err(|e| StoreError::Invalid(format!("envelope encode: {e}")))
    }

    /// Decodes envelope bytes, refusing unknown newer formats.
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        let env: Envelope = postcard::from_bytes(b).map_err(|e| format!("envelope decode: {e}"))?;
        if env.format > FORMAT_VERSION {
            return Err(format!(
                "envelope format {} newer than supported {FORMAT_VERSION}",
                env.format
            ));
        }
        Ok(env)
    }
}

/// The Provenance of one version as `audit.provenance` stores it from format 3 on
/// (postcard, then sealed under the version's key): only the facts the version's envelope
/// does not hold. Everything else a Provenance says (its target, the time, the activity,
/// the appliance's and the author's detached JWS) is in the envelope, so a read composes
/// the Provenance from both ([`super::audit::provenance_canon`]) instead of the store
/// keeping the signatures twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProvenance {
    /// Format version (= [`FORMAT_VERSION`] when written, at least 3). Its postcard varint
    /// is the value's first byte, never `{` (which starts a format-2 JSON Provenance).
    pub format: u32,
    /// The Provenance's logical id.
    pub id: String,
    /// Id of the appliance that recorded the version (the custodian, `Device/<id>`).
    pub custodian: String,
    /// Reference of the authoring health worker (`Practitioner/..`), when the write named
    /// one.
    pub author: Option<String>,
}

impl StoredProvenance {
    /// postcard bytes.
    pub fn to_bytes(&self) -> StoreResult<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| StoreError::Invalid(format!("provenance encode: {e}")))
    }

    /// Decodes the bytes of a format-3 (or later) value, refusing unknown newer formats
    /// and trailing bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        let (p, rest): (StoredProvenance, _) =
            postcard::take_from_bytes(b).map_err(|e| format!("provenance decode: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the provenance", rest.len()));
        }
        if p.format < 3 || p.format > FORMAT_VERSION {
            return Err(format!(
                "provenance format {} not in 3..={FORMAT_VERSION}",
                p.format
            ));
        }
        Ok(p)
    }
}

/// The current-version pointer of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// Latest version number.
    pub version: u64,
    /// Its commit time (unix millis).
    pub last_updated: u64,
    /// True if the latest version is a deletion.
    pub deleted: bool,
}

impl Current {
    /// Fixed 17-byte encoding.
    pub fn to_bytes(self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.last_updated.to_be_bytes());
        b[16] = u8::from(self.deleted);
        b
    }

    /// Decodes the 17-byte encoding.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 17 {
            return None;
        }
        Some(Current {
            version: u64::from_be_bytes(b[..8].try_into().ok()?),
            last_updated: u64::from_be_bytes(b[8..16].try_into().ok()?),
            deleted: b[16] != 0,
        })
    }
}

/// `{type}/{id}` — key of the current pointer.
pub fn current_key(resource_type: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(resource_type.len() + id.len() + 1);
    k.extend_from_slice(resource_type.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

/// `{type}/{id}/` — prefix of every version of a resource.
pub fn history_prefix(resource_type: &str, id: &str) -> Vec<u8> {
    let mut k = current_key(resource_type, id);
    k.push(b'/');
    k
}

/// `{type}/{id}/{version BE}` — key of one version.
pub fn version_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut k = history_prefix(resource_type, id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Splits a version key into (type, id, version).
pub fn parse_version_key(k: &[u8]) -> Option<(&str, &str, u64)> {
    if k.len() < 8 + 4 {
        return None;
    }
    let (head, ver) = k.split_at(k.len() - 8);
    let version = u64::from_be_bytes(ver.try_into().ok()?);
    let head = std::str::from_utf8(head.strip_suffix(b"/")?).ok()?;
    let (t, id) = head.split_once('/')?;
    Some((t, id, version))
}

/// `{type} 0x00 {blind}` — prefix of an index posting list.
pub fn index_prefix(resource_type: &str, blind: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(resource_type.len() + 33 + 64);
    k.extend_from_slice(resource_type.as_bytes());
    k.push(0);
    k.extend_from_slice(blind);
    k
}

/// `{type} 0x00 {blind} {id}` — one index posting.
pub fn index_key(resource_type: &str, blind: &[u8; 32], id: &str) -> Vec<u8> {
    let mut k = index_prefix(resource_type, blind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Printable form of a binary key for error messages.
pub fn printable_key(k: &[u8]) -> String {
    k.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the exact postcard bytes of one envelope: changing the layout must bump
    /// FORMAT_VERSION and add an upgrade path.
    #[test]
    fn envelope_bytes_are_pinned() {
        let env = Envelope {
            format: 1,
            resource_type: "Patient".into(),
            id: "p1".into(),
            version_id: 2,
            last_updated: 1_700_000_000_123,
            deleted: false,
            canonical: br#"{"id":"p1"}"#.to_vec(),
            jws: "h..s".into(),
            author_jws: None,
        };
        let bytes = env.to_bytes().unwrap();
        let expected: Vec<u8> = [
            &[0x01][..], // format varint
            &[0x07],
            b"Patient", // resource_type
            &[0x02],
            b"p1",                                 // id
            &[0x02],                               // version_id varint
            &[0xfb, 0xd0, 0x95, 0xff, 0xbc, 0x31], // last_updated varint
            &[0x00],                               // deleted
            &[0x0b],
            br#"{"id":"p1"}"#, // canonical
            &[0x04],
            b"h..s", // jws
            &[0x00], // author_jws None
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
    }

    /// Pins the bytes of a stored Provenance, as [`envelope_bytes_are_pinned`] does for
    /// envelopes.
    #[test]
    fn stored_provenance_bytes_are_pinned() {
        let p = StoredProvenance {
            format: 3,
            id: "pv".into(),
            custodian: "node".into(),
            author: Some("Practitioner/d".into()),
        };
        let bytes = p.to_bytes().unwrap();
        let expected: Vec<u8> = [
            &[0x03][..], // format varint
            &[0x02],
            b"pv", // id
            &[0x04],
            b"node", // custodian
            &[0x01, 0x0e],
            b"Practitioner/d", // author Some
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(StoredProvenance::from_bytes(&bytes).unwrap(), p);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StoredProvenance::from_bytes(&longer).is_err());
        let newer = StoredProvenance {
            format: FORMAT_VERSION + 1,
            ..p.clone()
        };
        assert!(StoredProvenance::from_bytes(&newer.to_bytes().unwrap()).is_err());
        let older = StoredProvenance { format: 2, ..p };
        assert!(StoredProvenance::from_bytes(&older.to_bytes().unwrap()).is_err());
    }

    #[test]
    fn newer_envelope_format_refused() {
        let mut env = Envelope {
            format: FORMAT_VERSION + 1,
            resource_type: "Patient".into(),
            id: "p".into(),
            version_id: 1,
            last_updated: 0,
            deleted: false,
            canonical: vec![],
            jws: String::new(),
            author_jws: None,
        };
        assert!(Envelope::from_bytes(&env.to_bytes().unwrap()).is_err());
        env.format = FORMAT_VERSION;
        assert!(Envelope::from_bytes(&env.to_bytes().unwrap()).is_ok());
    }

    #[test]
    fn keys_round_trip() {
        let k = version_key("Observation", "o-1", 300);
        assert_eq!(parse_version_key(&k), Some(("Observation", "o-1", 300)));
        assert!(k.starts_with(&history_prefix("Observation", "o-1")));
        assert!(
            !version_key("Observation", "o-10", 1)
                .starts_with(&history_prefix("Observation", "o-1"))
        );
        let c = Current {
            version: 7,
            last_updated: 99,
            deleted: true,
        };
        assert_eq!(Current::from_bytes(&c.to_bytes()), Some(c));
        assert_eq!(Current::from_bytes(&[1, 2]), None);
    }
}
