//! `_include` and `_revinclude` (with `:iterate`) of searches.
//!
//! `_include=Observation:patient[:Patient]` adds the resources the matches reference
//! through a reference search parameter; `_revinclude=Provenance:target` adds the
//! resources that reference the matches. Every included record is read or searched
//! through the store (so it passes `policy::authorize_read` and is audited) and only for
//! types the token's scopes allow; a record the store refuses (forbidden, deleted, gone)
//! or the scopes do not cover is silently left out: an include never fails the search.
//! `:iterate` applies the spec again to what was included, at most [`MAX_ROUNDS`] times.
//! At most [`MAX_INCLUDED`] records are added per search.

use std::collections::HashSet;

use hexa_actors::handle::{BatchEntry, BatchOutcome};
use hexa_actors::store::params::{self, ParamDef, ParamKind};
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{Record, StoreError, component_for};

use super::outcome::ApiError;
use super::{Call, Interaction};

/// Most records one search may include.
pub const MAX_INCLUDED: usize = 1000;
/// Rounds of `:iterate`.
pub const MAX_ROUNDS: usize = 3;
/// Targets per reverse-include search.
const REV_CHUNK: usize = 100;

/// One parsed `_include` / `_revinclude` value.
#[derive(Debug, Clone)]
pub struct IncludeSpec {
    /// The resource type holding the reference (`Observation` in `Observation:patient`).
    pub source: String,
    /// The reference search parameter.
    pub param: &'static ParamDef,
    /// Target type restriction (`Observation:subject:Patient`).
    pub target: Option<String>,
    /// `_revinclude` rather than `_include`.
    pub rev: bool,
    /// `:iterate` (also applied to included resources).
    pub iterate: bool,
}

fn bad(msg: String) -> ApiError {
    ApiError::not_supported("unsupported-include", msg)
}

impl IncludeSpec {
    /// Parses `name=value` for a search of `search_type`.
    pub fn parse(name: &str, value: &str, search_type: &str) -> Result<IncludeSpec, ApiError> {
        let (rev, iterate) = match name {
            "_include" => (false, false),
            "_include:iterate" => (false, true),
            "_revinclude" => (true, false),
            "_revinclude:iterate" => (true, true),
            _ => return Err(bad(format!("{name} is not an include parameter"))),
        };
        let parts: Vec<&str> = value.split(':').collect();
        let (source, pname, target) = match parts.as_slice() {
            [s, p] => (*s, *p, None),
            [s, p, t] => (*s, *p, Some(t.to_string())),
            _ => {
                return Err(bad(format!(
                    "{name}={value}: expected Type:parameter or Type:parameter:TargetType"
                )));
            }
        };
        if pname == "*" {
            return Err(bad(format!(
                "{name}={value}: wildcard includes are not supported"
            )));
        }
        component_for(source).map_err(|_| bad(format!("{name}={value}: unknown type {source}")))?;
        if let Some(t) = &target {
            component_for(t).map_err(|_| bad(format!("{name}={value}: unknown type {t}")))?;
        }
        let param = params::param(source, pname)
            .filter(|d| matches!(d.kind, ParamKind::Reference(_)))
            .ok_or_else(|| {
                bad(format!(
                    "{name}={value}: `{pname}` is not a reference search parameter of {source}"
                ))
            })?;
        if let (ParamKind::Reference(Some(fixed)), Some(t)) = (param.kind, &target)
            && fixed != t
        {
            return Err(bad(format!(
                "{name}={value}: `{pname}` only refers to {fixed}"
            )));
        }
        if !rev && !iterate && source != search_type {
            return Err(bad(format!(
                "{name}={value}: _include names the searched type ({search_type}); use :iterate for others"
            )));
        }
        Ok(IncludeSpec {
            source: source.to_string(),
            param,
            target,
            rev,
            iterate,
        })
    }

    /// The one type this parameter may point to, if fixed.
    fn target_type(&self) -> Option<&str> {
        match (self.param.kind, &self.target) {
            (_, Some(t)) => Some(t.as_str()),
            (ParamKind::Reference(Some(t)), None) => Some(t),
            _ => None,
        }
    }

    /// Whether a record of type `ty` may be referenced through this spec.
    fn may_target(&self, ty: &str) -> bool {
        self.target_type().is_none_or(|t| t == ty)
    }
}

fn key(r: &Record) -> String {
    format!("{}/{}", r.resource_type, r.id)
}

/// The records `specs` add to `matches`, in the order found, without duplicates and
/// without the matches themselves.
pub async fn resolve(call: &Call<'_>, matches: &[Record], specs: &[IncludeSpec]) -> Vec<Record> {
    let mut seen: HashSet<String> = matches.iter().map(key).collect();
    let mut out: Vec<Record> = Vec::new();
    let mut frontier: Vec<Record> = matches.to_vec();
    for round in 0..MAX_ROUNDS {
        let active: Vec<&IncludeSpec> = specs.iter().filter(|s| round == 0 || s.iterate).collect();
        if active.is_empty() || frontier.is_empty() || out.len() >= MAX_INCLUDED {
            break;
        }
        let mut found = Vec::new();
        // Forward includes: read what the frontier references.
        let mut wanted: Vec<(String, String)> = Vec::new();
        for spec in active.iter().filter(|s| !s.rev) {
            for r in frontier.iter().filter(|r| r.resource_type == spec.source) {
                for v in params::values(spec.param, &r.resource) {
                    for reference in params::references(v, spec.target_type()) {
                        if seen.contains(&reference) {
                            continue;
                        }
                        let Some((ty, id)) = reference.split_once('/') else {
                            continue;
                        };
                        if component_for(ty).is_err()
                            || !call.caller.grants.allows(ty, Interaction::Read)
                        {
                            continue;
                        }
                        seen.insert(reference.clone());
                        wanted.push((ty.to_string(), id.to_string()));
                    }
                }
            }
        }
        wanted.truncate(MAX_INCLUDED - out.len());
        if !wanted.is_empty() {
            let entries = wanted
                .into_iter()
                .map(|(resource_type, id)| BatchEntry::Read { resource_type, id })
                .collect();
            for o in call.store().batch(call.ctx, entries).await {
                match o {
                    Ok(BatchOutcome::Read(rec)) if !rec.deleted => found.push(rec),
                    Ok(_) => {}
                    Err(e) => log_dropped(&e),
                }
            }
        }
        // Reverse includes: search the resources that reference the frontier.
        for spec in active.iter().filter(|s| s.rev) {
            if !call.caller.grants.allows(&spec.source, Interaction::Search) {
                continue;
            }
            let targets: Vec<String> = frontier
                .iter()
                .filter(|r| spec.may_target(&r.resource_type))
                .map(key)
                .collect();
            for chunk in targets.chunks(REV_CHUNK) {
                let room = MAX_INCLUDED.saturating_sub(out.len() + found.len());
                if room == 0 {
                    break;
                }
                for rec in rev_search(call, spec, chunk, room).await {
                    if seen.insert(key(&rec)) {
                        found.push(rec);
                    }
                }
            }
        }
        found.truncate(MAX_INCLUDED - out.len());
        out.extend(found.iter().cloned());
        frontier = found;
    }
    out
}

/// One reverse-include search over `targets`; if the store refuses it as a whole, each
/// target is searched alone so that one refused record does not hide the others.
async fn rev_search(
    call: &Call<'_>,
    spec: &IncludeSpec,
    targets: &[String],
    room: usize,
) -> Vec<Record> {
    let query = |values: String| -> Option<SearchQuery> {
        let mut q =
            SearchQuery::parse(&spec.source, &[(spec.param.name.to_string(), values)]).ok()?;
        q.count = room;
        Some(q)
    };
    let Some(q) = query(targets.join(",")) else {
        return Vec::new();
    };
    match call.store().search_query(call.ctx, q).await {
        Ok(page) => page.items,
        Err(e) if targets.len() > 1 => {
            log_dropped(&e);
            let entries: Vec<BatchEntry> = targets
                .iter()
                .filter_map(|t| query(t.clone()))
                .map(BatchEntry::Search)
                .collect();
            let mut out = Vec::new();
            for o in call.store().batch(call.ctx, entries).await {
                match o {
                    Ok(BatchOutcome::Searched(p)) => out.extend(p.items),
                    Ok(_) => {}
                    Err(e) => log_dropped(&e),
                }
            }
            out.truncate(room);
            out
        }
        Err(e) => {
            log_dropped(&e);
            Vec::new()
        }
    }
}

fn log_dropped(e: &StoreError) {
    // The error's code only: never the record or the patient it concerns.
    tracing::debug!(code = e.code(), "an included record was left out");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_include_forms() {
        let s = IncludeSpec::parse("_include", "Observation:patient", "Observation").unwrap();
        assert_eq!(s.target_type(), Some("Patient"));
        assert!(!s.rev && !s.iterate);
        let s =
            IncludeSpec::parse("_include", "Observation:subject:Patient", "Observation").unwrap();
        assert_eq!(s.target_type(), Some("Patient"));
        let s = IncludeSpec::parse("_revinclude", "Provenance:target", "Patient").unwrap();
        assert!(s.rev && s.may_target("Patient") && s.may_target("Observation"));
        let s =
            IncludeSpec::parse("_include:iterate", "Patient:organization", "Observation").unwrap();
        assert!(s.iterate);
    }

    #[test]
    fn refuses_bad_includes() {
        for (n, v) in [
            ("_include", "Observation"),
            ("_include", "Observation:*"),
            ("_include", "Observation:code"),
            ("_include", "Observation:nope"),
            ("_include", "Spaceship:patient"),
            ("_include", "Observation:patient:Practitioner"),
            ("_include", "Patient:organization"),
            ("_include", "a:b:c:d"),
            ("_include:recurse", "Observation:patient"),
        ] {
            assert!(IncludeSpec::parse(n, v, "Observation").is_err(), "{n}={v}");
        }
    }
}
