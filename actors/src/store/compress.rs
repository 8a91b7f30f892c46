//! Audit-log entries are compressed before they are sealed (format 3).
//!
//! An AuditEvent's JSON is mostly the same codings and system URLs in every event, so the
//! log compresses them as LZ4 blocks against a fixed dictionary ([`AUDIT_DICT`]: rendered
//! AuditEvents with placeholder ids and times, and the fragments rarer events add). A
//! 1.5–2 KiB event stores as 150–280 bytes. The Merkle leaf is still the hash of the
//! event's RFC 8785 bytes, which a read restores exactly; compression only changes what
//! the sealed value holds.
//!
//! A sealed entry's plaintext is either
//! - `{…}`: the JCS bytes themselves (entries written before format 3), or
//! - `0x01 | u32 LE length | LZ4 block against AUDIT_DICT` (format 3).
//!
//! The dictionary is part of the on-disk format: changing a byte of it would make every
//! format-3 entry unreadable, so a test pins its hash. A new dictionary needs a new tag.

/// The dictionary of tag 1. Never edit: pinned by `audit_dictionary_is_pinned`.
pub const AUDIT_DICT: &[u8] = include_bytes!("audit_dict_v1.txt");

/// Tag of an LZ4 block against [`AUDIT_DICT`].
const TAG_LZ4_DICT1: u8 = 0x01;

/// Largest entry a stored length may announce (the appliance's request limits keep
/// real events far below it): a bad length is an error, never a huge allocation.
pub const MAX_ENTRY: usize = 64 << 20;

/// The plaintext a format-3 log entry seals for the JCS bytes `jcs`.
pub fn pack_audit(jcs: &[u8]) -> Result<Vec<u8>, String> {
    if jcs.len() > MAX_ENTRY {
        return Err(format!("audit entry of {} bytes is too large", jcs.len()));
    }
    let mut out = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(jcs.len())];
    out[0] = TAG_LZ4_DICT1;
    out[1..5].copy_from_slice(&(jcs.len() as u32).to_le_bytes());
    let n = lz4_flex::block::compress_into_with_dict(jcs, &mut out[5..], AUDIT_DICT)
        .map_err(|e| format!("audit entry compression: {e}"))?;
    out.truncate(5 + n);
    Ok(out)
}

/// The JCS bytes of an opened log entry, whichever format wrote it.
pub fn unpack_audit(plain: Vec<u8>) -> Result<Vec<u8>, String> {
    match plain.first() {
        Some(b'{') => Ok(plain),
        Some(&TAG_LZ4_DICT1) => {
            let len = plain
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(|b| u32::from_le_bytes(b) as usize)
                .ok_or("audit entry: truncated length")?;
            if len > MAX_ENTRY {
                return Err(format!("audit entry: length {len} over the limit"));
            }
            let out = lz4_flex::block::decompress_with_dict(&plain[5..], len, AUDIT_DICT)
                .map_err(|e| format!("audit entry: {e}"))?;
            if out.len() != len {
                return Err(format!(
                    "audit entry: {} bytes decompressed, {len} announced",
                    out.len()
                ));
            }
            Ok(out)
        }
        Some(t) => Err(format!("audit entry: unknown encoding {t:#04x}")),
        None => Err("audit entry: empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The dictionary is part of the format: its bytes must never change.
    #[test]
    fn audit_dictionary_is_pinned() {
        assert_eq!(AUDIT_DICT.len(), 2704);
        let h = hexa_crypto::merkle::leaf_hash(AUDIT_DICT);
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "64a0649b177da2fcfaa0317818d5a81175c098a086acbd24d89574065fc6e129"
        );
    }

    #[test]
    fn packed_entries_round_trip_and_json_entries_pass_through() {
        let ev = br#"{"action":"R","agent":[{"requestor":false,"who":{"reference":"Practitioner/dr"}}],"id":"01a2426f-3496-799c-8035-c8fb4bb4e1d7","outcome":"0","recorded":"2026-12-04T19:01:53.942Z","resourceType":"AuditEvent","source":{"observer":{"reference":"Device/node"},"site":"fac"},"subtype":[{"code":"read","system":"http://hl7.org/fhir/restful-interaction"}],"type":{"code":"rest","display":"RESTful Operation","system":"http://terminology.hl7.org/CodeSystem/audit-event-type"}}"#;
        let packed = pack_audit(ev).unwrap();
        assert_eq!(packed[0], 0x01);
        assert!(
            packed.len() * 3 < ev.len(),
            "{} of {}",
            packed.len(),
            ev.len()
        );
        assert_eq!(unpack_audit(packed.clone()).unwrap(), ev.to_vec());
        assert_eq!(unpack_audit(ev.to_vec()).unwrap(), ev.to_vec());
        // A wrong announced length or an unknown tag is an error.
        let mut longer = packed.clone();
        longer[1] = longer[1].wrapping_add(1);
        assert!(unpack_audit(longer).is_err());
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack_audit(huge).is_err());
        let mut other = packed;
        other[0] = 0x02;
        assert!(unpack_audit(other).is_err());
        assert!(unpack_audit(Vec::new()).is_err());
        assert!(unpack_audit(vec![0x01, 0, 0]).is_err());
    }

    proptest! {
        /// Whatever bytes follow the tag, unpacking returns (an error or the announced
        /// length), never panics.
        #[test]
        fn unpacking_arbitrary_bytes_never_panics(
            len in 0u32..4096,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut b = vec![0x01];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&body);
            if let Ok(out) = unpack_audit(b) {
                prop_assert_eq!(out.len(), len as usize);
            }
        }

        /// Any JSON-like text round-trips.
        #[test]
        fn packing_round_trips(s in "\\{[ -~]{0,3000}") {
            let packed = pack_audit(s.as_bytes()).unwrap();
            prop_assert_eq!(unpack_audit(packed).unwrap(), s.as_bytes().to_vec());
        }
    }
}
