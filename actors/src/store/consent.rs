//! The patient's consents as the access policy reads them.
//!
//! A [`ConsentRule`] is the part of a stored FHIR Consent (shape fixed by the consent
//! contract, section 4) that decides access: permit or deny, the grantee Organization and
//! Practitioners (`provision.actor` with role IRCP), the purposes, the period, the classes
//! (resource types) and the data period. [`Store::consent_rules_in`] finds the *active*
//! consents of one patient through the Consent `patient` blind index (one prefix scan, no
//! type scan); the policy caches them per request and patient.

use heed::RoTxn;
use serde_json::Value;

use super::error::StoreResult;
use super::search::SearchQuery;
use super::{Record, Store, time};

/// v3 ParticipationType code of a consent grantee (information recipient).
pub const GRANTEE_ROLE: &str = "IRCP";

/// An inclusive time range in unix milliseconds; `None` ends are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// First millisecond covered (`None` = since ever).
    pub start: Option<i64>,
    /// Last millisecond covered (`None` = for ever).
    pub end: Option<i64>,
}

impl Range {
    /// Whether `t` (unix millis) lies in the range.
    pub fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t <= e)
    }

    /// A FHIR Period (`start`/`end` dateTimes). `None` if a present bound is malformed.
    pub fn from_period(v: &Value) -> Option<Range> {
        let bound = |k: &str, hi: bool| -> Option<Option<i64>> {
            match v.get(k) {
                None | Some(Value::Null) => Some(None),
                Some(Value::String(s)) => {
                    parse_date_time(s).map(|(lo, h)| Some(if hi { h } else { lo }))
                }
                Some(_) => None,
            }
        };
        Some(Range {
            start: bound("start", false)?,
            end: bound("end", true)?,
        })
    }
}

/// The range `[lo, hi]` (unix millis) a FHIR date / dateTime / instant covers at its
/// precision: `2024` is the whole year, `2024-05-01` the whole day, a time to the second
/// (or millisecond) that second. Times need a zone (`Z` or `±hh:mm`), as FHIR requires.
pub fn parse_date_time(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    if s.len() > 40 || !s.is_ascii() {
        return None;
    }
    let num = |a: usize, b: usize| -> Option<i64> {
        let t = s.get(a..b)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    const DAY: i64 = 86_400_000;
    let year = num(0, 4)?;
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let day_start = |y: i64, m: i64, d: i64| time::days_from_civil(y, m as u32, d as u32) * DAY;
    match (date_part.len(), time_part) {
        (4, None) => Some((day_start(year, 1, 1), day_start(year + 1, 1, 1) - 1)),
        (7, None) if &s[4..5] == "-" => {
            let m = num(5, 7).filter(|m| (1..=12).contains(m))?;
            let (ny, nm) = if m == 12 {
                (year + 1, 1)
            } else {
                (year, m + 1)
            };
            Some((day_start(year, m, 1), day_start(ny, nm, 1) - 1))
        }
        (10, t) if &s[4..5] == "-" && &s[7..8] == "-" => {
            let m = num(5, 7).filter(|m| (1..=12).contains(m))?;
            let d = num(8, 10).filter(|d| (1..=31).contains(d))?;
            let base = day_start(year, m, d);
            let Some(t) = t else {
                return Some((base, base + DAY - 1));
            };
            // hh:mm:ss[.fff...](Z|±hh:mm)
            let (clock, offset_ms) = if let Some(c) = t.strip_suffix('Z') {
                (c, 0)
            } else {
                let pos = t.rfind(['+', '-'])?;
                let (c, z) = t.split_at(pos);
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let z = &z[1..];
                if z.len() != 5 || &z[2..3] != ":" {
                    return None;
                }
                let zh: i64 = z[..2].parse().ok()?;
                let zm: i64 = z[3..].parse().ok()?;
                (c, sign * (zh * 60 + zm) * 60_000)
            };
            if clock.len() < 8 || &clock[2..3] != ":" || &clock[5..6] != ":" {
                return None;
            }
            let hh: i64 = clock[..2].parse().ok().filter(|h| *h < 24)?;
            let mm: i64 = clock[3..5].parse().ok().filter(|m| *m < 60)?;
            let ss: i64 = clock[6..8].parse().ok().filter(|s| *s < 61)?;
            let (ms, exact) = match clock.get(8..) {
                None | Some("") => (0, false),
                Some(f) => {
                    let digits = f.strip_prefix('.')?;
                    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    let mut ms = 0i64;
                    for (i, c) in digits.bytes().take(3).enumerate() {
                        ms += i64::from(c - b'0') * [100, 10, 1][i];
                    }
                    (ms, true)
                }
            };
            let at = base + ((hh * 60 + mm) * 60 + ss) * 1000 + ms - offset_ms;
            Some((at, if exact { at } else { at + 999 }))
        }
        _ => None,
    }
}

/// The deciding content of one active Consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRule {
    /// `Consent/<id>/_history/<version>`: what the AuditEvent names.
    pub reference: String,
    /// `provision.type` permit (true) or deny (false).
    pub permit: bool,
    /// Grantee organizations (`Organization/<id>`).
    pub organizations: Vec<String>,
    /// Grantee practitioners (`Practitioner/<id>`); empty = any on behalf of the grantee.
    pub practitioners: Vec<String>,
    /// Purpose-of-use codes (`provision.purpose`).
    pub purposes: Vec<String>,
    /// `provision.period`.
    pub period: Range,
    /// Resource types covered (`provision.class` codes); `None` = all clinical data.
    pub classes: Option<Vec<String>>,
    /// `provision.dataPeriod`: records last updated inside it; `None` = any.
    pub data_period: Option<Range>,
}

impl ConsentRule {
    /// The rule of an active Consent record; `None` for any other status, a deletion,
    /// another resource type or a Consent too malformed to grant anything (a permit whose
    /// periods do not parse grants nothing; a deny whose periods do not parse denies
    /// always).
    pub fn from_record(r: &Record) -> Option<ConsentRule> {
        let c = &r.resource;
        if r.deleted
            || r.resource_type != "Consent"
            || c.get("status").and_then(Value::as_str) != Some("active")
        {
            return None;
        }
        let provision = c.get("provision")?;
        let permit = match provision.get("type").and_then(Value::as_str) {
            Some("permit") => true,
            Some("deny") => false,
            _ => return None,
        };
        let mut organizations = Vec::new();
        let mut practitioners = Vec::new();
        for actor in provision
            .get("actor")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let is_grantee = actor["role"]["coding"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["code"] == GRANTEE_ROLE));
            let Some(reference) = actor["reference"]["reference"].as_str() else {
                continue;
            };
            if !is_grantee {
                continue;
            }
            if reference.starts_with("Organization/") {
                organizations.push(reference.to_string());
            } else if reference.starts_with("Practitioner/") {
                practitioners.push(reference.to_string());
            }
        }
        let codes = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("code").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        };
        let purposes = codes(provision.get("purpose"));
        let classes = match provision.get("class") {
            None | Some(Value::Null) => None,
            Some(v) => Some(codes(Some(v))).filter(|c| !c.is_empty()),
        };
        let range_of = |k: &str| -> Option<Option<Range>> {
            match provision.get(k) {
                None | Some(Value::Null) => Some(None),
                Some(p) => Range::from_period(p).map(Some),
            }
        };
        let (period, data_period) = match (range_of("period"), range_of("dataPeriod")) {
            (Some(p), Some(d)) => (p.unwrap_or_default(), d),
            _ if permit => return None,
            _ => (Range::default(), None),
        };
        Some(ConsentRule {
            reference: r.versioned_reference(),
            permit,
            organizations,
            practitioners,
            purposes,
            period,
            classes,
            data_period,
        })
    }

    /// Whether the provision covers records of `resource_type` (a consent of any class
    /// covers the Patient resource itself).
    pub fn covers_type(&self, resource_type: &str) -> bool {
        resource_type == "Patient"
            || self
                .classes
                .as_ref()
                .is_none_or(|c| c.iter().any(|t| t == resource_type))
    }
}

impl Store {
    /// The active consents of `Patient/<patient_id>` (current versions only), found through
    /// the Consent `patient` index inside `txn`.
    pub(crate) fn consent_rules_in(
        &self,
        txn: &RoTxn,
        patient_id: &str,
    ) -> StoreResult<Vec<ConsentRule>> {
        let mut q = SearchQuery::from_pairs("Consent", &[("patient", patient_id)])?;
        q.count = usize::MAX;
        Ok(self
            .search_in(txn, &q)?
            .items
            .iter()
            .filter_map(ConsentRule::from_record)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_cover_their_precision() {
        let day = 86_400_000;
        let (lo, hi) = parse_date_time("2024-05-01").unwrap();
        assert_eq!(hi - lo, day - 1);
        assert_eq!(lo, time::days_from_civil(2024, 5, 1) * day);
        let (y0, y1) = parse_date_time("2024").unwrap();
        assert_eq!(y0, time::days_from_civil(2024, 1, 1) * day);
        assert_eq!(y1 + 1, time::days_from_civil(2025, 1, 1) * day);
        let (m0, m1) = parse_date_time("2024-12").unwrap();
        assert_eq!(m1 + 1 - m0, 31 * day);
        let (a, b) = parse_date_time("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(a, lo + 10 * 3_600_000);
        assert_eq!(b, a + 999);
        let (c, d) = parse_date_time("2024-05-01T12:00:00.250+02:00").unwrap();
        assert_eq!(c, a + 250);
        assert_eq!(c, d);
        for bad in [
            "",
            "24-05-01",
            "2024-13-01",
            "2024-05-01T10:00",
            "2024-05-01T10:00:00",
            "2024-05-01T25:00:00Z",
            "2024-05-01T10:00:00+2",
            "2024-05-01T10:00:00.Z",
            "x024",
        ] {
            assert_eq!(parse_date_time(bad), None, "{bad}");
        }
    }

    fn record(c: Value) -> Record {
        Record {
            resource_type: "Consent".into(),
            id: "c1".into(),
            version: 2,
            last_updated: 0,
            deleted: false,
            canonical: serde_json::to_vec(&c).unwrap(),
            resource: c,
            jws: String::new(),
            author_jws: None,
        }
    }

    #[test]
    fn rules_read_the_contract_shape() {
        let role = serde_json::json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]});
        let c = serde_json::json!({"resourceType": "Consent", "status": "active",
            "provision": {"type": "permit",
                "period": {"start": "2024-01-01", "end": "2024-12-31"},
                "actor": [{"role": role, "reference": {"reference": "Organization/f2"}},
                          {"role": role, "reference": {"reference": "Practitioner/d1"}},
                          {"role": {"coding": [{"code": "AUT"}]}, "reference": {"reference": "Organization/x"}}],
                "purpose": [{"code": "TREAT"}],
                "class": [{"code": "Observation"}],
                "dataPeriod": {"start": "2023-01-01"}}});
        let r = ConsentRule::from_record(&record(c.clone())).unwrap();
        assert_eq!(r.reference, "Consent/c1/_history/2");
        assert!(r.permit);
        assert_eq!(r.organizations, vec!["Organization/f2"]);
        assert_eq!(r.practitioners, vec!["Practitioner/d1"]);
        assert_eq!(r.purposes, vec!["TREAT"]);
        assert!(r.covers_type("Observation") && r.covers_type("Patient"));
        assert!(!r.covers_type("Condition"));
        assert!(r.data_period.unwrap().end.is_none());
        let mut inactive = c.clone();
        inactive["status"] = "inactive".into();
        assert_eq!(ConsentRule::from_record(&record(inactive)), None);
        let mut proposed = c.clone();
        proposed["status"] = "proposed".into();
        assert_eq!(ConsentRule::from_record(&record(proposed)), None);
        let mut bad = c.clone();
        bad["provision"]["period"]["end"] = "soon".into();
        assert_eq!(ConsentRule::from_record(&record(bad.clone())), None);
        bad["provision"]["type"] = "deny".into();
        let deny = ConsentRule::from_record(&record(bad)).unwrap();
        assert!(!deny.permit && deny.period.contains(0));
    }
}
