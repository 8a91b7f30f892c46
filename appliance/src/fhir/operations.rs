//! Operations on patients: `Patient/$match` (IHE PDQm ITI-119) and
//! `Patient/{id}/$everything`, and the input handling shared by every operation
//! ([`OpParams`]: a `Parameters` body for POST, the query string for GET).

use hexa_actors::matching::score::{MatchGrade, POSSIBLE_THRESHOLD};
use hexa_actors::store::Record;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::outcome::{ApiError, Op};
use super::{ApiResult, Call, Interaction, Req, Resp, fhir_json, parse_resource};

/// Most `parameter` entries an operation accepts.
const MAX_PARAMS: usize = 64;
/// Default and largest `count` of `$match`.
const MATCH_DEFAULT_COUNT: usize = 10;
const MATCH_MAX_COUNT: usize = 100;
/// Most records `$everything` returns (beyond it the client must search per type).
pub const EVERYTHING_MAX: usize = 5000;

/// An operation's input parameters, in order: the name and the JSON of the `value[x]`
/// (a JSON string for GET parameters) or the `resource`.
#[derive(Debug, Default)]
pub struct OpParams {
    items: Vec<(String, Value)>,
}

impl OpParams {
    /// Reads the parameters of `r`: a `Parameters` resource for POST, the query for GET.
    pub fn from_request(c: &Call<'_>, r: &Req) -> ApiResult<OpParams> {
        let mut items = Vec::new();
        if r.method == Method::POST {
            c.require_json(r)?;
            let p = parse_resource(&r.body, Some("Parameters"))?;
            let list = match p.get("parameter") {
                None => &Vec::new(),
                Some(Value::Array(a)) => a,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "bad-parameters",
                        "Parameters.parameter must be an array",
                    ));
                }
            };
            for e in list {
                let name = e.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid("bad-parameters", "every parameter needs a name")
                })?;
                let value = match e.get("resource") {
                    Some(res) => res.clone(),
                    None => e
                        .as_object()
                        .and_then(|o| {
                            o.iter()
                                .find(|(k, _)| k.starts_with("value"))
                                .map(|(_, v)| v.clone())
                        })
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "bad-parameters",
                                format!("parameter `{name}` has no value[x] or resource"),
                            )
                        })?,
                };
                items.push((name.to_string(), value));
            }
        } else if r.method == Method::GET || r.method == Method::HEAD {
            for (k, v) in &r.query {
                if k != "_format" && k != "_pretty" {
                    items.push((k.clone(), Value::String(v.clone())));
                }
            }
        } else {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "method-not-allowed",
                format!(
                    "{} is not allowed on an operation; use GET or POST",
                    r.method
                ),
            ));
        }
        if items.len() > MAX_PARAMS {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "too-costly",
                "too-many-parameters",
                format!("at most {MAX_PARAMS} parameters are accepted"),
            ));
        }
        Ok(OpParams { items })
    }

    /// Refuses names not in `known` (400), so a misspelt parameter is never ignored.
    pub fn only(&self, known: &[&str]) -> ApiResult<()> {
        match self
            .items
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(ApiError::not_supported(
                "unknown-parameter",
                format!(
                    "parameter `{k}` is not supported here (known: {})",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// The value of `name` (the first, if repeated).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.items.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// A string-typed parameter (`valueString`, `valueUri`, `valueCode`, ...).
    pub fn str(&self, name: &str) -> ApiResult<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= 4096 => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(
                "bad-parameters",
                format!("parameter `{name}` must be a string of at most 4096 characters"),
            )),
        }
    }

    /// A boolean parameter (`valueBoolean`, or `true`/`false` in a query).
    pub fn bool(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(_) => Err(ApiError::invalid(
                "bad-parameters",
                format!("parameter `{name}` must be a boolean"),
            )),
        }
    }

    /// A non-negative integer parameter.
    pub fn uint(&self, name: &str) -> ApiResult<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                Ok(n.as_u64().map(|x| x.min(usize::MAX as u64) as usize))
            }
            Some(Value::String(s)) if s.parse::<usize>().is_ok() => Ok(s.parse().ok()),
            Some(_) => Err(ApiError::invalid(
                "bad-parameters",
                format!("parameter `{name}` must be a non-negative integer"),
            )),
        }
    }

    /// A resource parameter of type `ty` (POST only).
    pub fn resource(&self, name: &str, ty: &str) -> ApiResult<Option<&Value>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.get("resourceType").and_then(Value::as_str) == Some(ty) => Ok(Some(v)),
            Some(_) => Err(ApiError::invalid(
                "bad-parameters",
                format!("parameter `{name}` must be a {ty} resource"),
            )),
        }
    }

    /// A JSON object parameter (`valueCoding`, `valueCodeableConcept`).
    pub fn object(&self, name: &str) -> ApiResult<Option<&Value>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(v)),
            Some(_) => Err(ApiError::invalid(
                "bad-parameters",
                format!("parameter `{name}` must be a complex value (Coding or CodeableConcept)"),
            )),
        }
    }
}

/// `POST Patient/$match`: a `Parameters` with `resource` (a Patient), optional
/// `onlyCertainMatches` and `count`; answers a searchset Bundle of scored candidates, best
/// first, each with `search.score` and the `match-grade` extension.
pub async fn patient_match(c: &Call<'_>, r: &Req) -> ApiResult<Resp> {
    c.allow("Patient", Interaction::Search)?;
    if r.method != Method::POST {
        return Ok(super::method_not_allowed(&r.method, "POST"));
    }
    let p = OpParams::from_request(c, r)?;
    p.only(&["resource", "onlyCertainMatches", "count", "onlySingleMatch"])?;
    let patient = p.resource("resource", "Patient")?.ok_or_else(|| {
        ApiError::invalid(
            "bad-parameters",
            "$match needs a `resource` parameter holding a Patient",
        )
    })?;
    let only_certain = p.bool("onlyCertainMatches")?.unwrap_or(false);
    let only_single = p.bool("onlySingleMatch")?.unwrap_or(false);
    let count = p
        .uint("count")?
        .unwrap_or(MATCH_DEFAULT_COUNT)
        .clamp(1, MATCH_MAX_COUNT);
    let mut found = c
        .store()
        .match_patients(c.ctx, patient.clone(), POSSIBLE_THRESHOLD, count)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    if only_certain {
        found.retain(|m| m.score.grade == MatchGrade::Certain);
    }
    if only_single && found.len() > 1 {
        // PDQm: when a single match is asked for and several qualify, return none unless
        // exactly one is certain.
        let certain: Vec<_> = found
            .iter()
            .filter(|m| m.score.grade == MatchGrade::Certain)
            .cloned()
            .collect();
        found = if certain.len() == 1 {
            certain
        } else {
            Vec::new()
        };
    }
    let base = &r.base;
    let entries: Vec<Value> = found
        .iter()
        .map(|m| {
            json!({
                "fullUrl": format!("{base}/Patient/{}", m.record.id),
                "resource": m.record.resource,
                "search": {
                    "extension": [{
                        "url": MatchGrade::EXTENSION_URL,
                        "valueCode": m.score.grade.code(),
                    }],
                    "mode": "match",
                    "score": (m.score.score * 10_000.0).round() / 10_000.0,
                },
            })
        })
        .collect();
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/Patient/$match")}],
    });
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    Ok(fhir_json(StatusCode::OK, &b))
}

/// `GET Patient/{id}/$everything`: the Patient and its compartment (the types the
/// token's scopes allow reading), as a searchset Bundle.
pub async fn everything(c: &Call<'_>, r: &Req, id: &str) -> ApiResult<Resp> {
    c.allow("Patient", Interaction::Read)?;
    if r.method != Method::GET && r.method != Method::HEAD && r.method != Method::POST {
        return Ok(super::method_not_allowed(&r.method, "GET, HEAD, POST"));
    }
    if r.method == Method::POST && !r.body.is_empty() {
        OpParams::from_request(c, r)?.only(&[])?;
    } else if let Some((k, _)) = r
        .query
        .iter()
        .find(|(k, _)| k != "_format" && k != "_pretty")
    {
        return Err(ApiError::not_supported(
            "unknown-parameter",
            format!("parameter `{k}` of $everything is not supported"),
        ));
    }
    let recs = c
        .store()
        .everything(c.ctx, id)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    if recs.first().is_some_and(|p| p.deleted) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "deleted",
            "deleted",
            format!("Patient/{id} is deleted"),
        ));
    }
    let recs: Vec<&Record> = recs
        .iter()
        .filter(|rec| {
            !rec.deleted
                && c.caller
                    .grants
                    .allows(&rec.resource_type, Interaction::Read)
        })
        .collect();
    if recs.len() > EVERYTHING_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-costly",
            "too-many-results",
            format!(
                "Patient/{id} has more than {EVERYTHING_MAX} records; search them per type with patient={id}"
            ),
        ));
    }
    let base = &r.base;
    let entries: Vec<Value> = recs
        .iter()
        .map(|rec| {
            json!({
                "fullUrl": format!("{base}/{}/{}", rec.resource_type, rec.id),
                "resource": rec.resource,
                "search": {"mode": if rec.resource_type == "Patient" && rec.id == id { "match" } else { "include" }},
            })
        })
        .collect();
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/Patient/{id}/$everything")}],
    });
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    Ok(fhir_json(StatusCode::OK, &b))
}
