//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! Object members are sorted by the UTF-16 code units of their names, strings use the minimal
//! JSON escaping of ECMAScript `JSON.stringify`, and numbers are IEEE 754 doubles formatted
//! with the ECMAScript `Number.prototype.toString` algorithm (shortest round-trip digits).
//! [`canonicalize_str`] also rejects duplicate member names (I-JSON, RFC 7493), which
//! `serde_json` would otherwise silently collapse.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Errors from canonicalization.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JcsError {
    /// The input text is not valid JSON (or has duplicate member names).
    #[error("invalid JSON: {0}")]
    Parse(String),
    /// A number is not finite (NaN or infinity cannot be represented in JSON).
    #[error("number is not finite")]
    NonFinite,
}

/// Canonicalizes a JSON value to its RFC 8785 UTF-8 bytes.
pub fn canonicalize(v: &Value) -> Result<Vec<u8>, JcsError> {
    // A typical record (an Observation is about 460 bytes) fits without growing.
    let mut out = Vec::with_capacity(1024);
    write_value(v, &mut out)?;
    Ok(out)
}

/// Rewrites `v` in place into the `Value` that `serde_json` parses from
/// `canonicalize(v)`, without writing or parsing the text: members sorted, integers within
/// ±(2^53 − 1) kept, every other number replaced by the number its RFC 8785 form parses to
/// (so `100.0` becomes the integer 100 and `2^53 + 1` the double JCS writes). Returns
/// `Ok(false)` when a member name is not ASCII (RFC 8785 orders names by UTF-16 code units,
/// which the byte order used here can differ from beyond the BMP): `v` is then sorted
/// only in part, and a caller that needs the exact value parses the canonical bytes.
pub fn reparsed_in_place(v: &mut Value) -> Result<bool, JcsError> {
    const SAFE: u64 = (1u64 << 53) - 1;
    match v {
        Value::Object(m) => {
            let mut ascii = true;
            for (k, x) in m.iter_mut() {
                ascii &= k.is_ascii();
                ascii &= reparsed_in_place(x)?;
            }
            m.sort_keys();
            Ok(ascii)
        }
        Value::Array(items) => {
            let mut ascii = true;
            for x in items {
                ascii &= reparsed_in_place(x)?;
            }
            Ok(ascii)
        }
        Value::Number(n) => {
            let safe = n.as_u64().is_some_and(|u| u <= SAFE)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() <= SAFE);
            if !safe {
                let f = n.as_f64().ok_or(JcsError::NonFinite)?;
                *n = serde_json::from_str(&format_es6(f)?)
                    .map_err(|e| JcsError::Parse(e.to_string()))?;
            }
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// Parses JSON text (rejecting duplicate member names) and canonicalizes it.
pub fn canonicalize_str(json: &str) -> Result<Vec<u8>, JcsError> {
    let v = parse_strict(json)?;
    canonicalize(&v)
}

/// Parses JSON text into a `Value`, rejecting duplicate member names.
pub fn parse_strict(json: &str) -> Result<Value, JcsError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let v = NoDup::deserialize(&mut de).map_err(|e| JcsError::Parse(e.to_string()))?;
    de.end().map_err(|e| JcsError::Parse(e.to_string()))?;
    Ok(v.0)
}

/// A `Value` whose deserialization fails on duplicate object member names.
struct NoDup(Value);

impl<'de> Deserialize<'de> for NoDup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupVisitor).map(NoDup)
    }
}

struct NoDupVisitor;

impl<'de> Visitor<'de> for NoDupVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(NoDup(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let NoDup(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate member name {k:?}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            static NULL: Value = Value::Null;
            let members = m.iter().map(|(k, v)| (k.as_str(), v));
            write_object(members, &NULL, out, write_value)?;
        }
    }
    Ok(())
}

/// Writes an object: `members` in the order of their names' UTF-16 code units, each value
/// by `value`. The order is sorted on the stack for objects of up to 16 members (all the
/// documents the appliance composes have fewer; an allocation per object was a tenth of an
/// AuditEvent's), with `placeholder` filling the unused slots. Names are unique, so an
/// unstable sort gives the one order.
fn write_object<'a, V: ?Sized, E>(
    members: impl ExactSizeIterator<Item = (&'a str, &'a V)>,
    placeholder: &'a V,
    out: &mut Vec<u8>,
    mut value: impl FnMut(&'a V, &mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let n = members.len();
    let (mut small, mut large) = ([("", placeholder); 16], Vec::new());
    let sorted: &mut [(&str, &V)] = if n <= small.len() {
        for (slot, member) in small.iter_mut().zip(members) {
            *slot = member;
        }
        &mut small[..n]
    } else {
        large.extend(members);
        &mut large
    };
    sorted.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
    out.push(b'{');
    for (i, &(k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        value(v, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// Orders member names by their UTF-16 code units (RFC 8785 §3.2.3), without allocating.
fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        // ASCII is one code unit per byte, in the same order.
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// A JSON tree written canonically without building a `serde_json::Value`: constant names
/// and strings are borrowed, and no map is hashed. For documents the appliance composes
/// itself on hot paths (AuditEvents, Provenance). Object members are sorted when written;
/// the caller must not repeat a name within one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Canon<'a> {
    /// A borrowed string.
    Str(&'a str),
    /// An owned string.
    String(String),
    /// `true` or `false`.
    Bool(bool),
    /// An array.
    Array(Vec<Canon<'a>>),
    /// An object: members in any order, names unique.
    Object(Vec<(&'a str, Canon<'a>)>),
    /// One value already in RFC 8785 form, written as it is: for constant subtrees rendered
    /// once with [`Canon::to_bytes`]. [`Canon::get`] does not look inside it, and
    /// [`Canon::to_value`] parses it (to `null` if the bytes are not JSON).
    Raw(&'a [u8]),
}

impl Canon<'_> {
    /// The RFC 8785 bytes of this tree (equal to [`canonicalize`] of [`Canon::to_value`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write(&mut out);
        out
    }

    /// Appends the RFC 8785 bytes of this tree to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Canon::Str(s) => write_string(s, out),
            Canon::String(s) => write_string(s, out),
            Canon::Bool(true) => out.extend_from_slice(b"true"),
            Canon::Bool(false) => out.extend_from_slice(b"false"),
            Canon::Raw(b) => out.extend_from_slice(b),
            Canon::Array(a) => {
                out.push(b'[');
                for (i, item) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Canon::Object(m) => {
                debug_assert!(
                    m.iter()
                        .enumerate()
                        .all(|(i, (k, _))| m[..i].iter().all(|(j, _)| j != k)),
                    "repeated member name"
                );
                static EMPTY: Canon<'static> = Canon::Bool(false);
                let members = m.iter().map(|(k, v)| (*k, v));
                let written = write_object(members, &EMPTY, out, |v, out| {
                    v.write(out);
                    Ok::<(), std::convert::Infallible>(())
                });
                let Ok(()) = written;
            }
        }
    }

    /// The same tree as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Canon::Str(s) => Value::String((*s).to_string()),
            Canon::String(s) => Value::String(s.clone()),
            Canon::Bool(b) => Value::Bool(*b),
            Canon::Raw(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
            Canon::Array(a) => Value::Array(a.iter().map(Canon::to_value).collect()),
            Canon::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| ((*k).to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The member `name` of an object (None for other nodes or when absent).
    pub fn get(&self, name: &str) -> Option<&Self> {
        match self {
            Canon::Object(m) => m.iter().find(|(k, _)| *k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Runs of bytes that need no escape are copied whole (every byte of a multi-byte UTF-8
    // sequence is >= 0x80, so none of them is escaped).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    // Most strings need no escape at all: one branch-free pass (which the compiler
    // vectorises) decides, and the whole string is copied at once.
    if !b.iter().fold(false, |acc, &c| {
        acc | (c < 0x20) | (c == b'"') | (c == b'\\')
    }) {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            c if c < 0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<(), JcsError> {
    const SAFE: u64 = (1u64 << 53) - 1;
    if let Some(u) = n.as_u64().filter(|u| *u <= SAFE) {
        out.extend_from_slice(u.to_string().as_bytes());
        return Ok(());
    }
    if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= SAFE) {
        out.extend_from_slice(i.to_string().as_bytes());
        return Ok(());
    }
    let f = n.as_f64().ok_or(JcsError::NonFinite)?;
    out.extend_from_slice(format_es6(f)?.as_bytes());
    Ok(())
}

/// Formats a double exactly like ECMAScript's `Number.prototype.toString()` (RFC 8785 §3.2.2.3).
pub fn format_es6(f: f64) -> Result<String, JcsError> {
    if !f.is_finite() {
        return Err(JcsError::NonFinite);
    }
    if f == 0.0 {
        return Ok("0".to_owned());
    }
    let mut s = String::new();
    if f < 0.0 {
        s.push('-');
    }
    // Rust's `{:e}` yields the shortest round-trip digits: "d[.ddd]e[-]x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').ok_or(JcsError::NonFinite)?;
    let exp: i32 = exp.parse().map_err(|_| JcsError::NonFinite)?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = round_half_even(f.abs(), digits, exp);
    let k = digits.len() as i32;
    let n = exp + 1; // position of the decimal point relative to the digits
    if k <= n && n <= 21 {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-n) as usize));
        s.push_str(&digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if n > 0 { '+' } else { '-' });
        s.push_str(&(n - 1).abs().to_string());
    }
    Ok(s)
}

/// Rust's shortest round-trip digits break an exact tie between two shortest candidates
/// away from zero; ECMAScript (and so RFC 8785) picks the even one. When `x` lies exactly
/// half-way between two `k`-digit decimals, return the even candidate if it round-trips.
fn round_half_even(x: f64, digits: String, exp: i32) -> String {
    let k = digits.len();
    // Cheap filter: a tie needs the (k+1)-digit rounding of x to end in 5.
    let near = format!("{:.*e}", k, x);
    if !near.split_once('e').is_some_and(|(m, _)| m.ends_with('5')) {
        return digits;
    }
    // Every double has a finite decimal expansion of at most 767 significant digits.
    let exact = format!("{:.800e}", x);
    let Some((m, e)) = exact.split_once('e') else {
        return digits;
    };
    if e.parse::<i32>().ok() != Some(exp) {
        return digits;
    }
    let exact_digits: String = m.chars().filter(|c| *c != '.').collect();
    let exact_digits = exact_digits.trim_end_matches('0');
    if exact_digits.len() != k + 1 || !exact_digits.ends_with('5') {
        return digits;
    }
    let low = &exact_digits[..k];
    let last = low.as_bytes()[k - 1] - b'0';
    let candidate = if last.is_multiple_of(2) {
        low.to_owned()
    } else if last < 9 {
        format!("{}{}", &low[..k - 1], last + 1)
    } else {
        return digits;
    };
    let text = if k == 1 {
        format!("{candidate}e{exp}")
    } else {
        format!("{}.{}e{}", &candidate[..1], &candidate[1..], exp)
    };
    if text.parse::<f64>().ok() == Some(x) {
        candidate
    } else {
        digits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `reparsed_in_place` must equal: the parse of the canonical bytes, compared
    /// with member order (a `Value`'s `==` ignores it) and number kinds.
    fn assert_reparsed(v: &Value) {
        let want: Value = serde_json::from_slice(&canonicalize(v).unwrap()).unwrap();
        let mut got = v.clone();
        assert!(reparsed_in_place(&mut got).unwrap());
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
        assert_eq!(got, want);
    }

    #[test]
    fn reparsed_in_place_matches_a_parse_of_the_canonical_form() {
        let cases = [
            r#"{"b":1,"a":{"d":[3,{"z":1,"y":2}],"c":null},"A":true,"_a":"x\u00e9\n"}"#,
            r#"{"int":100.0,"neg":-7.0,"zero":-0.0,"frac":98.6,"tiny":1e-7,"big":1e21,"huge":123456789012345678901234567890}"#,
            r#"{"safe":9007199254740991,"unsafe":9007199254740993,"nsafe":-9007199254740991,"nunsafe":-9007199254740993,"u64max":18446744073709551615}"#,
            r#"[{"resourceType":"Observation","valueQuantity":{"value":60,"unit":"/min"}},1.5e300,0.1,-0.0001]"#,
        ];
        for c in cases {
            assert_reparsed(&parse_strict(c).unwrap());
        }
    }

    #[test]
    fn reparsed_in_place_refuses_non_ascii_names() {
        let mut v = parse_strict(r#"{"\ud83d\ude00":1,"\uff61":2}"#).unwrap();
        assert!(!reparsed_in_place(&mut v).unwrap());
    }

    proptest::proptest! {
        #[test]
        fn reparsed_in_place_matches_on_random_documents(
            ints in proptest::collection::vec(proptest::num::i64::ANY, 0..6),
            floats in proptest::collection::vec(-1e25f64..1e25, 0..6),
            names in proptest::collection::vec("[a-zA-Z_]{1,6}", 1..6),
        ) {
            let mut m = Map::new();
            for (i, n) in names.iter().enumerate() {
                let x = match i % 3 {
                    0 => Value::from(ints.clone()),
                    1 => Value::from(floats.iter().map(|f| f.trunc()).collect::<Vec<_>>()),
                    _ => serde_json::json!({"f": floats.clone(), "n": n}),
                };
                m.insert(n.clone(), x);
            }
            assert_reparsed(&Value::Object(m));
        }
    }

    #[test]
    fn duplicates_rejected() {
        assert!(matches!(
            canonicalize_str(r#"{"a":1,"a":2}"#),
            Err(JcsError::Parse(_))
        ));
        assert!(canonicalize_str(r#"{"a":{"b":1},"b":{"b":2}}"#).is_ok());
    }

    #[test]
    fn ties_round_to_even() {
        // 0.5 ulp ties at one and two digits: 2.5 and 0.125 are exact, shortest forms unique.
        assert_eq!(format_es6(2.5).unwrap(), "2.5");
        assert_eq!(format_es6(0.125).unwrap(), "0.125");
        assert_eq!(format_es6(1e21).unwrap(), "1e+21");
        assert_eq!(format_es6(-1.5e-7).unwrap(), "-1.5e-7");
        assert_eq!(format_es6(123.0).unwrap(), "123");
    }

    #[test]
    fn trailing_garbage_and_lone_surrogates_rejected() {
        assert!(canonicalize_str("{} x").is_err());
        assert!(canonicalize_str(r#""\ud800""#).is_err());
        assert!(canonicalize_str(r#"{"\udfff":1}"#).is_err());
        assert!(canonicalize_str("1e400").is_err());
    }

    #[test]
    fn canon_writes_what_canonicalize_writes() {
        // RFC 8785 §3.2.3 sorts by UTF-16 code units: U+10000 (a surrogate pair, 0xD800...)
        // sorts before U+E000, although its UTF-8 bytes sort after.
        let tree = Canon::Object(vec![
            ("zeta", Canon::Str("a\"q\"\n\u{1}é")),
            ("\u{e000}", Canon::Bool(true)),
            ("\u{10000}", Canon::Bool(false)),
            (
                "Alpha",
                Canon::Array(vec![
                    Canon::String("x".into()),
                    Canon::Object(vec![("b", Canon::Str("1")), ("a", Canon::Array(vec![]))]),
                ]),
            ),
            ("alpha", Canon::Object(vec![])),
        ]);
        let bytes = tree.to_bytes();
        assert_eq!(bytes, canonicalize(&tree.to_value()).unwrap());
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            "{\"Alpha\":[\"x\",{\"a\":[],\"b\":\"1\"}],\"alpha\":{},\"zeta\":\"a\\\"q\\\"\\n\\u0001é\",\"\u{10000}\":false,\"\u{e000}\":true}"
        );
        assert_eq!(tree.get("alpha"), Some(&Canon::Object(vec![])));
        assert_eq!(tree.get("beta"), None);
    }

    /// Objects of 16 members or fewer sort their members on the stack, larger ones in a
    /// list; both write the order `canonicalize` writes.
    #[test]
    fn canon_sorts_small_and_large_objects() {
        let names: Vec<String> = (0..40).map(|i| format!("m{}", (i * 17) % 40)).collect();
        for n in [0, 1, 2, 15, 16, 17, 40] {
            let tree = Canon::Object(
                names[..n]
                    .iter()
                    .map(|k| (k.as_str(), Canon::Str(k)))
                    .collect(),
            );
            assert_eq!(
                tree.to_bytes(),
                canonicalize(&tree.to_value()).unwrap(),
                "{n} members"
            );
        }
    }

    /// A pre-rendered subtree writes and converts as the tree it was rendered from.
    #[test]
    fn a_raw_subtree_is_the_tree_it_was_rendered_from() {
        let sub = Canon::Object(vec![
            ("system", Canon::Str("http://x/y")),
            ("code", Canon::Str("1")),
            ("display", Canon::Str("é \"q\"")),
        ]);
        let rendered = sub.to_bytes();
        fn whole(v: Canon<'_>) -> Canon<'_> {
            Canon::Object(vec![("b", Canon::Array(vec![v])), ("a", Canon::Bool(true))])
        }
        let (tree, raw) = (whole(sub.clone()), whole(Canon::Raw(&rendered)));
        assert_eq!(raw.to_bytes(), tree.to_bytes());
        assert_eq!(raw.to_value(), tree.to_value());
        assert_eq!(Canon::Raw(b"{not json").to_value(), Value::Null);
    }
}
