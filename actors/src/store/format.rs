//! On-disk format: versioned postcard envelopes and key layout.
//!
//! Format version [`FORMAT_VERSION`] is recorded in the `meta` database; a data directory
//! with a newer version is refused. Layout per component `<c>`:
//! - `<c>.versions`: `{type}/{stamp:u64 BE}` -> [`VersionHead`] (16 bytes: version, stamp
//!   of the version before it) then the sealed postcard [`Envelope`]. Stamps are issued in
//!   time order ([`super::Store::next_stamp`]), so a new version, an update's too, goes to
//!   the right edge of its type's keys; a resource's versions are found from its current
//!   pointer, each one naming the one before it.
//! - `<c>.current`:  `{type}/{id}` -> [`Current`] (25 bytes, plaintext: version, time,
//!   deleted, stamp)
//! - `<c>.index`:    `{type} 0x00 {blind index:32} {id}` -> empty (blind search index)
//!
//! The audit component adds `audit.log` (entry index BE -> sealed AuditEvent JCS bytes),
//! `audit.tree` (level u8 + index u64 BE -> subtree hash), `audit.checkpoints`
//! (size BE -> signed note), `audit.ids` (AuditEvent id -> entry index BE),
//! `audit.provenance` (the version's key `{type}/{stamp BE}` -> sealed
//! [`StoredProvenance`]; JSON of the whole Provenance in directories written before format
//! 3) and
//! `audit.provids` (Provenance id -> its `audit.provenance` key); `shr.journal` (write
//! transaction id BE -> the postings of the shared health record and of the client registry
//! a group commit added to or removed from the index journal, see [`super::journal`]); `meta` holds the format,
//! the key check, the Merkle frontier, the last checkpoint and the audit index watermark.

use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};

/// Current on-disk format version.
///
/// 6: versions are keyed by a time-ordered stamp instead of `{type}/{id}/{version}`, each
/// value headed by its version and the stamp of the version before it; the current
/// pointer holds the latest version's stamp; `audit.provenance` is keyed like the versions.
/// Under format 5 every update inserted its version beside its resource's earlier ones,
/// dirtying a page of its own; now it appends. A format-5 (or older) directory is
/// rewritten on open, a batch of resources per transaction ([`super::upgrade`]), marked 6
/// first (with a note that the rewrite is under way) so that older binaries refuse it.
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
pub const FORMAT_VERSION: u32 = 6;

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
    /// Its stamp: its key in `<component>.versions` is [`stamp_key`]`(type, stamp)`.
    pub stamp: u64,
}

impl Current {
    /// Fixed 25-byte encoding.
    pub fn to_bytes(self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.last_updated.to_be_bytes());
        b[16] = u8::from(self.deleted);
        b[17..].copy_from_slice(&self.stamp.to_be_bytes());
        b
    }

    /// Decodes the 25-byte encoding.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 25 {
            return None;
        }
        Some(Current {
            version: u64::from_be_bytes(b[..8].try_into().ok()?),
            last_updated: u64::from_be_bytes(b[8..16].try_into().ok()?),
            deleted: b[16] != 0,
            stamp: u64::from_be_bytes(b[17..].try_into().ok()?),
        })
    }
}

/// A format-5 current pointer (17 bytes: version, time, deleted), which [`super::upgrade`]
/// rewrites.
pub(crate) fn legacy_current(b: &[u8]) -> Option<(u64, u64, bool)> {
    if b.len() != 17 {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..16].try_into().ok()?),
        b[16] != 0,
    ))
}

/// What precedes the sealed envelope in a `<component>.versions` value (plaintext): the
/// version number, which the seal's associated data binds (so it is known before the value
/// is opened), and the stamp of the version before it (0 for a first version), by which
/// history walks back. A changed head fails the seal (the version) or the walk's check that
/// each step is the version before (the stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionHead {
    /// The version number.
    pub version: u64,
    /// The stamp of version `version - 1`; 0 when `version` is 1.
    pub prev: u64,
}

impl VersionHead {
    /// Bytes of the head.
    pub const LEN: usize = 16;

    /// The value stored for a version: the head, then `sealed`.
    pub fn value(self, sealed: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN + sealed.len());
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.prev.to_be_bytes());
        v.extend_from_slice(sealed);
        v
    }

    /// Splits a stored value into its head and sealed envelope.
    pub fn split(value: &[u8]) -> Option<(Self, &[u8])> {
        if value.len() < Self::LEN {
            return None;
        }
        let (head, sealed) = value.split_at(Self::LEN);
        Some((
            VersionHead {
                version: u64::from_be_bytes(head[..8].try_into().ok()?),
                prev: u64::from_be_bytes(head[8..].try_into().ok()?),
            },
            sealed,
        ))
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

/// `{type}/{stamp BE}` — key of one version in `<component>.versions` (and of its
/// Provenance in `audit.provenance`).
pub fn stamp_key(resource_type: &str, stamp: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(resource_type.len() + 9);
    k.extend_from_slice(resource_type.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&stamp.to_be_bytes());
    k
}

/// Splits a version key into (type, stamp).
pub fn parse_stamp_key(k: &[u8]) -> Option<(&str, u64)> {
    if k.len() < 9 + 1 {
        return None;
    }
    let (head, stamp) = k.split_at(k.len() - 8);
    let stamp = u64::from_be_bytes(stamp.try_into().ok()?);
    let ty = std::str::from_utf8(head.strip_suffix(b"/")?).ok()?;
    if ty.is_empty() || ty.contains('/') {
        return None;
    }
    Some((ty, stamp))
}

/// `{type}/{id}/{version BE}` — the key of one version, and of its Provenance, up to
/// format 5 ([`super::upgrade`] reads them).
pub(crate) fn legacy_version_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut k = current_key(resource_type, id);
    k.push(b'/');
    k.extend_from_slice(&version.to_be_bytes());
    k
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
        let k = stamp_key("Observation", 0x0102_0304_0506_0708);
        assert_eq!(k, b"Observation/\x01\x02\x03\x04\x05\x06\x07\x08");
        assert_eq!(
            parse_stamp_key(&k),
            Some(("Observation", 0x0102_0304_0506_0708))
        );
        // A format-5 key of a version is not a stamp key.
        assert_eq!(
            parse_stamp_key(&legacy_version_key("Patient", "p", 3)),
            None
        );
        assert_eq!(parse_stamp_key(b"/\0\0\0\0\0\0\0\x01"), None);
        let c = Current {
            version: 7,
            last_updated: 99,
            deleted: true,
            stamp: 1 << 40,
        };
        assert_eq!(Current::from_bytes(&c.to_bytes()), Some(c));
        assert_eq!(Current::from_bytes(&[1, 2]), None);
        assert_eq!(Current::from_bytes(&c.to_bytes()[..17]), None);
    }

    /// Pins the bytes of a current pointer and of a version's head: changing them must bump
    /// FORMAT_VERSION and add an upgrade path.
    #[test]
    fn current_pointer_and_version_head_bytes_are_pinned() {
        let c = Current {
            version: 2,
            last_updated: 0x0102,
            deleted: false,
            stamp: 0x0a0b,
        };
        let mut expected = [0u8; 25];
        expected[7] = 2;
        expected[14..16].copy_from_slice(&[1, 2]);
        expected[23..25].copy_from_slice(&[0x0a, 0x0b]);
        assert_eq!(c.to_bytes(), expected);
        let head = VersionHead {
            version: 3,
            prev: 0x0c0d,
        };
        let v = head.value(b"sealed");
        assert_eq!(
            v,
            [
                &[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0x0c, 0x0d][..],
                b"sealed"
            ]
            .concat()
        );
        assert_eq!(VersionHead::split(&v), Some((head, &b"sealed"[..])));
        assert_eq!(VersionHead::split(&v[..15]), None);
        let legacy = [&[0u8; 7][..], &[4], &[0; 6], &[0, 9], &[1]].concat();
        assert_eq!(legacy_current(&legacy), Some((4, 9, true)));
        assert_eq!(legacy_current(&c.to_bytes()), None);
    }
}
