//! Terminology operations over the CodeSystem, ValueSet and ConceptMap resources in the
//! store: `CodeSystem/$lookup`, `CodeSystem/$validate-code`, `ValueSet/$validate-code`,
//! `ValueSet/$expand` and `ConceptMap/$translate`, at type level (`url=`) or on an
//! instance (`ValueSet/{id}/$expand`), by GET (query) or POST (`Parameters`).
//!
//! Every resource is fetched through the store's audited, policy-checked read and search.
//! Expansion supports `compose.include`/`exclude` with explicit concepts, whole code
//! systems, `valueSet` imports and the filters `is-a`, `descendent-of`, `is-not-a`, `=`,
//! `in` (on `concept` or a concept property), and pre-expanded ValueSets
//! (`expansion.contains`). It is bounded: at most [`MAX_EXPANSION`] concepts and
//! [`MAX_VALUE_SETS`] ValueSets per request, else 422 `too-costly`.

use std::collections::{BTreeMap, HashSet};

use hexa_actors::store::{Record, time};
use hyper::StatusCode;
use serde_json::{Value, json};

use super::operations::OpParams;
use super::outcome::{ApiError, Op};
use super::{ApiResult, Call, Interaction, Req, Resp, fhir_json};

/// Most concepts one expansion may hold.
pub const MAX_EXPANSION: usize = 10_000;
/// Most ValueSets one expansion may import (directly or transitively).
pub const MAX_VALUE_SETS: usize = 32;
/// Default page size of `$expand` (`count`).
const DEFAULT_EXPAND_COUNT: usize = 1000;

/// Entry point from the router.
pub async fn operation(
    c: &Call<'_>,
    r: &Req,
    ty: &str,
    id: Option<&str>,
    op: &str,
) -> ApiResult<Resp> {
    c.allow(ty, Interaction::Read)?;
    let p = OpParams::from_request(c, r)?;
    let out = match (ty, op) {
        ("CodeSystem", "$lookup") => lookup(c, &p, id).await?,
        ("CodeSystem", "$validate-code") => cs_validate(c, &p, id).await?,
        ("ValueSet", "$validate-code") => vs_validate(c, &p, id).await?,
        ("ValueSet", "$expand") => expand(c, &p, id).await?,
        ("ConceptMap", "$translate") => translate(c, &p, id).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                "unknown-operation",
                format!("{op} is not an operation on {ty}; see /fhir/metadata"),
            ));
        }
    };
    Ok(fhir_json(StatusCode::OK, &out))
}

fn not_found(code: &'static str, msg: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", code, msg)
}

fn unprocessable(code: &'static str, msg: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not-supported", code, msg)
}

fn too_costly(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too-costly",
        "expansion-too-large",
        msg,
    )
}

/// The current version of `ty` with canonical `url` (`url|version` accepted), if any.
async fn by_url(
    c: &Call<'_>,
    ty: &str,
    url: &str,
    version: Option<&str>,
) -> ApiResult<Option<Value>> {
    let (url, pinned) = match url.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (url, None),
    };
    let mut q = vec![("url".to_string(), url.to_string())];
    if let Some(v) = version.or(pinned) {
        q.push(("version".into(), v.to_string()));
    }
    q.push(("_sort".into(), "-_lastUpdated".into()));
    q.push(("_count".into(), "1".into()));
    let page = c
        .store()
        .search(c.ctx, ty, &q)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    Ok(page.items.into_iter().next().map(|r| r.resource))
}

/// Reads `ty/id` (404/410 as for a read).
async fn by_id(c: &Call<'_>, ty: &str, id: &str) -> ApiResult<Value> {
    let rec: Record = c
        .store()
        .read(c.ctx, ty, id)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    if rec.deleted {
        return Err(ApiError::new(
            StatusCode::GONE,
            "deleted",
            "deleted",
            format!("{ty}/{id} is deleted"),
        ));
    }
    Ok(rec.resource)
}

/// The resource an operation works on: the instance, the `resource_param` given inline,
/// or the one named by the `url_param` canonical.
async fn subject(
    c: &Call<'_>,
    p: &OpParams,
    ty: &str,
    id: Option<&str>,
    url_param: &str,
    resource_param: &str,
) -> ApiResult<Value> {
    if let Some(id) = id {
        return by_id(c, ty, id).await;
    }
    if let Some(res) = p.resource(resource_param, ty)? {
        return Ok(res.clone());
    }
    let url = p.str(url_param)?.ok_or_else(|| {
        ApiError::invalid(
            "bad-parameters",
            format!("name the {ty} with `{url_param}` (or call it on an instance)"),
        )
    })?;
    by_url(c, ty, url, None).await?.ok_or_else(|| {
        not_found(
            "unknown-canonical",
            format!("no {ty} with url {url} is in this store"),
        )
    })
}

// ---------------------------------------------------------------- code systems

/// One concept of a code system with its ancestors (for hierarchy filters).
#[derive(Debug, Clone)]
struct FlatConcept<'a> {
    code: &'a str,
    display: Option<&'a str>,
    ancestors: Vec<&'a str>,
    def: &'a Value,
}

fn flatten(cs: &Value) -> Vec<FlatConcept<'_>> {
    fn walk<'a>(list: &'a Value, anc: &mut Vec<&'a str>, out: &mut Vec<FlatConcept<'a>>) {
        for c in list.as_array().into_iter().flatten() {
            let Some(code) = c.get("code").and_then(Value::as_str) else {
                continue;
            };
            out.push(FlatConcept {
                code,
                display: c.get("display").and_then(Value::as_str),
                ancestors: anc.clone(),
                def: c,
            });
            if let Some(children) = c.get("concept") {
                anc.push(code);
                walk(children, anc, out);
                anc.pop();
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = cs.get("concept") {
        walk(list, &mut Vec::new(), &mut out);
    }
    out
}

fn case_sensitive(cs: &Value) -> bool {
    cs.get("caseSensitive")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

fn find<'a>(flat: &'a [FlatConcept<'a>], cs: &Value, code: &str) -> Option<&'a FlatConcept<'a>> {
    let cs_sens = case_sensitive(cs);
    flat.iter().find(|f| {
        if cs_sens {
            f.code == code
        } else {
            f.code.eq_ignore_ascii_case(code)
        }
    })
}

/// A coding to check: system (if given), code, display (if given).
type Coded = (Option<String>, String, Option<String>);

/// `(system, code, display)` to check, from `code`+`system`, `coding` or
/// `codeableConcept` (every coding of it).
fn codings(
    p: &OpParams,
    system_param: &str,
    default_system: Option<&str>,
) -> ApiResult<Vec<Coded>> {
    let mut out = Vec::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(code) = p.str("code")? {
        let system = p
            .str(system_param)?
            .map(str::to_string)
            .or(default_system.map(str::to_string));
        out.push((
            system,
            code.to_string(),
            p.str("display")?.map(str::to_string),
        ));
    }
    if let Some(coding) = p.object("coding")? {
        let code = s(coding, "code").ok_or_else(|| {
            ApiError::invalid("bad-parameters", "the coding parameter has no code")
        })?;
        out.push((s(coding, "system"), code, s(coding, "display")));
    }
    if let Some(cc) = p.object("codeableConcept")? {
        for coding in cc
            .get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(32)
        {
            if let Some(code) = s(coding, "code") {
                out.push((s(coding, "system"), code, s(coding, "display")));
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            "bad-parameters",
            "give a code (with its system), a coding or a codeableConcept",
        ));
    }
    Ok(out)
}

fn parameters(parts: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": parts})
}

async fn lookup(c: &Call<'_>, p: &OpParams, id: Option<&str>) -> ApiResult<Value> {
    p.only(&[
        "code",
        "system",
        "version",
        "coding",
        "date",
        "displayLanguage",
        "property",
    ])?;
    let (system, code) = match (p.str("code")?, p.object("coding")?) {
        (Some(code), _) => (p.str("system")?.map(str::to_string), code.to_string()),
        (None, Some(coding)) => (
            coding
                .get("system")
                .and_then(Value::as_str)
                .map(str::to_string),
            coding
                .get("code")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("bad-parameters", "the coding has no code"))?
                .to_string(),
        ),
        (None, None) => {
            return Err(ApiError::invalid(
                "bad-parameters",
                "$lookup needs `code` and `system`, or a `coding`",
            ));
        }
    };
    let cs = match (id, &system) {
        (Some(id), _) => by_id(c, "CodeSystem", id).await?,
        (None, Some(sys)) => by_url(c, "CodeSystem", sys, p.str("version")?)
            .await?
            .ok_or_else(|| {
                not_found(
                    "unknown-code-system",
                    format!("the code system {sys} is not in this store"),
                )
            })?,
        (None, None) => {
            return Err(ApiError::invalid(
                "bad-parameters",
                "$lookup needs the `system` the code is from",
            ));
        }
    };
    let flat = flatten(&cs);
    let concept = find(&flat, &cs, &code).ok_or_else(|| {
        not_found(
            "unknown-code",
            format!(
                "code `{code}` is not in the code system {}",
                cs.get("url").and_then(Value::as_str).unwrap_or("(no url)")
            ),
        )
    })?;
    let name = cs
        .get("name")
        .or_else(|| cs.get("title"))
        .or_else(|| cs.get("url"))
        .cloned()
        .unwrap_or(json!("unnamed"));
    let mut parts = vec![json!({"name": "name", "valueString": name})];
    if let Some(v) = cs.get("version").and_then(Value::as_str) {
        parts.push(json!({"name": "version", "valueString": v}));
    }
    parts.push(json!({"name": "display", "valueString": concept.display.unwrap_or(concept.code)}));
    if let Some(d) = concept.def.get("definition").and_then(Value::as_str) {
        parts.push(json!({"name": "property", "part": [
            {"name": "code", "valueCode": "definition"},
            {"name": "value", "valueString": d},
        ]}));
    }
    if let Some(parent) = concept.ancestors.last() {
        parts.push(json!({"name": "property", "part": [
            {"name": "code", "valueCode": "parent"},
            {"name": "value", "valueCode": parent},
        ]}));
    }
    for d in concept
        .def
        .get("designation")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut part = Vec::new();
        if let Some(l) = d.get("language") {
            part.push(json!({"name": "language", "valueCode": l}));
        }
        if let Some(u) = d.get("use") {
            part.push(json!({"name": "use", "valueCoding": u}));
        }
        if let Some(v) = d.get("value") {
            part.push(json!({"name": "value", "valueString": v}));
        }
        parts.push(json!({"name": "designation", "part": part}));
    }
    for prop in concept
        .def
        .get("property")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(code) = prop.get("code") else {
            continue;
        };
        let mut part = vec![json!({"name": "code", "valueCode": code})];
        if let Some((k, v)) = prop
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        {
            let mut value = serde_json::Map::new();
            value.insert("name".into(), json!("value"));
            value.insert(k.clone(), v.clone());
            part.push(Value::Object(value));
        }
        parts.push(json!({"name": "property", "part": part}));
    }
    Ok(parameters(parts))
}

fn validation_result(ok: bool, message: Option<String>, display: Option<&str>) -> Value {
    let mut parts = vec![json!({"name": "result", "valueBoolean": ok})];
    if let Some(m) = message {
        parts.push(json!({"name": "message", "valueString": m}));
    }
    if let Some(d) = display {
        parts.push(json!({"name": "display", "valueString": d}));
    }
    parameters(parts)
}

async fn cs_validate(c: &Call<'_>, p: &OpParams, id: Option<&str>) -> ApiResult<Value> {
    p.only(&[
        "url",
        "codeSystem",
        "code",
        "version",
        "display",
        "coding",
        "codeableConcept",
        "date",
        "abstract",
        "displayLanguage",
    ])?;
    let cs = subject(c, p, "CodeSystem", id, "url", "codeSystem").await?;
    let url = cs.get("url").and_then(Value::as_str).map(str::to_string);
    let flat = flatten(&cs);
    let mut last_msg = None;
    for (system, code, display) in codings(p, "url", url.as_deref())? {
        if system.is_some() && system != url {
            last_msg = Some(format!(
                "the coding's system {} is not this code system",
                system.unwrap_or_default()
            ));
            continue;
        }
        match find(&flat, &cs, &code) {
            None => last_msg = Some(format!("code `{code}` is not in the code system")),
            Some(f) => {
                let canon = f.display.unwrap_or(f.code);
                if let Some(d) = display
                    && f.display.is_some()
                    && d != canon
                {
                    return Ok(validation_result(
                        false,
                        Some(format!("the display `{d}` is not the display of `{code}`")),
                        Some(canon),
                    ));
                }
                return Ok(validation_result(true, None, Some(canon)));
            }
        }
    }
    Ok(validation_result(false, last_msg, None))
}

// ---------------------------------------------------------------- value sets

/// One expanded concept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Concept {
    system: String,
    code: String,
    display: Option<String>,
}

/// The code systems and value sets an expansion needs, fetched before it runs.
#[derive(Default)]
struct Sources {
    systems: BTreeMap<String, Option<Value>>,
    value_sets: BTreeMap<String, Option<Value>>,
}

fn compose_parts(vs: &Value) -> impl Iterator<Item = &Value> {
    let c = vs.get("compose");
    ["include", "exclude"]
        .into_iter()
        .flat_map(move |k| c.and_then(|c| c.get(k)).and_then(Value::as_array))
        .flatten()
}

/// Fetches every ValueSet `root` imports (transitively) and every code system it needs.
async fn gather(c: &Call<'_>, root: &Value) -> ApiResult<Sources> {
    let mut src = Sources::default();
    let mut queue: Vec<Value> = vec![root.clone()];
    while let Some(vs) = queue.pop() {
        let mut want_vs = Vec::new();
        for inc in compose_parts(&vs) {
            // Whole systems are needed; listed concepts take their displays from it.
            if let Some(sys) = inc.get("system").and_then(Value::as_str)
                && !src.systems.contains_key(sys)
            {
                let found = by_url(c, "CodeSystem", sys, None).await?;
                src.systems.insert(sys.to_string(), found);
            }
            for u in inc
                .get("valueSet")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                want_vs.push(u.to_string());
            }
        }
        for u in want_vs {
            if src.value_sets.contains_key(&u) {
                continue;
            }
            if src.value_sets.len() >= MAX_VALUE_SETS {
                return Err(too_costly(format!(
                    "the expansion imports more than {MAX_VALUE_SETS} value sets"
                )));
            }
            let found = by_url(c, "ValueSet", &u, None).await?;
            if let Some(v) = &found {
                queue.push(v.clone());
            }
            src.value_sets.insert(u, found);
        }
    }
    Ok(src)
}

/// Does concept `f` of code system `cs` pass one `compose.include.filter`?
fn filter_ok(f: &FlatConcept<'_>, filter: &Value) -> Result<bool, ApiError> {
    let s = |k: &str| filter.get(k).and_then(Value::as_str).unwrap_or("");
    let (prop, op, value) = (s("property"), s("op"), s("value"));
    if prop == "concept" || prop == "code" {
        return match op {
            "is-a" => Ok(f.code == value || f.ancestors.contains(&value)),
            "descendent-of" => Ok(f.ancestors.contains(&value)),
            "is-not-a" => Ok(f.code != value && !f.ancestors.contains(&value)),
            "=" => Ok(f.code == value),
            "in" => Ok(value.split(',').any(|v| v.trim() == f.code)),
            _ => Err(unprocessable(
                "unsupported-filter",
                format!("filter op `{op}` on `{prop}` is not supported"),
            )),
        };
    }
    let prop_values: Vec<String> = f
        .def
        .get("property")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("code").and_then(Value::as_str) == Some(prop))
        .filter_map(|p| {
            p.as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| match v {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    other => other.to_string(),
                })
        })
        .collect();
    match op {
        "=" => Ok(prop_values.iter().any(|v| v == value)),
        "in" => Ok(prop_values
            .iter()
            .any(|v| value.split(',').any(|x| x.trim() == v))),
        "exists" => Ok((value == "true") != prop_values.is_empty()),
        _ => Err(unprocessable(
            "unsupported-filter",
            format!("filter op `{op}` on property `{prop}` is not supported"),
        )),
    }
}

/// The concepts of one include/exclude element.
fn expand_part(
    inc: &Value,
    src: &Sources,
    depth: usize,
    seen: &mut HashSet<String>,
) -> ApiResult<Vec<Concept>> {
    let mut system_part: Option<Vec<Concept>> = None;
    if let Some(sys) = inc.get("system").and_then(Value::as_str) {
        let cs = src.systems.get(sys).and_then(Option::as_ref);
        let listed = inc.get("concept").and_then(Value::as_array);
        let v = match listed.filter(|a| !a.is_empty()) {
            Some(list) => {
                let flat = cs.map(flatten).unwrap_or_default();
                list.iter()
                    .filter_map(|c| {
                        let code = c.get("code").and_then(Value::as_str)?;
                        let display = c
                            .get("display")
                            .and_then(Value::as_str)
                            .or_else(|| {
                                flat.iter().find(|f| f.code == code).and_then(|f| f.display)
                            })
                            .map(str::to_string);
                        Some(Concept {
                            system: sys.to_string(),
                            code: code.to_string(),
                            display,
                        })
                    })
                    .collect()
            }
            None => {
                let cs = cs.ok_or_else(|| {
                    unprocessable(
                        "unknown-code-system",
                        format!(
                            "the expansion needs the code system {sys}, which is not in this store"
                        ),
                    )
                })?;
                let filters: Vec<&Value> = inc
                    .get("filter")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .collect();
                let mut out = Vec::new();
                for f in flatten(cs) {
                    let mut ok = true;
                    for flt in &filters {
                        ok &= filter_ok(&f, flt)?;
                    }
                    if ok {
                        out.push(Concept {
                            system: sys.to_string(),
                            code: f.code.to_string(),
                            display: f.display.map(str::to_string),
                        });
                        if out.len() > MAX_EXPANSION {
                            return Err(too_costly(format!(
                                "the expansion has more than {MAX_EXPANSION} concepts"
                            )));
                        }
                    }
                }
                out
            }
        };
        system_part = Some(v);
    }
    let mut result = system_part;
    for u in inc
        .get("valueSet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let vs = src
            .value_sets
            .get(u)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                unprocessable(
                    "unknown-value-set",
                    format!("the expansion imports the value set {u}, which is not in this store"),
                )
            })?;
        if !seen.insert(u.to_string()) {
            return Err(unprocessable(
                "value-set-cycle",
                format!("the value set {u} imports itself"),
            ));
        }
        let imported = expand_vs(vs, src, depth + 1, seen)?;
        seen.remove(u);
        result = Some(match result {
            None => imported,
            Some(prev) => {
                let keep: HashSet<(&str, &str)> = imported
                    .iter()
                    .map(|c| (c.system.as_str(), c.code.as_str()))
                    .collect();
                prev.into_iter()
                    .filter(|c| keep.contains(&(c.system.as_str(), c.code.as_str())))
                    .collect()
            }
        });
    }
    Ok(result.unwrap_or_default())
}

/// Expands one ValueSet (sorted by system and code, without duplicates).
fn expand_vs(
    vs: &Value,
    src: &Sources,
    depth: usize,
    seen: &mut HashSet<String>,
) -> ApiResult<Vec<Concept>> {
    if depth > MAX_VALUE_SETS {
        return Err(too_costly("value set imports nest too deeply".into()));
    }
    let compose = vs.get("compose");
    if compose.is_none() {
        // A pre-expanded value set.
        let mut out = Vec::new();
        fn walk(list: Option<&Value>, out: &mut Vec<Concept>) {
            for c in list.and_then(Value::as_array).into_iter().flatten() {
                if let (Some(system), Some(code)) = (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                ) {
                    out.push(Concept {
                        system: system.into(),
                        code: code.into(),
                        display: c.get("display").and_then(Value::as_str).map(str::to_string),
                    });
                }
                walk(c.get("contains"), out);
            }
        }
        walk(
            vs.get("expansion").and_then(|e| e.get("contains")),
            &mut out,
        );
        if out.is_empty() && vs.get("expansion").is_none() {
            return Err(unprocessable(
                "cannot-expand",
                "the value set has neither compose nor expansion".into(),
            ));
        }
        return Ok(out);
    }
    let part = |k: &str| -> Vec<&Value> {
        compose
            .and_then(|c| c.get(k))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect()
    };
    let mut set: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    for inc in part("include") {
        for c in expand_part(inc, src, depth, seen)? {
            set.entry((c.system, c.code)).or_insert(c.display);
            if set.len() > MAX_EXPANSION {
                return Err(too_costly(format!(
                    "the expansion has more than {MAX_EXPANSION} concepts"
                )));
            }
        }
    }
    for exc in part("exclude") {
        for c in expand_part(exc, src, depth, seen)? {
            set.remove(&(c.system, c.code));
        }
    }
    Ok(set
        .into_iter()
        .map(|((system, code), display)| Concept {
            system,
            code,
            display,
        })
        .collect())
}

async fn expand_value_set(c: &Call<'_>, vs: &Value) -> ApiResult<Vec<Concept>> {
    let src = gather(c, vs).await?;
    let mut seen = HashSet::new();
    if let Some(u) = vs.get("url").and_then(Value::as_str) {
        seen.insert(u.to_string());
    }
    expand_vs(vs, &src, 0, &mut seen)
}

async fn expand(c: &Call<'_>, p: &OpParams, id: Option<&str>) -> ApiResult<Value> {
    p.only(&[
        "url",
        "valueSet",
        "valueSetVersion",
        "filter",
        "count",
        "offset",
    ])?;
    let vs =
        match (id, p.str("url")?, p.str("valueSetVersion")?) {
            (None, Some(url), Some(ver)) => by_url(c, "ValueSet", url, Some(ver))
                .await?
                .ok_or_else(|| {
                    not_found(
                        "unknown-canonical",
                        format!("no ValueSet {url} version {ver} is in this store"),
                    )
                })?,
            _ => subject(c, p, "ValueSet", id, "url", "valueSet").await?,
        };
    let mut all = expand_value_set(c, &vs).await?;
    let filter = p.str("filter")?.map(str::to_lowercase);
    if let Some(f) = &filter {
        all.retain(|c| {
            c.code.to_lowercase().contains(f)
                || c.display
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(f))
        });
    }
    let count = p
        .uint("count")?
        .unwrap_or(DEFAULT_EXPAND_COUNT)
        .min(MAX_EXPANSION);
    let offset = p.uint("offset")?.unwrap_or(0);
    let total = all.len();
    let contains: Vec<Value> = all
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|c| {
            let mut v = json!({"system": c.system, "code": c.code});
            if let Some(d) = c.display {
                v["display"] = json!(d);
            }
            v
        })
        .collect();
    let mut params = Vec::new();
    if let Some(f) = &filter {
        params.push(json!({"name": "filter", "valueString": f}));
    }
    params.push(json!({"name": "count", "valueInteger": count}));
    params.push(json!({"name": "offset", "valueInteger": offset}));
    let mut out = json!({"resourceType": "ValueSet", "status": vs.get("status").cloned().unwrap_or(json!("active"))});
    for k in ["id", "url", "version", "name", "title"] {
        if let Some(v) = vs.get(k) {
            out[k] = v.clone();
        }
    }
    let identifier =
        hexa_actors::store::new_id().map_err(|e| ApiError::from_store(&e, Op::Read))?;
    let mut expansion = json!({
        "identifier": format!("urn:uuid:{identifier}"),
        "timestamp": time::instant(time::now_millis()),
        "total": total,
        "offset": offset,
        "parameter": params,
    });
    if !contains.is_empty() {
        expansion["contains"] = Value::Array(contains);
    }
    out["expansion"] = expansion;
    Ok(out)
}

async fn vs_validate(c: &Call<'_>, p: &OpParams, id: Option<&str>) -> ApiResult<Value> {
    p.only(&[
        "url",
        "valueSet",
        "valueSetVersion",
        "code",
        "system",
        "systemVersion",
        "display",
        "coding",
        "codeableConcept",
        "date",
        "abstract",
        "displayLanguage",
    ])?;
    let vs = subject(c, p, "ValueSet", id, "url", "valueSet").await?;
    let members = expand_value_set(c, &vs).await?;
    let mut last_msg = None;
    for (system, code, display) in codings(p, "system", None)? {
        let hit = members
            .iter()
            .find(|m| m.code == code && system.as_ref().is_none_or(|s| *s == m.system));
        match hit {
            None => {
                last_msg = Some(format!(
                    "`{}{code}` is not in the value set",
                    system.map(|s| format!("{s}|")).unwrap_or_default()
                ))
            }
            Some(m) => {
                let canon = m.display.as_deref().unwrap_or(&m.code);
                if let Some(d) = display
                    && m.display.is_some()
                    && d != canon
                {
                    return Ok(validation_result(
                        false,
                        Some(format!("the display `{d}` is not the display of `{code}`")),
                        Some(canon),
                    ));
                }
                return Ok(validation_result(true, None, Some(canon)));
            }
        }
    }
    Ok(validation_result(false, last_msg, None))
}

// ---------------------------------------------------------------- concept maps

fn canonical_of(v: &Value, uri: &str, canon: &str) -> Option<String> {
    v.get(uri)
        .or_else(|| v.get(canon))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn translate(c: &Call<'_>, p: &OpParams, id: Option<&str>) -> ApiResult<Value> {
    p.only(&[
        "url",
        "conceptMap",
        "conceptMapVersion",
        "code",
        "system",
        "version",
        "source",
        "coding",
        "codeableConcept",
        "target",
        "targetsystem",
        "reverse",
    ])?;
    if p.bool("reverse")?.unwrap_or(false) {
        return Err(ApiError::not_supported(
            "unsupported-parameter",
            "reverse translation is not supported",
        ));
    }
    let source_vs = p.str("source")?;
    let target_vs = p.str("target")?;
    let target_system = p.str("targetsystem")?;
    let maps: Vec<Value> =
        if id.is_some() || p.get("url").is_some() || p.get("conceptMap").is_some() {
            let m = match (id, p.str("url")?, p.str("conceptMapVersion")?) {
                (None, Some(url), Some(ver)) => by_url(c, "ConceptMap", url, Some(ver))
                    .await?
                    .ok_or_else(|| {
                        not_found(
                            "unknown-canonical",
                            format!("no ConceptMap {url} version {ver} is in this store"),
                        )
                    })?,
                _ => subject(c, p, "ConceptMap", id, "url", "conceptMap").await?,
            };
            vec![m]
        } else {
            // No map named: every ConceptMap in the store whose source/target fit.
            let page = c
                .store()
                .search(
                    c.ctx,
                    "ConceptMap",
                    &[("_count".to_string(), "1000".to_string())],
                )
                .await
                .map_err(|e| ApiError::from_store(&e, Op::Read))?;
            page.items
                .into_iter()
                .map(|r| r.resource)
                .filter(|m| {
                    source_vs.is_none_or(|s| {
                        canonical_of(m, "sourceUri", "sourceCanonical").as_deref() == Some(s)
                    }) && target_vs.is_none_or(|t| {
                        canonical_of(m, "targetUri", "targetCanonical").as_deref() == Some(t)
                    })
                })
                .collect()
        };
    let mut matches = Vec::new();
    let inputs = codings(p, "system", None)?;
    for map in &maps {
        let map_url = map.get("url").and_then(Value::as_str).unwrap_or_default();
        for g in map
            .get("group")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let gs = g.get("source").and_then(Value::as_str);
            let gt = g.get("target").and_then(Value::as_str);
            if target_system.is_some_and(|t| gt != Some(t)) {
                continue;
            }
            for (system, code, _) in &inputs {
                if system.is_some() && gs.is_some() && system.as_deref() != gs {
                    continue;
                }
                let mut mapped = false;
                for el in g
                    .get("element")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("code").and_then(Value::as_str) == Some(code.as_str()))
                {
                    mapped = true;
                    for t in el
                        .get("target")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let eq = t
                            .get("equivalence")
                            .and_then(Value::as_str)
                            .unwrap_or("equivalent");
                        let mut concept = json!({});
                        if let Some(s) = gt {
                            concept["system"] = json!(s);
                        }
                        if let Some(tc) = t.get("code") {
                            concept["code"] = tc.clone();
                        }
                        if let Some(d) = t.get("display") {
                            concept["display"] = d.clone();
                        }
                        matches.push((eq.to_string(), concept, map_url.to_string()));
                    }
                }
                if !mapped && let Some(u) = g.get("unmapped") {
                    match u.get("mode").and_then(Value::as_str) {
                        Some("provided") => {
                            let mut concept = json!({"code": code});
                            if let Some(s) = gt {
                                concept["system"] = json!(s);
                            }
                            matches.push(("equal".into(), concept, map_url.to_string()));
                        }
                        Some("fixed") => {
                            let mut concept = json!({});
                            if let Some(s) = gt {
                                concept["system"] = json!(s);
                            }
                            if let Some(tc) = u.get("code") {
                                concept["code"] = tc.clone();
                            }
                            if let Some(d) = u.get("display") {
                                concept["display"] = d.clone();
                            }
                            matches.push(("inexact".into(), concept, map_url.to_string()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let ok = matches
        .iter()
        .any(|(eq, _, _)| eq != "unmatched" && eq != "disjoint");
    let mut parts = vec![json!({"name": "result", "valueBoolean": ok})];
    if !ok {
        parts.push(
            json!({"name": "message", "valueString": if maps.is_empty() {
                "no ConceptMap in this store applies".to_string()
            } else {
                "no mapping found for the code".to_string()
            }}),
        );
    }
    for (eq, concept, source) in matches {
        parts.push(json!({"name": "match", "part": [
            {"name": "equivalence", "valueCode": eq},
            {"name": "concept", "valueCoding": concept},
            {"name": "source", "valueUri": source},
        ]}));
    }
    Ok(parameters(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs() -> Value {
        json!({"resourceType": "CodeSystem", "url": "urn:cs", "concept": [
            {"code": "a", "display": "A", "concept": [
                {"code": "a1", "display": "A one", "property": [{"code": "kind", "valueCode": "x"}]},
                {"code": "a2"}
            ]},
            {"code": "b", "display": "B"}
        ]})
    }

    #[test]
    fn hierarchy_filters() {
        let cs = cs();
        let flat = flatten(&cs);
        assert_eq!(flat.len(), 4);
        let codes = |flt: Value| -> Vec<&str> {
            flat.iter()
                .filter(|f| filter_ok(f, &flt).unwrap())
                .map(|f| f.code)
                .collect()
        };
        assert_eq!(
            codes(json!({"property": "concept", "op": "is-a", "value": "a"})),
            ["a", "a1", "a2"]
        );
        assert_eq!(
            codes(json!({"property": "concept", "op": "descendent-of", "value": "a"})),
            ["a1", "a2"]
        );
        assert_eq!(
            codes(json!({"property": "concept", "op": "is-not-a", "value": "a"})),
            ["b"]
        );
        assert_eq!(
            codes(json!({"property": "kind", "op": "=", "value": "x"})),
            ["a1"]
        );
        assert!(
            filter_ok(
                &flat[0],
                &json!({"property": "concept", "op": "regex", "value": "."})
            )
            .is_err()
        );
    }

    #[test]
    fn compose_include_exclude_and_imports() {
        let mut src = Sources::default();
        src.systems.insert("urn:cs".into(), Some(cs()));
        src.value_sets.insert(
            "urn:vs:ab".into(),
            Some(
                json!({"resourceType": "ValueSet", "url": "urn:vs:ab", "compose": {"include": [
                    {"system": "urn:cs", "concept": [{"code": "a"}, {"code": "b"}]}
                ]}}),
            ),
        );
        let vs = json!({"resourceType": "ValueSet", "compose": {
            "include": [{"system": "urn:cs"}],
            "exclude": [{"system": "urn:cs", "concept": [{"code": "a2"}]}]
        }});
        let got: Vec<String> = expand_vs(&vs, &src, 0, &mut HashSet::new())
            .unwrap()
            .into_iter()
            .map(|c| c.code)
            .collect();
        assert_eq!(got, ["a", "a1", "b"]);
        // Intersection of a system filter and an imported value set.
        let vs = json!({"resourceType": "ValueSet", "compose": {"include": [
            {"system": "urn:cs", "filter": [{"property": "concept", "op": "is-a", "value": "a"}],
             "valueSet": ["urn:vs:ab"]}
        ]}});
        let got = expand_vs(&vs, &src, 0, &mut HashSet::new()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].display.as_deref(), Some("A"));
        // A missing code system is a 422, not an empty expansion.
        let vs =
            json!({"resourceType": "ValueSet", "compose": {"include": [{"system": "urn:none"}]}});
        assert_eq!(
            expand_vs(&vs, &src, 0, &mut HashSet::new())
                .unwrap_err()
                .status,
            422
        );
        // A self-import is refused.
        let mut src2 = Sources::default();
        let cyc = json!({"resourceType": "ValueSet", "url": "urn:vs:c", "compose": {"include": [{"valueSet": ["urn:vs:c"]}]}});
        src2.value_sets.insert("urn:vs:c".into(), Some(cyc.clone()));
        let mut seen = HashSet::from(["urn:vs:c".to_string()]);
        assert!(expand_vs(&cyc, &src2, 0, &mut seen).is_err());
    }
}
