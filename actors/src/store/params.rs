//! Search parameter definitions and hand-written extraction of their values.
//!
//! Each [`ParamDef`] names a FHIR search parameter of a resource type, its kind and the
//! element paths it reads (the FHIRPath expressions of
//! `shared/fhir-r4/search-parameters.json`, hand-translated: arrays are flattened, choice
//! types are listed explicitly, `.where(resolve() is Patient)` becomes a reference target
//! restriction). [`index_terms`] turns extracted values into the terms that are blinded into
//! the search index; [`crate::store::search`] uses the same extraction to post-filter.
//!
//! Nothing is indexed in plaintext. Every term is blinded with the component's
//! `BlindIndexKey` under the field `<type>.<param>`:
//! - strings: normalised (lowercase, accents stripped, punctuation to spaces) prefixes of
//!   1..=[`MAX_PREFIX`] characters of the value and of each word in it, so FHIR's default
//!   starts-with search needs no plaintext; longer queries post-filter.
//! - dates: blinded *equality* terms at year, month and day precision (`y:`, `m:`, `d:`)
//!   of the start and end day. Decision: no ordered (plaintext) date index, because a day
//!   next to a resource id would reveal e.g. birth dates. `eq` at any precision uses the
//!   index; `gt/ge/lt/le/sa/eb/ne` post-filter the candidates of the other clauses (or scan
//!   the type) — range queries should come with a selective clause such as `patient=`.
//!   Comparisons are at day precision (time of day and zones ignored).
//! - what still leaks: posting-list sizes (how many resources share a blinded term) and,
//!   per resource id, how many terms it has; resource types and ids are plaintext keys.

use serde_json::Value;

/// How a parameter's values are indexed and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// token: code / Coding / CodeableConcept / Identifier / boolean.
    Token,
    /// token over ContactPoint values, normalised (digits and `+`, lowercase e-mail).
    Telecom,
    /// string: plain strings, HumanName and Address parts; starts-with, accent-insensitive.
    Str,
    /// reference, optionally restricted to one target type.
    Reference(Option<&'static str>),
    /// date / dateTime / instant / Period, compared at day precision.
    Date,
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDef {
    /// Parameter code as used in the query string.
    pub name: &'static str,
    /// Kind.
    pub kind: ParamKind,
    /// Dot-separated element paths from the resource root.
    pub paths: &'static [&'static str],
}

const fn p(name: &'static str, kind: ParamKind, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind, paths }
}

use ParamKind::{Date, Reference as Ref, Str, Telecom, Token};

const PATIENT: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("family", Str, &["name.family"]),
    p("given", Str, &["name.given"]),
    p("birthdate", Date, &["birthDate"]),
    p("gender", Token, &["gender"]),
    p("telecom", Telecom, &["telecom"]),
    p("phone", Telecom, &["telecom"]),
    p("address", Str, &["address"]),
    p("address-city", Str, &["address.city"]),
    p("address-district", Str, &["address.district"]),
    p("address-state", Str, &["address.state"]),
    p("active", Token, &["active"]),
    p("link", Ref(None), &["link.other"]),
    p(
        "organization",
        Ref(Some("Organization")),
        &["managingOrganization"],
    ),
    p("general-practitioner", Ref(None), &["generalPractitioner"]),
];
const RELATED_PERSON: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("patient", Ref(Some("Patient")), &["patient"]),
    p("birthdate", Date, &["birthDate"]),
    p("gender", Token, &["gender"]),
    p("telecom", Telecom, &["telecom"]),
];
const PERSON: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("birthdate", Date, &["birthDate"]),
    p("gender", Token, &["gender"]),
    p("link", Ref(None), &["link.target"]),
];
const PRACTITIONER: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("family", Str, &["name.family"]),
    p("given", Str, &["name.given"]),
    p("gender", Token, &["gender"]),
    p("telecom", Telecom, &["telecom"]),
    p("active", Token, &["active"]),
];
const PRACTITIONER_ROLE: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("practitioner", Ref(Some("Practitioner")), &["practitioner"]),
    p("organization", Ref(Some("Organization")), &["organization"]),
    p("location", Ref(Some("Location")), &["location"]),
    p("role", Token, &["code"]),
    p("specialty", Token, &["specialty"]),
    p("active", Token, &["active"]),
    p("date", Date, &["period"]),
];
const ORGANIZATION: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name", "alias"]),
    p("partof", Ref(Some("Organization")), &["partOf"]),
    p("type", Token, &["type"]),
    p("active", Token, &["active"]),
    p("address-city", Str, &["address.city"]),
    p("address-district", Str, &["address.district"]),
];
const LOCATION: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name", "alias"]),
    p("partof", Ref(Some("Location")), &["partOf"]),
    p("type", Token, &["type"]),
    p(
        "organization",
        Ref(Some("Organization")),
        &["managingOrganization"],
    ),
    p("status", Token, &["status"]),
    p("address-city", Str, &["address.city"]),
    p("address-district", Str, &["address.district"]),
];
const HEALTHCARE_SERVICE: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("organization", Ref(Some("Organization")), &["providedBy"]),
    p("location", Ref(Some("Location")), &["location"]),
    p("service-type", Token, &["type"]),
    p("active", Token, &["active"]),
];
const ENDPOINT: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p(
        "organization",
        Ref(Some("Organization")),
        &["managingOrganization"],
    ),
    p("status", Token, &["status"]),
    p("connection-type", Token, &["connectionType"]),
];
const PRODUCT: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code"]),
    p("type", Token, &["type"]),
    p("status", Token, &["status"]),
    p("form", Token, &["form"]),
    p("category", Token, &["category"]),
    p("patient", Ref(Some("Patient")), &["patient"]),
    p(
        "organization",
        Ref(Some("Organization")),
        &["owner", "manufacturer"],
    ),
];
const TERMINOLOGY: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("url", Token, &["url"]),
    p("version", Token, &["version"]),
    p("name", Str, &["name"]),
    p("title", Str, &["title"]),
    p("status", Token, &["status"]),
    p("code", Token, &["concept.code"]),
];
const CONSENT: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("patient", Ref(Some("Patient")), &["patient"]),
    p("status", Token, &["status"]),
    p("actor", Ref(None), &["provision.actor.reference"]),
    p("category", Token, &["category"]),
    p("purpose", Token, &["provision.purpose"]),
    p("organization", Ref(Some("Organization")), &["organization"]),
    p("date", Date, &["dateTime"]),
    p("period", Date, &["provision.period"]),
];
const AUDIT_EVENT: &[ParamDef] = &[
    p(
        "patient",
        Ref(Some("Patient")),
        &["agent.who", "entity.what"],
    ),
    p("date", Date, &["recorded"]),
    p("agent", Ref(None), &["agent.who"]),
    p("entity", Ref(None), &["entity.what"]),
    p("action", Token, &["action"]),
    p("outcome", Token, &["outcome"]),
];
const PROVENANCE: &[ParamDef] = &[
    p("target", Ref(None), &["target"]),
    p("patient", Ref(Some("Patient")), &["target"]),
    p("agent", Ref(None), &["agent.who"]),
    p("recorded", Date, &["recorded"]),
];
/// Shared-health-record parameters: one table over all clinical types (paths absent from a
/// type simply yield nothing).
const CLINICAL: &[ParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p(
        "patient",
        Ref(Some("Patient")),
        &["subject", "patient", "beneficiary", "for"],
    ),
    p("subject", Ref(None), &["subject", "for"]),
    p(
        "encounter",
        Ref(Some("Encounter")),
        &["encounter", "context", "item.encounter"],
    ),
    p(
        "code",
        Token,
        &[
            "code",
            "vaccineCode",
            "medicationCodeableConcept",
            "itemCodeableConcept",
        ],
    ),
    p(
        "date",
        Date,
        &[
            "effectiveDateTime",
            "effectivePeriod",
            "effectiveInstant",
            "onsetDateTime",
            "onsetPeriod",
            "recordedDate",
            "authoredOn",
            "period",
            "occurrenceDateTime",
            "occurrencePeriod",
            "occurrenceString",
            "performedDateTime",
            "performedPeriod",
            "date",
            "created",
            "issued",
        ],
    ),
    p("status", Token, &["status"]),
    p("clinical-status", Token, &["clinicalStatus"]),
    p("category", Token, &["category"]),
    p("type", Token, &["type"]),
    p(
        "performer",
        Ref(None),
        &["performer", "performer.actor", "participant.individual"],
    ),
    p("requester", Ref(None), &["requester"]),
];

/// The search parameters of `resource_type` (empty for types without a table).
pub fn params_for(resource_type: &str) -> &'static [ParamDef] {
    match resource_type {
        "Patient" => PATIENT,
        "RelatedPerson" => RELATED_PERSON,
        "Person" => PERSON,
        "Practitioner" => PRACTITIONER,
        "PractitionerRole" => PRACTITIONER_ROLE,
        "Organization" | "OrganizationAffiliation" => ORGANIZATION,
        "Location" => LOCATION,
        "HealthcareService" => HEALTHCARE_SERVICE,
        "Endpoint" => ENDPOINT,
        "CodeSystem" | "ValueSet" | "ConceptMap" | "NamingSystem" => TERMINOLOGY,
        "Consent" => CONSENT,
        "AuditEvent" => AUDIT_EVENT,
        "Provenance" => PROVENANCE,
        t if super::route::SHR_TYPES.contains(&t) => CLINICAL,
        t if matches!(
            super::route::component_for(t),
            Ok(super::route::Component::Product)
        ) =>
        {
            PRODUCT
        }
        _ => &[],
    }
}

/// Looks up one parameter definition.
pub fn param(resource_type: &str, name: &str) -> Option<&'static ParamDef> {
    params_for(resource_type).iter().find(|d| d.name == name)
}

/// Collects the JSON values at `path` (dot-separated, arrays flattened at every step).
///
/// Walks depth first and pushes straight into `out`, with no list per path segment: every
/// value sits at the path's full depth, so this is the order a walk segment by segment gives.
pub fn collect<'a>(root: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let (seg, rest) = match path.split_once('.') {
        Some((seg, rest)) => (seg, Some(rest)),
        None => (path, None),
    };
    let Some(x) = member(root, seg) else {
        return;
    };
    match (x, rest) {
        (Value::Array(items), None) => out.extend(items.iter()),
        (other, None) => out.push(other),
        (Value::Array(items), Some(rest)) => {
            for item in items {
                collect(item, rest, out);
            }
        }
        (other, Some(rest)) => collect(other, rest, out),
    }
}

/// The member `name` of an object. A small object (as most FHIR elements are) is scanned
/// in order, which is cheaper than hashing `name` for the map's index; indexing a
/// resource looks up every path segment of every search parameter, most of them absent.
fn member<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.len() <= 16 => m.iter().find(|(k, _)| *k == name).map(|(_, x)| x),
        Value::Object(m) => m.get(name),
        _ => None,
    }
}

/// All values of a parameter in a resource.
pub fn values<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for path in def.paths {
        collect(resource, path, &mut out);
    }
    out
}

/// Lowercases and strips accents (Latin, incl. French), keeping letters, digits and spaces.
pub fn normalize_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let mapped: &str = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
            'ç' | 'ć' | 'č' => "c",
            'ď' => "d",
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' => "i",
            'ñ' | 'ń' | 'ň' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => "o",
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' => "u",
            'ý' | 'ÿ' => "y",
            'ś' | 'š' => "s",
            'ź' | 'ż' | 'ž' => "z",
            'œ' => "oe",
            'æ' => "ae",
            'ß' => "ss",
            '\'' | '’' | '-' | '.' | ',' => " ",
            _ => {
                if c.is_alphanumeric() || c == ' ' {
                    out.push(c);
                } else if c.is_whitespace() {
                    out.push(' ');
                }
                continue;
            }
        };
        out.push_str(mapped);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Normalises a telecom value: e-mails lowercased, phone numbers reduced to digits and `+`.
pub fn normalize_telecom(s: &str) -> String {
    if s.contains('@') {
        s.trim().to_lowercase()
    } else {
        s.chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect()
    }
}

/// Strings searched by a string parameter value (HumanName / Address parts or the string).
pub fn string_parts(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| string_parts(x, out)),
        Value::Object(m) => {
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                if let Some(x) = m.get(key) {
                    string_parts(x, out);
                }
            }
        }
        _ => {}
    }
}

/// (system, code) pairs of a token-typed value.
pub fn token_pairs(v: &Value, out: &mut Vec<(Option<String>, String)>) {
    match v {
        Value::String(s) => out.push((None, s.clone())),
        Value::Bool(b) => out.push((None, b.to_string())),
        Value::Object(m) => {
            if let Some(Value::Array(codings)) = m.get("coding") {
                for c in codings {
                    token_pairs(c, out);
                }
            }
            let sys = m.get("system").and_then(Value::as_str).map(str::to_string);
            if let Some(code) = m.get("code").and_then(Value::as_str) {
                out.push((sys.clone(), code.to_string()));
            }
            if let Some(val) = m.get("value").and_then(Value::as_str) {
                out.push((sys, val.to_string()));
            }
        }
        _ => {}
    }
}

/// Normalises a reference string to `Type/id` (drops base URL and `_history`).
pub fn normalize_reference(r: &str) -> Option<String> {
    let r = r.split("/_history/").next().unwrap_or(r);
    let mut segs = r.rsplit('/');
    let id = segs.next()?;
    let ty = segs.next()?;
    if id.is_empty() || ty.is_empty() || !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some(cat(&[ty, "/", id]))
}

/// The concatenation of `parts`, allocated once at its length. Search terms and references
/// are built on every write; `format!` guesses their capacity and often grows the string.
pub(crate) fn cat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// References (`Type/id`) of a reference-typed value.
pub fn references(v: &Value, restrict: Option<&str>) -> Vec<String> {
    let raw = match v {
        Value::Object(m) => m.get("reference").and_then(Value::as_str),
        Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    raw.and_then(normalize_reference)
        .filter(|r| restrict.is_none_or(|t| r.split('/').next() == Some(t)))
        .into_iter()
        .collect()
}

/// Day-precision range `[lo, hi]` (as `YYYY-MM-DD`) of a date, dateTime, instant or Period.
pub fn date_range(v: &Value) -> Option<(String, String)> {
    match v {
        Value::String(s) => date_str_range(s),
        Value::Object(m) => {
            let lo = m
                .get("start")
                .and_then(Value::as_str)
                .and_then(date_str_range)
                .map(|r| r.0)
                .unwrap_or_else(|| "0000-01-01".into());
            let hi = m
                .get("end")
                .and_then(Value::as_str)
                .and_then(date_str_range)
                .map(|r| r.1)
                .unwrap_or_else(|| "9999-12-31".into());
            if m.get("start").is_none() && m.get("end").is_none() {
                None
            } else {
                Some((lo, hi))
            }
        }
        _ => None,
    }
}

/// Range of a FHIR date string at day precision: `YYYY`, `YYYY-MM`, `YYYY-MM-DD[Thh:mm...]`.
pub fn date_str_range(s: &str) -> Option<(String, String)> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if !digits(0..4) {
        return None;
    }
    let y = &s[..4];
    if b.len() == 4 {
        return Some((format!("{y}-01-01"), format!("{y}-12-31")));
    }
    if b.get(4) != Some(&b'-') || !digits(5..7) {
        return None;
    }
    let m = &s[5..7];
    if b.len() == 7 {
        return Some((format!("{y}-{m}-01"), format!("{y}-{m}-31")));
    }
    if b.get(7) != Some(&b'-') || !digits(8..10) || (b.len() > 10 && b[10] != b'T') {
        return None;
    }
    let d = s[..10].to_string();
    Some((d.clone(), d))
}

/// Longest prefix (in characters) put into the blind index for string parameters; longer
/// queries use this prefix and are post-filtered on the opened resources.
pub const MAX_PREFIX: usize = 12;

/// First `n` characters of `s`.
pub fn char_prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The index terms of one parameter of a `resource_type` resource (before blinding). Term
/// syntax: tokens `c:<code>` and `sc:<system>|<code>` (system-only queries are
/// post-filtered); strings `p:<normalised prefix>`; references `r:<Type/id>` (and, in the
/// audit log only, `i:<id>` for parameters not restricted to one target type: see
/// [`indexes_bare_ids`]); dates `y:YYYY`, `m:YYYY-MM`, `d:YYYY-MM-DD`.
pub fn index_terms(resource_type: &str, def: &ParamDef, resource: &Value) -> Vec<String> {
    terms_of_values(def, values(def, resource), indexes_bare_ids(resource_type))
}

/// Whether the index of `resource_type` files an `i:<id>` term beside `r:<Type/id>` for
/// references of parameters not restricted to one target type. Only AuditEvents do: their
/// terms go to appended runs, where one more posting costs a few bytes. In a resource
/// index each such term put one more posting on a random B-tree page per write (an
/// Observation's `subject` cost two random pages instead of one), so a bare-id query
/// (`subject=p1`) there looks up `r:<Type>/p1` for every type the store holds instead
/// (`search`): a bare id is a local reference, and only stored types can be local.
pub fn indexes_bare_ids(resource_type: &str) -> bool {
    resource_type == "AuditEvent"
}

/// (part parameter, field of the element) pairs of a split parameter.
pub type Parts = &'static [(&'static str, &'static str)];

/// String parameters over a complex element whose parts other string parameters also
/// index: (parameter, element path, [(part parameter, part field)]). Where a resource type
/// has all of them (e.g. Patient's `name` with `family`/`given`, `address` with
/// `address-city`/`-district`/`-state`), the whole-element parameter's index holds only
/// the parts no part parameter indexes, and a search on it reads the postings of all of
/// them (see [`posting_params`]): the same matches with far fewer index terms.
const SPLITS: &[(&str, &str, Parts)] = &[
    ("name", "name", &[("family", "family"), ("given", "given")]),
    (
        "address",
        "address",
        &[
            ("address-city", "city"),
            ("address-district", "district"),
            ("address-state", "state"),
        ],
    ),
];

/// The part (parameter, field) pairs of `param` if `resource_type` splits it.
pub fn split_parts(
    resource_type: &str,
    param: &str,
) -> Option<&'static [(&'static str, &'static str)]> {
    let ps = params_for(resource_type);
    let has = |n: &str, path: &str| {
        ps.iter()
            .any(|d| d.name == n && d.kind == Str && d.paths.len() == 1 && d.paths[0] == path)
    };
    SPLITS.iter().find_map(|(name, path, parts)| {
        (*name == param
            && has(name, path)
            && parts
                .iter()
                .all(|(pn, field)| has(pn, &format!("{path}.{field}"))))
        .then_some(*parts)
    })
}

/// True if `resource_type`'s `name` index leaves family and given to their parameters.
pub fn splits_name(resource_type: &str) -> bool {
    split_parts(resource_type, "name").is_some()
}

/// Parameters whose values on some paths are a subset of another parameter's terms on the
/// same paths: (parameter, covering parameter, covered paths). Where a resource type has
/// both with those paths (see [`covering`]), the parameter's own index leaves the covered
/// paths out and a search on it also reads the covering parameter's postings: the same
/// matches, one index term less per value. Exact because every query term of the
/// parameter is one the covering parameter files for those paths: a `patient` query is
/// always `r:Patient/<id>`, which the unrestricted `subject`/`agent`/`entity` file for
/// every reference; `phone` and `telecom` are the same telecom extraction.
const COVERS: &[(&str, &str, &[&str])] = &[
    ("patient", "subject", &["subject", "for"]),
    ("patient", "agent", &["agent.who"]),
    ("patient", "entity", &["entity.what"]),
    ("phone", "telecom", &["telecom"]),
];

/// The (covering parameter, covered paths) pairs that apply to `def` on `resource_type`.
pub fn covering(
    resource_type: &str,
    def: &ParamDef,
) -> Vec<(&'static str, &'static [&'static str])> {
    let ps = params_for(resource_type);
    COVERS
        .iter()
        .filter(|(name, by, paths)| {
            *name == def.name
                && paths.iter().all(|p| def.paths.contains(p))
                && ps.iter().any(|c| {
                    c.name == *by
                        && paths.iter().all(|p| c.paths.contains(p))
                        && match (def.kind, c.kind) {
                            (Ref(Some(_)), Ref(None)) => true,
                            (a, b) => a == b,
                        }
                })
        })
        .map(|(_, by, paths)| (*by, *paths))
        .collect()
}

/// The parameters whose index postings together answer a search on `param`.
pub fn posting_params(resource_type: &str, param: &'static str) -> Vec<&'static str> {
    let mut out = vec![param];
    if let Some(parts) = split_parts(resource_type, param) {
        out.extend(parts.iter().map(|(pn, _)| *pn));
    }
    if let Some(def) = self::param(resource_type, param) {
        out.extend(covering(resource_type, def).into_iter().map(|(by, _)| by));
    }
    out
}

/// The index terms of `def` over already-selected element values.
fn terms_of_values(def: &ParamDef, vals: Vec<&Value>, bare_ids: bool) -> Vec<String> {
    let mut terms = Vec::new();
    for v in vals {
        match def.kind {
            Token | Telecom => {
                let mut pairs = Vec::new();
                token_pairs(v, &mut pairs);
                for (sys, code) in pairs {
                    let code = if def.kind == Telecom {
                        normalize_telecom(&code)
                    } else {
                        code
                    };
                    if code.is_empty() {
                        continue;
                    }
                    terms.push(cat(&["c:", &code]));
                    if let Some(sys) = sys {
                        terms.push(cat(&["sc:", &sys, "|", &code]));
                    }
                }
            }
            Str => {
                let mut parts = Vec::new();
                string_parts(v, &mut parts);
                for part in parts {
                    let norm = normalize_str(&part);
                    let mut starts: Vec<&str> = vec![norm.as_str()];
                    starts.extend(norm.match_indices(' ').map(|(i, _)| &norm[i + 1..]));
                    for s in starts {
                        for n in 1..=MAX_PREFIX.min(s.chars().count()) {
                            terms.push(cat(&["p:", char_prefix(s, n)]));
                        }
                    }
                }
            }
            Ref(restrict) => {
                for r in references(v, restrict) {
                    reference_terms(&r, bare_ids && restrict.is_none(), &mut terms);
                }
            }
            Date => {
                if let Some((lo, hi)) = date_range(v) {
                    date_terms(&lo, &hi, &mut terms);
                }
            }
        }
    }
    terms.sort();
    terms.dedup();
    terms
}

/// The terms of a normalised reference `Type/id`: `r:Type/id`, and `i:id` when the
/// parameter is not restricted to one target type (a bare-id query can only name the type
/// when it is).
pub(crate) fn reference_terms(r: &str, unrestricted: bool, out: &mut Vec<String>) {
    if unrestricted && let Some((_, id)) = r.split_once('/') {
        out.push(cat(&["i:", id]));
    }
    out.push(cat(&["r:", r]));
}

/// The `y:`, `m:` and `d:` terms of both ends of a day range (open ends are skipped).
pub(crate) fn date_terms(lo: &str, hi: &str, out: &mut Vec<String>) {
    // A single day is both ends: its terms once (callers dedup, but each term of an
    // AuditEvent is blinded before that).
    let ends: &[&str] = if lo == hi { &[lo] } else { &[lo, hi] };
    for &d in ends {
        if d.starts_with("0000") || d.starts_with("9999") {
            continue;
        }
        out.push(cat(&["y:", &d[..4]]));
        out.push(cat(&["m:", &d[..7]]));
        out.push(cat(&["d:", d]));
    }
}

/// How [`all_terms`] indexes one parameter of one resource type (derived from the static
/// tables once per type and thread: [`split_parts`] and [`covering`] allocate).
struct TermPlan {
    def: &'static ParamDef,
    /// `<type>.<param>`, the blind-index field.
    field: String,
    how: PlanKind,
}

enum PlanKind {
    /// The parts are indexed under their own parameters; these fields are removed first.
    Split(Parts),
    /// Only these paths (the others are filed by a covering parameter).
    Paths(Vec<&'static str>),
    /// Every path of the definition.
    All,
}

fn term_plans(resource_type: &str) -> Vec<TermPlan> {
    params_for(resource_type)
        .iter()
        .map(|def| {
            let how = if let Some(parts) = split_parts(resource_type, def.name) {
                PlanKind::Split(parts)
            } else {
                let covered: Vec<&str> = covering(resource_type, def)
                    .into_iter()
                    .flat_map(|(_, paths)| paths.iter().copied())
                    .collect();
                if covered.is_empty() {
                    PlanKind::All
                } else {
                    PlanKind::Paths(
                        def.paths
                            .iter()
                            .copied()
                            .filter(|p| !covered.contains(p))
                            .collect(),
                    )
                }
            };
            TermPlan {
                def,
                field: format!("{resource_type}.{}", def.name),
                how,
            }
        })
        .collect()
}

thread_local! {
    static PLANS: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<Vec<TermPlan>>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Every (blind-index field, term) pair of a resource; the field is `<type>.<param>`.
pub fn all_terms(resource_type: &str, resource: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    each_term(resource_type, resource, |field, term| {
        out.push((field.to_string(), term))
    });
    out
}

/// Calls `f` with each (field, term) pair [`all_terms`] returns, in its order, without
/// copying the field name once per term.
pub fn each_term(resource_type: &str, resource: &Value, mut f: impl FnMut(&str, String)) {
    let plans = PLANS.with(|cell| {
        if let Some(p) = cell.borrow().get(resource_type) {
            return p.clone();
        }
        let p = std::rc::Rc::new(term_plans(resource_type));
        cell.borrow_mut()
            .insert(resource_type.to_string(), p.clone());
        p
    });
    let bare_ids = indexes_bare_ids(resource_type);
    for plan in plans.iter() {
        let def = plan.def;
        let terms = match &plan.how {
            PlanKind::Split(parts) => {
                // The parts are indexed under their own parameters.
                let stripped: Vec<Value> = values(def, resource)
                    .into_iter()
                    .map(|v| match v {
                        Value::Object(m) => {
                            let mut m = m.clone();
                            for (_, field) in parts.iter() {
                                m.remove(*field);
                            }
                            Value::Object(m)
                        }
                        other => other.clone(),
                    })
                    .collect();
                terms_of_values(def, stripped.iter().collect(), bare_ids)
            }
            PlanKind::All => terms_of_values(def, values(def, resource), bare_ids),
            PlanKind::Paths(paths) => {
                let mut vals = Vec::new();
                for path in paths {
                    collect(resource, path, &mut vals);
                }
                terms_of_values(def, vals, bare_ids)
            }
        };
        for t in terms {
            f(&plan.field, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:rw:nid", "value": "1199780012345678"}],
            "name": [{"family": "Uwimana", "given": ["Marie-Claire", "Aimée"]}],
            "gender": "female",
            "birthDate": "1990-05-17",
            "telecom": [{"system": "phone", "value": "+250 788 123 456"}],
            "address": [{"city": "Kigali", "district": "Gasabo"}],
            "managingOrganization": {"reference": "Organization/chuk"}
        })
    }

    /// The walk `collect` made before it went depth first: one list of values per path
    /// segment, arrays flattened at every step.
    fn collect_by_segment<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
        let mut cur = vec![root];
        for seg in path.split('.') {
            let mut next = Vec::new();
            for v in cur {
                match v.get(seg) {
                    Some(Value::Array(items)) if v.is_object() => next.extend(items.iter()),
                    Some(other) if v.is_object() => next.push(other),
                    _ => {}
                }
            }
            cur = next;
        }
        cur
    }

    /// JSON values built from two member names, arrays (nested ones too), strings and
    /// numbers, so paths over them often pass objects, arrays and arrays of arrays.
    fn json_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u8>().prop_map(|n| json!(n)),
            "[ab]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 96, 4, |inner| {
            let name = prop_oneof![Just("a"), Just("b")];
            prop_oneof![
                1 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                3 => proptest::collection::vec((name, inner), 1..3).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// `collect` finds the values, in the order, that the walk segment by segment finds.
        #[test]
        fn collect_walks_as_segment_by_segment(
            root in json_tree(),
            segs in proptest::collection::vec(prop_oneof![Just("a"), Just("b")], 1..4),
        ) {
            let path = segs.join(".");
            let mut got = Vec::new();
            collect(&root, &path, &mut got);
            prop_assert_eq!(got, collect_by_segment(&root, &path));
        }
    }

    /// `member` answers as `Value::get` for small and large objects and for non-objects.
    #[test]
    fn member_matches_get() {
        let small = json!({"a": 1, "b": {"c": 2}});
        let large = Value::Object((0..40).map(|i| (format!("k{i}"), json!(i))).collect());
        for (v, name) in [
            (&small, "a"),
            (&small, "b"),
            (&small, "z"),
            (&large, "k0"),
            (&large, "k39"),
            (&large, "k40"),
            (&json!([1, 2]), "a"),
            (&json!("a"), "a"),
        ] {
            assert_eq!(member(v, name), v.get(name), "{name} in {v}");
        }
    }

    /// A day is one end: its three terms once, so an AuditEvent blinds no term twice. A
    /// range files both ends; open ends none.
    #[test]
    fn date_terms_of_a_day_a_range_and_open_ends() {
        let mut t = Vec::new();
        date_terms("2026-12-05", "2026-12-05", &mut t);
        assert_eq!(t, ["y:2026", "m:2026-12", "d:2026-12-05"]);
        t.clear();
        date_terms("2026-12-01", "2026-12-31", &mut t);
        assert_eq!(
            t,
            [
                "y:2026",
                "m:2026-12",
                "d:2026-12-01",
                "y:2026",
                "m:2026-12",
                "d:2026-12-31"
            ]
        );
        t.clear();
        date_terms("0000-01-01", "2026-12-31", &mut t);
        assert_eq!(t, ["y:2026", "m:2026-12", "d:2026-12-31"]);
    }

    #[test]
    fn person_name_index_leaves_family_and_given_to_their_params() {
        assert!(splits_name("Patient") && splits_name("Practitioner"));
        assert!(!splits_name("Organization") && !splits_name("Location"));
        let mut p = patient();
        p["name"][0]["text"] = json!("Mme Uwimana");
        let all = all_terms("Patient", &p);
        let name: Vec<&str> = all
            .iter()
            .filter(|(f, _)| f == "Patient.name")
            .map(|(_, t)| t.as_str())
            .collect();
        assert!(
            name.contains(&"p:mme") && name.contains(&"p:uwimana"),
            "{name:?}"
        );
        assert!(
            !name.contains(&"p:aimee") && !name.contains(&"p:marie"),
            "{name:?}"
        );
        assert!(all.contains(&("Patient.given".into(), "p:aimee".into())));
        assert_eq!(
            posting_params("Patient", "name"),
            ["name", "family", "given"]
        );
        assert_eq!(posting_params("Organization", "name"), ["name"]);
        assert_eq!(posting_params("Patient", "family"), ["family"]);
        assert_eq!(
            posting_params("Patient", "address"),
            [
                "address",
                "address-city",
                "address-district",
                "address-state"
            ]
        );
        let addr: Vec<&str> = all
            .iter()
            .filter(|(f, _)| f == "Patient.address")
            .map(|(_, t)| t.as_str())
            .collect();
        assert!(!addr.contains(&"p:kigali"), "{addr:?}");
        assert!(all.contains(&("Patient.address-city".into(), "p:kigali".into())));
    }

    #[test]
    fn covered_parameters_leave_their_terms_to_the_covering_one() {
        let obs = json!({"subject": {"reference": "Patient/p1"}});
        let all = all_terms("Observation", &obs);
        assert!(all.contains(&("Observation.subject".into(), "r:Patient/p1".into())));
        assert!(
            !all.iter().any(|(f, _)| f == "Observation.patient"),
            "{all:?}"
        );
        assert_eq!(
            posting_params("Observation", "patient"),
            ["patient", "subject"]
        );
        // Consent has no `subject`: its `patient` is filed as before.
        let consent = json!({"patient": {"reference": "Patient/p1"}});
        assert!(
            all_terms("Consent", &consent)
                .contains(&("Consent.patient".into(), "r:Patient/p1".into()))
        );
        assert_eq!(posting_params("Consent", "patient"), ["patient"]);
        // A `patient` path `subject` does not cover keeps its own terms.
        let claim = json!({"patient": {"reference": "Patient/p2"}});
        assert!(
            all_terms("Claim", &claim).contains(&("Claim.patient".into(), "r:Patient/p2".into()))
        );
        let p = patient();
        let all = all_terms("Patient", &p);
        assert!(!all.iter().any(|(f, _)| f == "Patient.phone"), "{all:?}");
        assert_eq!(posting_params("Patient", "phone"), ["phone", "telecom"]);
        assert_eq!(
            posting_params("AuditEvent", "patient"),
            ["patient", "agent", "entity"]
        );
        let ae = json!({"entity": [{"what": {"reference": "Patient/p9"}}]});
        assert!(
            !all_terms("AuditEvent", &ae)
                .iter()
                .any(|(f, _)| f == "AuditEvent.patient")
        );
    }

    fn terms(ty: &str, name: &str, v: &Value) -> Vec<String> {
        index_terms(ty, param(ty, name).unwrap(), v)
    }

    #[test]
    fn patient_identifier_tokens() {
        let t = terms("Patient", "identifier", &patient());
        assert!(t.contains(&"c:1199780012345678".into()));
        assert!(t.contains(&"sc:urn:rw:nid|1199780012345678".into()));
        assert!(!t.iter().any(|x| x.starts_with("s:")));
    }

    #[test]
    fn names_are_prefix_indexed_without_accents() {
        let t = terms("Patient", "given", &patient());
        for want in [
            "p:m",
            "p:marie",
            "p:marie claire",
            "p:claire",
            "p:aimee",
            "p:aim",
        ] {
            assert!(t.contains(&want.to_string()), "{want} missing from {t:?}");
        }
        assert!(!t.iter().any(|x| x.contains('é')));
        let fam = terms("Patient", "family", &patient());
        assert!(fam.contains(&"p:uwimana".into()));
        assert!(!fam.contains(&"p:marie".into()));
        let name = terms("Patient", "name", &patient());
        assert!(name.contains(&"p:uwi".into()) && name.contains(&"p:aimee".into()));
    }

    #[test]
    fn long_strings_are_capped() {
        let v = json!({"name": [{"family": "Nyirabahizi-Mukamurenzi"}]});
        let t = terms("Patient", "family", &v);
        assert!(t.iter().all(|x| x.chars().count() <= 2 + MAX_PREFIX));
        assert!(
            t.contains(
                &"p:mukamurenzi"
                    .chars()
                    .take(2 + MAX_PREFIX)
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn dates_gender_telecom_address() {
        let v = patient();
        let d = terms("Patient", "birthdate", &v);
        assert_eq!(d, vec!["d:1990-05-17", "m:1990-05", "y:1990"]);
        assert_eq!(terms("Patient", "gender", &v), vec!["c:female"]);
        assert!(terms("Patient", "telecom", &v).contains(&"c:+250788123456".into()));
        assert!(terms("Patient", "address-district", &v).contains(&"p:gasabo".into()));
        assert!(terms("Patient", "address-city", &v).contains(&"p:kig".into()));
        assert!(terms("Patient", "organization", &v).contains(&"r:Organization/chuk".into()));
    }

    #[test]
    fn clinical_params() {
        let obs = json!({
            "resourceType": "Observation", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "http://x/fhir/Encounter/e1/_history/2"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectivePeriod": {"start": "2024-02-01T10:00:00Z", "end": "2024-02-03"}
        });
        assert!(terms("Observation", "patient", &obs).contains(&"r:Patient/p1".into()));
        // Bare-id terms only in the audit log (`indexes_bare_ids`).
        assert_eq!(terms("Observation", "subject", &obs), vec!["r:Patient/p1"]);
        let ae = json!({"resourceType": "AuditEvent", "entity": [{"what": {"reference": "Observation/o1"}}]});
        assert_eq!(
            terms("AuditEvent", "entity", &ae),
            vec!["i:o1", "r:Observation/o1"]
        );
        assert_eq!(
            terms("Observation", "encounter", &obs),
            vec!["r:Encounter/e1"]
        );
        assert!(terms("Observation", "code", &obs).contains(&"sc:http://loinc.org|8867-4".into()));
        assert_eq!(terms("Observation", "status", &obs), vec!["c:final"]);
        let d = terms("Observation", "date", &obs);
        assert!(d.contains(&"d:2024-02-01".into()) && d.contains(&"d:2024-02-03".into()));
        // A Group subject is not a `patient`.
        let grp = json!({"subject": {"reference": "Group/g"}});
        assert!(terms("Observation", "patient", &grp).is_empty());
    }

    #[test]
    fn other_types() {
        let loc = json!({"resourceType": "Location", "name": "Maternity", "partOf": {"reference": "Location/h1"},
            "type": [{"coding": [{"system": "s", "code": "HOSP"}]}], "identifier": [{"value": "L1"}]});
        assert!(terms("Location", "partof", &loc).contains(&"r:Location/h1".into()));
        assert!(terms("Location", "type", &loc).contains(&"sc:s|HOSP".into()));
        assert!(terms("Location", "name", &loc).contains(&"p:mat".into()));
        let consent = json!({"patient": {"reference": "Patient/p"}, "status": "active",
            "provision": {"actor": [{"reference": {"reference": "Practitioner/d1"}}]}});
        assert!(terms("Consent", "actor", &consent).contains(&"r:Practitioner/d1".into()));
        let ae = json!({"recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Device/hexa"}}],
            "entity": [{"what": {"reference": "Patient/p9"}}]});
        assert!(terms("AuditEvent", "patient", &ae).contains(&"r:Patient/p9".into()));
        assert!(terms("AuditEvent", "agent", &ae).contains(&"r:Device/hexa".into()));
        assert!(terms("AuditEvent", "date", &ae).contains(&"d:2024-01-01".into()));
        let prov = json!({"target": [{"reference": "Patient/p9/_history/3"}]});
        assert!(terms("Provenance", "target", &prov).contains(&"r:Patient/p9".into()));
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_str("  Ngoga  Jean-Baptiste "),
            "ngoga jean baptiste"
        );
        assert_eq!(normalize_str("Hélène D'Arc"), "helene d arc");
        assert_eq!(normalize_telecom("+250 (788) 12-34"), "+2507881234");
        assert_eq!(
            normalize_reference("https://h/fhir/Patient/1/_history/4").as_deref(),
            Some("Patient/1")
        );
        assert_eq!(normalize_reference("1"), None);
        assert_eq!(
            date_str_range("2020").unwrap(),
            ("2020-01-01".into(), "2020-12-31".into())
        );
        assert_eq!(
            date_str_range("2020-02-03T04:05:06Z").unwrap().0,
            "2020-02-03"
        );
        assert!(date_str_range("20x0").is_none());
        assert!(date_str_range("2020-02-03X").is_none());
    }
}
