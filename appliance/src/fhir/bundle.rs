//! Bundle `transaction` (atomic: every entry commits or none does; `urn:uuid:` references
//! are rewritten by the store) and `batch` (independent entries, each with its own
//! outcome) posted to `/fhir`.

use super::outcome::{ApiError, Op, status_line};
use super::{
    ApiResult, Call, Interaction, Req, Resp, fhir_json, parse_resource, parse_version_tag,
};
use hexa_actors::handle::{BatchEntry, BatchOutcome};
use hexa_actors::store::engine::{TxEntry, WriteResult};
use hexa_actors::store::search::SearchQuery;
use hyper::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

/// The target of an entry's `request.url`.
enum Target {
    /// `Type` (create, or search with a query).
    Type(String, Option<String>),
    /// `Type/id`.
    Instance(String, String),
}

/// Parses a relative (or absolute, under this base) request URL.
fn parse_url(url: &str, base: &str) -> ApiResult<Target> {
    let u = url.strip_prefix(base).unwrap_or(url);
    let u = u.trim_start_matches('/');
    let (path, q) = match u.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (u, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [ty] => Ok(Target::Type(ty.to_string(), q)),
        [ty, id] if q.is_none() => Ok(Target::Instance(ty.to_string(), id.to_string())),
        _ => Err(ApiError::invalid(
            "bad-bundle-url",
            format!("entry request.url `{url}` is not `Type`, `Type?query` or `Type/id`"),
        )),
    }
}

/// An entry's `request` and `resource`.
struct EntryIn {
    method: String,
    url: String,
    if_match: Option<String>,
    if_none_exist: bool,
    full_url: Option<String>,
    resource: Option<Value>,
}

fn entries_of(bundle: &Value) -> ApiResult<Vec<EntryIn>> {
    let Some(list) = bundle.get("entry") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ApiError::invalid("bad-bundle", "Bundle.entry must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let req = e.get("request").ok_or_else(|| {
                ApiError::invalid("bad-bundle", format!("Bundle.entry[{i}] has no request"))
            })?;
            let s = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(method), Some(url)) = (s("method"), s("url")) else {
                return Err(ApiError::invalid(
                    "bad-bundle",
                    format!("Bundle.entry[{i}].request needs method and url"),
                ));
            };
            Ok(EntryIn {
                method,
                url,
                if_match: s("ifMatch"),
                if_none_exist: req.get("ifNoneExist").is_some(),
                full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
                resource: e.get("resource").cloned(),
            })
        })
        .collect()
}

/// Answers a Bundle posted to `/fhir`.
pub(super) async fn process(c: &Call<'_>, r: &Req, bundle: Value) -> ApiResult<Resp> {
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => transaction(c, r, &bundle).await,
        Some("batch") => batch(c, r, &bundle).await,
        other => Err(ApiError::invalid(
            "bad-bundle-type",
            format!(
                "a Bundle posted to the base must be a transaction or a batch, not {}",
                other.unwrap_or("(no type)")
            ),
        )),
    }
}

fn if_match_of(e: &EntryIn, i: usize) -> ApiResult<Option<u64>> {
    e.if_match
        .as_deref()
        .map(|t| {
            parse_version_tag(t).ok_or_else(|| {
                ApiError::invalid(
                    "bad-if-match",
                    format!("Bundle.entry[{i}].request.ifMatch `{t}` is not an ETag"),
                )
            })
        })
        .transpose()
}

/// Turns one entry into a write; `Ok(None)` for a read or search (batch only).
fn write_entry(c: &Call<'_>, r: &Req, e: &EntryIn, i: usize) -> ApiResult<Option<TxEntry>> {
    if e.if_none_exist {
        return Err(ApiError::not_supported(
            "unsupported-interaction",
            format!("Bundle.entry[{i}]: conditional create inside a Bundle is not supported"),
        ));
    }
    let target = parse_url(&e.url, &r.base)?;
    let body = |ty: &str| -> ApiResult<Value> {
        let res = e.resource.as_ref().ok_or_else(|| {
            ApiError::invalid("bad-bundle", format!("Bundle.entry[{i}] has no resource"))
        })?;
        parse_resource(&serde_json::to_vec(res).unwrap_or_default(), Some(ty))
    };
    match (e.method.as_str(), target) {
        ("POST", Target::Type(ty, None)) => {
            c.allow(&ty, Interaction::Create)?;
            let mut res = body(&ty)?;
            if let Some(o) = res.as_object_mut() {
                o.remove("id");
            }
            Ok(Some(TxEntry::Create {
                resource: res,
                full_url: e.full_url.clone(),
            }))
        }
        ("PUT", Target::Instance(ty, id)) => {
            c.allow(&ty, Interaction::Update)?;
            let mut res = body(&ty)?;
            match res.get("id").and_then(Value::as_str) {
                Some(rid) if rid != id => {
                    return Err(ApiError::invalid(
                        "id-mismatch",
                        format!("Bundle.entry[{i}]: resource id {rid} is not the URL's {id}"),
                    ));
                }
                _ => res["id"] = json!(id),
            }
            Ok(Some(TxEntry::Update {
                resource: res,
                if_match: if_match_of(e, i)?,
            }))
        }
        ("DELETE", Target::Instance(ty, id)) => {
            c.allow(&ty, Interaction::Delete)?;
            Ok(Some(TxEntry::Delete {
                resource_type: ty,
                id,
            }))
        }
        ("GET", _) => Ok(None),
        (m, _) => Err(ApiError::invalid(
            "bad-bundle",
            format!("Bundle.entry[{i}]: {m} {} is not a supported entry", e.url),
        )),
    }
}

/// The response entry for a committed write.
fn written_entry(r: &Req, w: &WriteResult, minimal: bool) -> Value {
    let rec = &w.record;
    let status = if rec.deleted {
        StatusCode::NO_CONTENT
    } else if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = json!({
        "status": status_line(status),
        "etag": format!("W/\"{}\"", rec.version),
        "lastModified": hexa_actors::store::time::instant(rec.last_updated),
    });
    if !rec.deleted {
        resp["location"] = json!(format!(
            "{}/_history/{}",
            format_args!("{}/{}", rec.resource_type, rec.id),
            rec.version
        ));
    }
    let mut e = json!({"response": resp});
    if !rec.deleted {
        e["fullUrl"] = json!(format!("{}/{}/{}", r.base, rec.resource_type, rec.id));
        if !minimal {
            e["resource"] = rec.resource.clone();
        }
    }
    e
}

/// The resource a write entry carries (none for a delete).
fn written_resource(t: &TxEntry) -> Option<&Value> {
    match t {
        TxEntry::Create { resource, .. } | TxEntry::Update { resource, .. } => Some(resource),
        TxEntry::Delete { .. } => None,
    }
}

/// Validates every resource of a transaction (400 names `Bundle.entry[i].resource...`),
/// then their references (422): a `Type/id` written by a PUT of the same transaction
/// counts as existing (`urn:uuid:` references are the store's to resolve).
fn validate_transaction(c: &Call<'_>, tx: &[TxEntry]) -> ApiResult<()> {
    let prefix = |i: usize| format!("Bundle.entry[{i}].resource");
    for (i, t) in tx.iter().enumerate() {
        if let Some(res) = written_resource(t) {
            super::validate::policy(c, res)?;
            super::validate::structure(res, Some(&prefix(i)))?;
        }
    }
    let pending: HashSet<(String, String)> = tx
        .iter()
        .filter_map(|t| match t {
            TxEntry::Update { resource, .. } => Some((
                resource.get("resourceType")?.as_str()?.to_string(),
                resource.get("id")?.as_str()?.to_string(),
            )),
            _ => None,
        })
        .collect();
    for (i, t) in tx.iter().enumerate() {
        if let Some(res) = written_resource(t) {
            super::validate::refs(c, res, Some(&prefix(i)), &pending)?;
        }
    }
    Ok(())
}

async fn transaction(c: &Call<'_>, r: &Req, bundle: &Value) -> ApiResult<Resp> {
    let entries = entries_of(bundle)?;
    let mut tx = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match write_entry(c, r, e, i)? {
            Some(w) => tx.push(w),
            None => {
                return Err(ApiError::not_supported(
                    "unsupported-interaction",
                    format!("Bundle.entry[{i}]: reads are not supported inside a transaction"),
                ));
            }
        }
    }
    if tx.is_empty() {
        return Err(ApiError::invalid(
            "bad-bundle",
            "the transaction has no entries",
        ));
    }
    validate_transaction(c, &tx)?;
    let has_if_match = tx.iter().any(|t| {
        matches!(
            t,
            TxEntry::Update {
                if_match: Some(_),
                ..
            }
        )
    });
    let written = c.store().transaction(c.ctx, tx).await.map_err(|e| {
        ApiError::from_store(
            &e,
            Op::Write {
                if_match: has_if_match,
            },
        )
    })?;
    let minimal = r.minimal();
    let out: Vec<Value> = written
        .iter()
        .map(|w| written_entry(r, w, minimal))
        .collect();
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out}),
    ))
}

fn error_entry(e: &ApiError) -> Value {
    json!({"response": {"status": e.status_line(), "outcome": e.to_outcome()}})
}

async fn batch(c: &Call<'_>, r: &Req, bundle: &Value) -> ApiResult<Resp> {
    let entries = entries_of(bundle)?;
    let mut out: Vec<Option<Value>> = vec![None; entries.len()];
    let mut sent = Vec::new();
    let mut work = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let prepared = match write_entry(c, r, e, i).and_then(|w| {
            if let Some(res) = w.as_ref().and_then(written_resource) {
                super::validate::resource(c, res)?;
            }
            Ok(w)
        }) {
            Ok(Some(w)) => Ok((
                BatchEntry::Write(w),
                Op::Write {
                    if_match: e.if_match.is_some(),
                },
            )),
            Ok(None) => match parse_url(&e.url, &r.base) {
                Ok(Target::Instance(ty, id)) => c.allow(&ty, Interaction::Read).map(|_| {
                    (
                        BatchEntry::Read {
                            resource_type: ty,
                            id,
                        },
                        Op::Read,
                    )
                }),
                Ok(Target::Type(ty, q)) => c.allow(&ty, Interaction::Search).and_then(|_| {
                    let pairs = super::query::form_pairs(q.as_deref().unwrap_or(""));
                    SearchQuery::parse(&ty, &pairs)
                        .map(|q| (BatchEntry::Search(q), Op::Read))
                        .map_err(|e| ApiError::from_store(&e, Op::Read))
                }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match prepared {
            Ok((entry, op)) => {
                sent.push((i, op));
                work.push(entry);
            }
            Err(e) => out[i] = Some(error_entry(&e)),
        }
    }
    let results = c.store().batch(c.ctx, work).await;
    let minimal = r.minimal();
    for ((i, op), res) in sent.into_iter().zip(results) {
        out[i] = Some(match res {
            Ok(BatchOutcome::Written(w)) => written_entry(r, &w, minimal),
            Ok(BatchOutcome::Read(rec)) if rec.deleted => error_entry(&ApiError::new(
                StatusCode::GONE,
                "deleted",
                "deleted",
                format!("{}/{} was deleted", rec.resource_type, rec.id),
            )),
            Ok(BatchOutcome::Read(rec)) => json!({
                "fullUrl": format!("{}/{}/{}", r.base, rec.resource_type, rec.id),
                "resource": rec.resource,
                "response": {
                    "status": status_line(StatusCode::OK),
                    "etag": format!("W/\"{}\"", rec.version),
                },
            }),
            Ok(BatchOutcome::Searched(page)) => {
                let entries: Vec<Value> = page
                    .items
                    .iter()
                    .map(|rec| {
                        json!({
                            "fullUrl": format!("{}/{}/{}", r.base, rec.resource_type, rec.id),
                            "resource": rec.resource,
                            "search": {"mode": "match"},
                        })
                    })
                    .collect();
                let mut b = json!({"resourceType": "Bundle", "type": "searchset"});
                if page.exact {
                    b["total"] = json!(page.total);
                }
                if !entries.is_empty() {
                    b["entry"] = Value::Array(entries);
                }
                json!({"resource": b, "response": {"status": status_line(StatusCode::OK)}})
            }
            Err(e) => error_entry(&ApiError::from_store(&e, op)),
        });
    }
    let out: Vec<Value> = out.into_iter().map(|e| e.unwrap_or(Value::Null)).collect();
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "batch-response", "entry": out}),
    ))
}
