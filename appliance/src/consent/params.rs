//! Parsing of the operations' FHIR `Parameters` bodies into typed requests, with a limit on
//! every input, and the RFC 3339 <-> unix seconds conversions the challenges need.

use hexa_actors::store::time::{civil_from_days, days_from_civil};
use hexa_crypto::consent::{Decision, MAX_SAFE_INTEGER};
use serde_json::Value;

use super::error::CeremonyError;

/// Most `parameter` entries accepted in one body.
pub const MAX_PARAMETERS: usize = 128;
/// Most `class` values in one consent.
pub const MAX_CLASSES: usize = 64;

fn bad(msg: impl Into<String>) -> CeremonyError {
    CeremonyError::BadRequest(msg.into())
}

/// A parsed `Parameters` resource: (name, the parameter object) pairs, in order.
pub struct Params(Vec<(String, Value)>);

impl Params {
    /// Parses a body; an empty body is an empty Parameters.
    pub fn parse(body: &[u8]) -> Result<Params, CeremonyError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params(Vec::new()));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
        if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(bad("the body must be a FHIR Parameters resource"));
        }
        let list = match v.get("parameter") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(bad("Parameters.parameter must be an array")),
        };
        if list.len() > MAX_PARAMETERS {
            return Err(bad(format!(
                "at most {MAX_PARAMETERS} parameters are accepted"
            )));
        }
        let mut out = Vec::with_capacity(list.len());
        for p in list {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("every parameter needs a name"))?
                .to_owned();
            out.push((name, p));
        }
        Ok(Params(out))
    }

    /// Refuses parameters not in `known` (a typo must not silently widen a consent).
    pub fn only(&self, known: &[&str]) -> Result<(), CeremonyError> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((n, _)) => Err(bad(format!(
                "unknown parameter {n:?}; this operation takes {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Value> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn one<'a>(&'a self, name: &str) -> Result<Option<&'a Value>, CeremonyError> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(bad(format!("parameter {name:?} may appear only once")));
        }
        Ok(first)
    }

    /// A string-like value (`valueString`, `valueCode`, `valueUri`, `valueId`, ...).
    pub fn text(&self, name: &str) -> Result<Option<String>, CeremonyError> {
        let Some(p) = self.one(name)? else {
            return Ok(None);
        };
        for k in [
            "valueString",
            "valueCode",
            "valueUri",
            "valueId",
            "valueDateTime",
            "valueInstant",
            "valueDate",
        ] {
            if let Some(s) = p.get(k).and_then(Value::as_str) {
                if s.len() > 8192 {
                    return Err(bad(format!("parameter {name:?} is too long")));
                }
                return Ok(Some(s.to_owned()));
            }
        }
        Err(bad(format!(
            "parameter {name:?} needs a string or code value"
        )))
    }

    /// A reference (`valueReference.reference`, or a string) to a resource of type `ty`;
    /// returns the id.
    pub fn reference(&self, name: &str, ty: &str) -> Result<Option<String>, CeremonyError> {
        let Some(p) = self.one(name)? else {
            return Ok(None);
        };
        let r = p
            .get("valueReference")
            .and_then(|r| r.get("reference"))
            .or_else(|| p.get("valueString"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(format!(
                    "parameter {name:?} needs a valueReference to a {ty}"
                ))
            })?;
        parse_reference(r, ty).map(Some)
    }

    /// A non-negative integer value.
    pub fn integer(&self, name: &str) -> Result<Option<u64>, CeremonyError> {
        let Some(p) = self.one(name)? else {
            return Ok(None);
        };
        [
            "valueInteger",
            "valueUnsignedInt",
            "valuePositiveInt",
            "valueDecimal",
        ]
        .iter()
        .find_map(|k| p.get(*k).and_then(Value::as_u64))
        .map(Some)
        .ok_or_else(|| bad(format!("parameter {name:?} needs a non-negative integer")))
    }

    /// Every value of a repeated code parameter.
    pub fn codes(&self, name: &str) -> Result<Vec<String>, CeremonyError> {
        self.all(name)
            .map(|p| {
                ["valueCode", "valueString", "valueUri"]
                    .iter()
                    .find_map(|k| p.get(*k).and_then(Value::as_str))
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("parameter {name:?} needs a code value")))
            })
            .collect()
    }
}

/// Whether `id` is a FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses `Type/id` (or a bare id) into the id, checking the type.
pub fn parse_reference(r: &str, ty: &str) -> Result<String, CeremonyError> {
    let id = match r.split_once('/') {
        Some((t, id)) if t == ty => id,
        Some(_) => return Err(bad(format!("{r:?} is not a reference to a {ty}"))),
        None => r,
    };
    if valid_id(id) {
        Ok(id.to_owned())
    } else {
        Err(bad(format!("{r:?} is not a valid {ty} reference")))
    }
}

/// A purpose of use code: a v3 ActReason code such as `TREAT`.
pub fn purpose(code: &str) -> Result<String, CeremonyError> {
    if !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(code.to_owned())
    } else {
        Err(bad(format!(
            "purpose {code:?} is not a v3 ActReason code such as TREAT"
        )))
    }
}

/// `permit` or `deny`.
pub fn decision(s: Option<&str>) -> Result<Decision, CeremonyError> {
    match s {
        None | Some("permit") => Ok(Decision::Permit),
        Some("deny") => Ok(Decision::Deny),
        Some(o) => Err(bad(format!("decision {o:?} must be permit or deny"))),
    }
}

/// The FHIR code of a decision.
pub fn decision_code(d: Decision) -> &'static str {
    match d {
        Decision::Permit => "permit",
        Decision::Deny => "deny",
    }
}

/// Unix seconds of an RFC 3339 date-time (`YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)`) or a date
/// (`YYYY-MM-DD`, midnight UTC).
pub fn parse_time(s: &str) -> Result<u64, CeremonyError> {
    let err = || {
        bad(format!(
            "{s:?} is not an RFC 3339 date-time such as 2026-01-31T00:00:00Z"
        ))
    };
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, CeremonyError> {
        let t = s.get(r).ok_or_else(err)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().map_err(|_| err())
        } else {
            Err(err())
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(err());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo as u32) as i64 {
        return Err(err());
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    let mut secs = days * 86_400;
    if b.len() > 10 {
        if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if h > 23 || mi > 59 || se > 60 {
            return Err(err());
        }
        secs += h * 3600 + mi * 60 + se;
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return Err(err());
            }
            rest = &frac[n..];
        }
        let off = match rest {
            "Z" => 0,
            z if z.len() == 6
                && z.is_ascii()
                && (z.starts_with('+') || z.starts_with('-'))
                && &z[3..4] == ":" =>
            {
                let oh: i64 = z[1..3].parse().map_err(|_| err())?;
                let om: i64 = z[4..6].parse().map_err(|_| err())?;
                if oh > 23 || om > 59 {
                    return Err(err());
                }
                let o = oh * 3600 + om * 60;
                if z.starts_with('+') { o } else { -o }
            }
            _ => return Err(err()),
        };
        secs -= off;
    }
    u64::try_from(secs)
        .ok()
        .filter(|t| *t <= MAX_SAFE_INTEGER)
        .ok_or_else(err)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// RFC 3339 UTC date-time of unix seconds, second precision (`2026-01-31T08:00:00Z`).
pub fn format_time(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_reject_garbage() {
        for t in [0u64, 1_790_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)).unwrap(), t);
        }
        assert_eq!(
            parse_time("2026-01-31").unwrap(),
            parse_time("2026-01-31T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-01-31T02:00:00+02:00").unwrap(),
            parse_time("2026-01-31T00:00:00.5Z").unwrap()
        );
        for b in [
            "",
            "2026-02-30",
            "2026-13-01",
            "2026-01-31T25:00:00Z",
            "2026-01-31T00:00:00",
            "1960-01-01",
            "２０２６-01-01",
            "2026-01-31T00:00:00+1é00",
            "2026-01-31T00:00:00.é",
            "2026-01-31Té0:00:00Z",
        ] {
            assert!(parse_time(b).is_err(), "{b}");
        }
    }

    #[test]
    fn parameters_are_bounded_and_typed() {
        let p = Params::parse(
            br#"{"resourceType":"Parameters","parameter":[
                {"name":"organization","valueReference":{"reference":"Organization/o-1"}},
                {"name":"class","valueCode":"Observation"},{"name":"class","valueCode":"Condition"},
                {"name":"timeoutSeconds","valueInteger":5}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.reference("organization", "Organization")
                .unwrap()
                .unwrap(),
            "o-1"
        );
        assert!(p.reference("organization", "Practitioner").is_err());
        assert_eq!(p.codes("class").unwrap(), ["Observation", "Condition"]);
        assert_eq!(p.integer("timeoutSeconds").unwrap(), Some(5));
        assert!(p.only(&["organization", "class"]).is_err());
        assert!(Params::parse(b"{\"resourceType\":\"Patient\"}").is_err());
        assert!(Params::parse(b"").unwrap().text("x").unwrap().is_none());
        assert!(parse_reference("Organization/../x", "Organization").is_err());
    }
}
