//! Property tests: JCS round-trips and idempotence; sealing tamper detection over random
//! inputs (any single flipped bit in the sealed value or AAD fails to open).

use hexa_crypto::jcs::{canonicalize, canonicalize_str};
use hexa_crypto::seal::{Aad, MasterKey, SealError};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|u| Value::Number(u.into())),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        (-1.0e6f64..1.0e6)
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
        "[a-z\u{80}-\u{ff}\u{1f600}\u{fb33}\\\\\"\n]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn jcs_roundtrip_is_stable(v in json_value()) {
        let c1 = canonicalize(&v).unwrap();
        let text = std::str::from_utf8(&c1).unwrap();
        // Canonical output is valid JSON that canonicalizes to itself.
        let c2 = canonicalize_str(text).unwrap();
        prop_assert_eq!(&c1, &c2);
        let reparsed: Value = serde_json::from_str(text).unwrap();
        prop_assert_eq!(canonicalize(&reparsed).unwrap(), c1);
    }

    #[test]
    fn jcs_ignores_member_order(kv in prop::collection::vec((any::<String>(), any::<i32>()), 0..8)) {
        let forward: Map<String, Value> = kv.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
        let backward: Map<String, Value> = forward.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(
            canonicalize(&Value::Object(forward)).unwrap(),
            canonicalize(&Value::Object(backward)).unwrap()
        );
    }

    /// Members come out in the order of their names' UTF-16 code units (RFC 8785 §3.2.3),
    /// for objects small enough to be sorted on the stack and for larger ones. The expected
    /// bytes are built here, member by member, from a sort of the names as UTF-16.
    #[test]
    fn jcs_sorts_members_by_utf16(
        kv in prop::collection::vec(
            (prop_oneof!["[a-c]{0,3}", "[a\u{e000}\u{10000}\u{fb33}]{1,3}", any::<String>()], any::<i32>()),
            0..40,
        )
    ) {
        let m: Map<String, Value> = kv.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
        let mut names: Vec<(&String, &Value)> = m.iter().collect();
        names.sort_by_key(|(k, _)| k.encode_utf16().collect::<Vec<u16>>());
        let mut expected = b"{".to_vec();
        for (i, (k, v)) in names.iter().enumerate() {
            if i > 0 {
                expected.push(b',');
            }
            expected.extend(canonicalize(&Value::String((*k).clone())).unwrap());
            expected.push(b':');
            expected.extend(v.to_string().into_bytes());
        }
        expected.push(b'}');
        prop_assert_eq!(canonicalize(&Value::Object(m)).unwrap(), expected);
    }

    #[test]
    fn sealed_bit_flips_fail(pt in prop::collection::vec(any::<u8>(), 0..64), bit: usize, version: u64) {
        let k = MasterKey::from_bytes([4u8; 32]).sealing_key("prop");
        let aad = Aad { database: "db", key: b"k", version };
        let sealed = k.seal(&pt, &aad).unwrap();
        prop_assert_eq!(k.open(&sealed, &aad).unwrap(), pt.clone());
        let mut bad = sealed.clone();
        let bit = bit % (bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(k.open(&bad, &aad), Err(SealError::Open));
        let replayed = Aad { version: version.wrapping_add(1), ..aad };
        prop_assert_eq!(k.open(&sealed, &replayed), Err(SealError::Open));
        let moved = Aad { database: "dc", ..aad };
        prop_assert_eq!(k.open(&sealed, &moved), Err(SealError::Open));
    }
}
