//! The demographic facts matching compares, and how they are read from a FHIR Patient.
//!
//! [`Demographics`] holds both what was recorded and the forms the scorer compares
//! (folded words, phonetic keys, E.164 phones), computed once at construction so that
//! scoring a candidate does no allocation-heavy normalisation.

use serde_json::Value;

use super::phonetic::{fold, fold_words, phonetic_key};

/// Errors reading demographics from a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// The JSON is not an object with `"resourceType": "Patient"`.
    #[error("expected a FHIR Patient resource, found {found}")]
    NotAPatient {
        /// What was found instead (the resourceType, or a JSON kind).
        found: String,
    },
}

/// Administrative gender (FHIR `AdministrativeGender`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gender {
    /// `male`
    Male,
    /// `female`
    Female,
    /// `other`
    Other,
}

impl Gender {
    /// Parse a FHIR gender code; `unknown` and anything else give `None` (no evidence).
    pub fn from_code(code: &str) -> Option<Self> {
        match code.trim().to_ascii_lowercase().as_str() {
            "male" | "m" => Some(Self::Male),
            "female" | "f" => Some(Self::Female),
            "other" => Some(Self::Other),
            _ => None,
        }
    }
}

/// A birth date at the precision it was recorded: year, year-month or full date.
///
/// Many Rwandan adults know only their birth year, so partial dates are first-class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BirthDate {
    /// Calendar year.
    pub year: i32,
    /// Month 1-12, when known.
    pub month: Option<u8>,
    /// Day 1-31, when known (only meaningful with a month).
    pub day: Option<u8>,
}

impl BirthDate {
    /// A full date. Out-of-range month or day are dropped to the precision that is valid.
    pub fn ymd(year: i32, month: u8, day: u8) -> Self {
        let month = (1..=12).contains(&month).then_some(month);
        let day = month.and((1..=31).contains(&day).then_some(day));
        Self { year, month, day }
    }

    /// A year-only date.
    pub fn year(year: i32) -> Self {
        Self {
            year,
            month: None,
            day: None,
        }
    }

    /// Parse a FHIR `date` (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a time part is ignored).
    /// Returns `None` when the year is not four digits.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let date = s.split('T').next().unwrap_or(s);
        let mut parts = date.split('-');
        let y = parts.next()?;
        if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = y.parse().ok()?;
        let month = parts
            .next()
            .and_then(|m| m.parse::<u8>().ok())
            .filter(|m| (1..=12).contains(m));
        let day = month
            .and(parts.next().and_then(|d| d.parse::<u8>().ok()))
            .filter(|d| (1..=31).contains(d));
        Some(Self { year, month, day })
    }
}

/// Normalise a phone number to E.164 (`+2507XXXXXXXX` for Rwanda).
///
/// Accepts the forms clerks write: `0788 123 456`, `788123456`, `+250 788-123-456`,
/// `250788123456`, `00250788123456`, `(0788) 12 34 56`. Other countries' numbers given
/// with `+` or `00` are kept as `+` and their digits. Returns `None` for anything with
/// fewer than 9 or more than 15 digits, or letters.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("tel:").unwrap_or(raw);
    if raw.chars().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let plus = raw.starts_with('+');
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let (international, digits) = if plus {
        (true, digits.as_str())
    } else if let Some(rest) = digits.strip_prefix("00") {
        (true, rest)
    } else {
        (false, digits.as_str())
    };
    let e164 = if international || (digits.len() == 12 && digits.starts_with("250")) {
        digits.to_string()
    } else if digits.len() == 10 && digits.starts_with('0') {
        format!("250{}", &digits[1..])
    } else if digits.len() == 9 && !digits.starts_with('0') {
        format!("250{digits}")
    } else {
        return None;
    };
    if !(9..=15).contains(&e164.len()) {
        return None;
    }
    Some(format!("+{e164}"))
}

/// A name word as compared: folded text and its phonetic key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameWord {
    /// Folded (lower case, no accents, letters only).
    pub(crate) text: String,
    /// [`phonetic_key`] of `text`.
    pub(crate) key: String,
}

impl NameWord {
    fn new(text: String) -> Self {
        let key = phonetic_key(&text);
        Self { text, key }
    }
}

/// The demographics of one patient, as the matcher compares them.
///
/// Build one with [`Demographics::from_patient`] (FHIR R4 Patient JSON) or
/// [`Demographics::builder`]. Fields are read through accessors; the normalised forms
/// are derived at construction and cannot drift from the recorded values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Demographics {
    pub(crate) identifiers: Vec<(String, String)>,
    pub(crate) given: Vec<NameWord>,
    pub(crate) family: Vec<NameWord>,
    pub(crate) birth_date: Option<BirthDate>,
    pub(crate) gender: Option<Gender>,
    pub(crate) phones: Vec<String>,
    pub(crate) province: Option<String>,
    pub(crate) district: Option<String>,
    pub(crate) sector: Option<String>,
}

/// Builder for [`Demographics`]; every setter normalises its input.
#[derive(Debug, Clone, Default)]
pub struct DemographicsBuilder {
    inner: Demographics,
}

impl DemographicsBuilder {
    /// Add an identifier (`system`, `value`); blank values are ignored. Systems compare
    /// exactly; values compare with case and spaces/hyphens ignored.
    pub fn identifier(mut self, system: &str, value: &str) -> Self {
        let v = normalize_identifier(value);
        if !v.is_empty() {
            let entry = (system.trim().to_string(), v);
            if !self.inner.identifiers.contains(&entry) {
                self.inner.identifiers.push(entry);
            }
        }
        self
    }

    /// Add given name(s); a multi-word value (`"Jean Marie"`) adds each word.
    pub fn given(mut self, given: &str) -> Self {
        for w in fold_words(given) {
            self.inner.given.push(NameWord::new(w));
        }
        self
    }

    /// Set the family name (a multi-word family name keeps each word).
    pub fn family(mut self, family: &str) -> Self {
        self.inner.family = fold_words(family).into_iter().map(NameWord::new).collect();
        self
    }

    /// Set the birth date.
    pub fn birth_date(mut self, date: BirthDate) -> Self {
        self.inner.birth_date = Some(date);
        self
    }

    /// Set the gender.
    pub fn gender(mut self, gender: Gender) -> Self {
        self.inner.gender = Some(gender);
        self
    }

    /// Add a phone number; numbers that do not normalise (see [`normalize_phone`]) are ignored.
    pub fn phone(mut self, raw: &str) -> Self {
        if let Some(p) = normalize_phone(raw)
            && !self.inner.phones.contains(&p)
        {
            self.inner.phones.push(p);
        }
        self
    }

    /// Set the province (FHIR `Address.state`).
    pub fn province(mut self, s: &str) -> Self {
        self.inner.province = non_empty(fold(s));
        self
    }

    /// Set the district (FHIR `Address.district`).
    pub fn district(mut self, s: &str) -> Self {
        self.inner.district = non_empty(fold(s));
        self
    }

    /// Set the sector (FHIR `Address.city`, where Rwandan systems put the sector).
    pub fn sector(mut self, s: &str) -> Self {
        self.inner.sector = non_empty(fold(s));
        self
    }

    /// Finish.
    pub fn build(self) -> Demographics {
        self.inner
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn normalize_identifier(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

impl Demographics {
    /// Start building demographics by hand.
    pub fn builder() -> DemographicsBuilder {
        DemographicsBuilder::default()
    }

    /// Read demographics from FHIR R4 Patient JSON, leniently: missing or malformed
    /// elements are simply absent (they are no evidence either way).
    ///
    /// Reads `identifier[].system/value`; the first `name[]` whose `use` is not `old`
    /// or `maiden` (its `given[]` and `family`, falling back to `text` split as given
    /// words then family); `birthDate`; `gender`; `telecom[]` with system `phone` or
    /// `sms` (or none); the first `address[]` (`state` = province, `district`,
    /// `city` = sector). Does not check `resourceType`; see [`Self::try_from_patient`].
    pub fn from_patient(patient: &Value) -> Self {
        let mut b = Self::builder();
        if let Some(ids) = patient.get("identifier").and_then(Value::as_array) {
            for id in ids {
                let system = id.get("system").and_then(Value::as_str).unwrap_or("");
                if let Some(value) = id.get("value").and_then(Value::as_str) {
                    b = b.identifier(system, value);
                }
            }
        }
        if let Some(names) = patient.get("name").and_then(Value::as_array) {
            let chosen = names
                .iter()
                .find(|n| !matches!(n.get("use").and_then(Value::as_str), Some("old" | "maiden")))
                .or_else(|| names.first());
            if let Some(name) = chosen {
                let mut any = false;
                if let Some(given) = name.get("given").and_then(Value::as_array) {
                    for g in given.iter().filter_map(Value::as_str) {
                        b = b.given(g);
                        any = true;
                    }
                }
                if let Some(family) = name.get("family").and_then(Value::as_str) {
                    b = b.family(family);
                    any = true;
                }
                if !any && let Some(text) = name.get("text").and_then(Value::as_str) {
                    let words: Vec<&str> = text.split_whitespace().collect();
                    if let Some((last, first)) = words.split_last() {
                        for g in first {
                            b = b.given(g);
                        }
                        b = b.family(last);
                    }
                }
            }
        }
        if let Some(d) = patient
            .get("birthDate")
            .and_then(Value::as_str)
            .and_then(BirthDate::parse)
        {
            b = b.birth_date(d);
        }
        if let Some(g) = patient
            .get("gender")
            .and_then(Value::as_str)
            .and_then(Gender::from_code)
        {
            b = b.gender(g);
        }
        if let Some(telecom) = patient.get("telecom").and_then(Value::as_array) {
            for t in telecom {
                let system = t.get("system").and_then(Value::as_str);
                if matches!(system, None | Some("phone" | "sms"))
                    && let Some(v) = t.get("value").and_then(Value::as_str)
                {
                    b = b.phone(v);
                }
            }
        }
        if let Some(addr) = patient
            .get("address")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            if let Some(s) = addr.get("state").and_then(Value::as_str) {
                b = b.province(s);
            }
            if let Some(s) = addr.get("district").and_then(Value::as_str) {
                b = b.district(s);
            }
            if let Some(s) = addr.get("city").and_then(Value::as_str) {
                b = b.sector(s);
            }
        }
        b.build()
    }

    /// Like [`Self::from_patient`], but rejects anything that is not a Patient resource.
    pub fn try_from_patient(resource: &Value) -> Result<Self, MatchError> {
        match resource.get("resourceType").and_then(Value::as_str) {
            Some("Patient") => Ok(Self::from_patient(resource)),
            Some(other) => Err(MatchError::NotAPatient {
                found: other.to_string(),
            }),
            None => Err(MatchError::NotAPatient {
                found: match resource {
                    Value::Object(_) => "an object without resourceType".into(),
                    Value::Array(_) => "an array".into(),
                    _ => "a JSON scalar".into(),
                },
            }),
        }
    }

    /// Identifiers as (system, normalised value).
    pub fn identifiers(&self) -> &[(String, String)] {
        &self.identifiers
    }

    /// Given-name words, folded.
    pub fn given(&self) -> impl Iterator<Item = &str> {
        self.given.iter().map(|w| w.text.as_str())
    }

    /// Family-name words, folded.
    pub fn family(&self) -> impl Iterator<Item = &str> {
        self.family.iter().map(|w| w.text.as_str())
    }

    /// Birth date, if recorded.
    pub fn birth_date(&self) -> Option<BirthDate> {
        self.birth_date
    }

    /// Gender, if recorded (not `unknown`).
    pub fn gender(&self) -> Option<Gender> {
        self.gender
    }

    /// Phones in E.164.
    pub fn phones(&self) -> &[String] {
        &self.phones
    }

    /// Folded province, district and sector.
    pub fn address(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.province.as_deref(),
            self.district.as_deref(),
            self.sector.as_deref(),
        )
    }

    /// True when there is nothing to match on (no identifier, no name, no phone).
    pub fn is_empty(&self) -> bool {
        self.identifiers.is_empty()
            && self.given.is_empty()
            && self.family.is_empty()
            && self.phones.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn phone_normalisation() {
        let want = Some("+250788123456".to_string());
        for raw in [
            "0788123456",
            "0788 123 456",
            "788123456",
            "+250 788-123-456",
            "250788123456",
            "00250788123456",
            "(0788) 12 34 56",
            "tel:+250788123456",
        ] {
            assert_eq!(normalize_phone(raw), want, "{raw}");
        }
        assert_eq!(
            normalize_phone("+33 6 12 34 56 78"),
            Some("+33612345678".into())
        );
        assert_eq!(normalize_phone("12345"), None);
        assert_eq!(normalize_phone("call me"), None);
        assert_eq!(normalize_phone(""), None);
        assert_eq!(normalize_phone("0788"), None);
    }

    #[test]
    fn birth_dates() {
        assert_eq!(
            BirthDate::parse("1990-03-04"),
            Some(BirthDate::ymd(1990, 3, 4))
        );
        assert_eq!(
            BirthDate::parse("1990-03"),
            Some(BirthDate {
                year: 1990,
                month: Some(3),
                day: None
            })
        );
        assert_eq!(BirthDate::parse("1990"), Some(BirthDate::year(1990)));
        assert_eq!(BirthDate::parse("1990-13-04"), Some(BirthDate::year(1990)));
        assert_eq!(BirthDate::parse("90-03-04"), None);
        assert_eq!(BirthDate::parse("abcd"), None);
        assert_eq!(
            BirthDate::ymd(1990, 2, 40),
            BirthDate {
                year: 1990,
                month: Some(2),
                day: None
            }
        );
    }

    #[test]
    fn from_patient_reads_everything() {
        let p = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:rw:nid", "value": "1 1990 8 0012345 0 12"}],
            "name": [
                {"use": "old", "family": "Uwase", "given": ["Marie"]},
                {"use": "official", "family": "Mukamana", "given": ["Marie Claire"]}
            ],
            "gender": "female",
            "birthDate": "1990-03-04",
            "telecom": [{"system": "phone", "value": "0788 123 456"}, {"system": "email", "value": "a@b.rw"}],
            "address": [{"state": "Kigali", "district": "Gasabo", "city": "Kimironko"}]
        });
        let d = Demographics::try_from_patient(&p).unwrap();
        assert_eq!(
            d.identifiers(),
            &[(
                "urn:rw:nid".to_string(),
                "11990800123450 12".replace(' ', "")
            )]
        );
        assert_eq!(d.given().collect::<Vec<_>>(), vec!["marie", "claire"]);
        assert_eq!(d.family().collect::<Vec<_>>(), vec!["mukamana"]);
        assert_eq!(d.gender(), Some(Gender::Female));
        assert_eq!(d.birth_date(), Some(BirthDate::ymd(1990, 3, 4)));
        assert_eq!(d.phones(), &["+250788123456".to_string()]);
        assert_eq!(
            d.address(),
            (Some("kigali"), Some("gasabo"), Some("kimironko"))
        );
        assert!(!d.is_empty());
    }

    #[test]
    fn from_patient_is_lenient() {
        let d = Demographics::from_patient(
            &json!({"resourceType": "Patient", "name": [{"text": "Jean Pierre Habimana"}],
            "birthDate": 12, "gender": "unknown", "telecom": "nope"}),
        );
        assert_eq!(d.given().collect::<Vec<_>>(), vec!["jean", "pierre"]);
        assert_eq!(d.family().collect::<Vec<_>>(), vec!["habimana"]);
        assert_eq!(d.birth_date(), None);
        assert_eq!(d.gender(), None);
        assert!(Demographics::from_patient(&json!([1, 2])).is_empty());
        assert!(matches!(
            Demographics::try_from_patient(&json!({"resourceType": "Observation"})),
            Err(MatchError::NotAPatient { .. })
        ));
        assert!(Demographics::try_from_patient(&json!("x")).is_err());
    }
}
