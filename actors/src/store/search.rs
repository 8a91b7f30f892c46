//! FHIR search over the blind indexes.
//!
//! A query is parsed into clauses (AND between parameters, OR between comma-separated
//! values). Clauses that the index can answer exactly or as a superset are looked up by
//! their blinded terms and intersected; clauses that need exact semantics the index cannot
//! give (string values longer than [`params::MAX_PREFIX`], `:exact`, `:contains`, date
//! comparisons, periods) are post-filtered on the opened resources with the same extraction
//! code. Without any indexable clause the type's current pointers are scanned.

use std::collections::BTreeSet;

use heed::RoTxn;
use serde_json::Value;

use super::error::{StoreError, StoreResult};
use super::params::{self, ParamDef, ParamKind};
use super::route::{Component, component_for};
use super::{Record, SearchPage, Store, audit, format, time};

/// A filter over search hits: `(txn, id, record if already loaded) -> keep?`.
pub(crate) type SearchFilter<'a> =
    &'a mut dyn FnMut(&RoTxn, &str, Option<&Record>) -> StoreResult<bool>;

/// Default page size.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page size.
pub const MAX_COUNT: usize = 1000;

/// Comparison prefix of a date value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// eq (default).
    Eq,
    /// ne.
    Ne,
    /// gt.
    Gt,
    /// lt.
    Lt,
    /// ge.
    Ge,
    /// le.
    Le,
    /// sa (starts after).
    Sa,
    /// eb (ends before).
    Eb,
}

/// One parameter of a query: OR over `values`.
#[derive(Debug, Clone)]
pub struct Clause {
    /// Parameter definition.
    pub def: &'static ParamDef,
    /// Modifier after `:` (`exact`, `contains`, or a reference type).
    pub modifier: Option<String>,
    /// The comma-separated values.
    pub values: Vec<String>,
}

/// Sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    /// `_id`.
    Id,
    /// `_lastUpdated`.
    LastUpdated,
    /// A search parameter (sorted by its first value).
    Param(&'static ParamDef),
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Resource type searched.
    pub resource_type: String,
    /// Parameter clauses (ANDed).
    pub clauses: Vec<Clause>,
    /// `_id` values (ORed), if given.
    pub ids: Option<Vec<String>>,
    /// `_lastUpdated` comparisons (ANDed).
    pub last_updated: Vec<(Prefix, String, String)>,
    /// Page size.
    pub count: usize,
    /// Results skipped.
    pub offset: usize,
    /// Sort keys with descending flags.
    pub sort: Vec<(SortKey, bool)>,
    /// `_total=none`: the client does not need the total. A search in id order then stops
    /// once it has the page and one hit past it ([`SearchPage::exact`] is false).
    pub no_total: bool,
}

/// Splits a date search value into its prefix and day range.
pub fn parse_date(v: &str) -> StoreResult<(Prefix, String, String)> {
    let (prefix, rest) = match v.get(..2) {
        Some("eq") => (Prefix::Eq, &v[2..]),
        Some("ne") => (Prefix::Ne, &v[2..]),
        Some("gt") => (Prefix::Gt, &v[2..]),
        Some("lt") => (Prefix::Lt, &v[2..]),
        Some("ge") => (Prefix::Ge, &v[2..]),
        Some("le") => (Prefix::Le, &v[2..]),
        Some("sa") => (Prefix::Sa, &v[2..]),
        Some("eb") => (Prefix::Eb, &v[2..]),
        _ => (Prefix::Eq, v),
    };
    let (lo, hi) = params::date_str_range(rest)
        .ok_or_else(|| StoreError::Invalid(format!("`{v}` is not a FHIR date search value")))?;
    Ok((prefix, lo, hi))
}

/// FHIR date comparison of a target range against a search range (day precision).
pub fn date_cmp(prefix: Prefix, tlo: &str, thi: &str, lo: &str, hi: &str) -> bool {
    match prefix {
        Prefix::Eq => tlo >= lo && thi <= hi,
        Prefix::Ne => !(tlo >= lo && thi <= hi),
        Prefix::Gt => thi > hi,
        Prefix::Lt => tlo < lo,
        Prefix::Ge => thi >= lo,
        Prefix::Le => tlo <= hi,
        Prefix::Sa => tlo > hi,
        Prefix::Eb => thi < lo,
    }
}

impl SearchQuery {
    /// Parses `(name, value)` query pairs for `resource_type`. Result-shaping parameters the
    /// HTTP layer handles (`_include`, `_revinclude`, `_format`, `_summary`, `_elements`)
    /// are accepted and ignored here.
    pub fn parse(resource_type: &str, pairs: &[(String, String)]) -> StoreResult<Self> {
        component_for(resource_type)?;
        let mut q = SearchQuery {
            resource_type: resource_type.to_string(),
            clauses: Vec::new(),
            ids: None,
            last_updated: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            sort: Vec::new(),
            no_total: false,
        };
        for (name, value) in pairs {
            let bad_num = || StoreError::Invalid(format!("{name}={value} is not a number"));
            match name.as_str() {
                "_count" => {
                    q.count = value
                        .parse::<usize>()
                        .map_err(|_| bad_num())?
                        .min(MAX_COUNT)
                }
                "_offset" => q.offset = value.parse().map_err(|_| bad_num())?,
                "_id" => q
                    .ids
                    .get_or_insert_with(Vec::new)
                    .extend(value.split(',').map(str::to_string)),
                "_lastUpdated" => q.last_updated.push(parse_date(value)?),
                "_sort" => {
                    for s in value.split(',').filter(|s| !s.is_empty()) {
                        let (desc, key) = match s.strip_prefix('-') {
                            Some(k) => (true, k),
                            None => (false, s),
                        };
                        let key = match key {
                            "_id" => SortKey::Id,
                            "_lastUpdated" => SortKey::LastUpdated,
                            k => SortKey::Param(params::param(resource_type, k).ok_or_else(
                                || {
                                    StoreError::UnsupportedSearch(format!(
                                        "_sort={k} on {resource_type}"
                                    ))
                                },
                            )?),
                        };
                        q.sort.push((key, desc));
                    }
                }
                "_total" => match value.as_str() {
                    "none" => q.no_total = true,
                    "estimate" | "accurate" => q.no_total = false,
                    _ => {
                        return Err(StoreError::Invalid(format!(
                            "_total={value}: expected none, estimate or accurate"
                        )));
                    }
                },
                "_include" | "_revinclude" | "_format" | "_summary" | "_elements" | "_pretty" => {}
                n => {
                    let (pname, modifier) = match n.split_once(':') {
                        Some((p, m)) => (p, Some(m.to_string())),
                        None => (n, None),
                    };
                    let def = params::param(resource_type, pname).ok_or_else(|| {
                        StoreError::UnsupportedSearch(format!(
                            "parameter `{pname}` on {resource_type}"
                        ))
                    })?;
                    if let Some(m) = &modifier {
                        let ok = match def.kind {
                            ParamKind::Str => m == "exact" || m == "contains",
                            ParamKind::Reference(_) => {
                                m.starts_with(|c: char| c.is_ascii_uppercase())
                            }
                            _ => false,
                        };
                        if !ok {
                            return Err(StoreError::UnsupportedSearch(format!(
                                "modifier `:{m}` on `{pname}`"
                            )));
                        }
                    }
                    let values: Vec<String> = value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .collect();
                    if values.is_empty() {
                        return Err(StoreError::Invalid(format!("empty value for `{n}`")));
                    }
                    if def.kind == ParamKind::Date {
                        for v in &values {
                            parse_date(v)?;
                        }
                    }
                    q.clauses.push(Clause {
                        def,
                        modifier,
                        values,
                    });
                }
            }
        }
        Ok(q)
    }

    /// Convenience: parse from `&str` pairs.
    pub fn from_pairs(resource_type: &str, pairs: &[(&str, &str)]) -> StoreResult<Self> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Self::parse(resource_type, &owned)
    }

    /// The query as a string (recorded in the AuditEvent).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for c in &self.clauses {
            let name = match &c.modifier {
                Some(m) => format!("{}:{m}", c.def.name),
                None => c.def.name.to_string(),
            };
            parts.push(format!("{name}={}", c.values.join(",")));
        }
        if let Some(ids) = &self.ids {
            parts.push(format!("_id={}", ids.join(",")));
        }
        format!("{}?{}", self.resource_type, parts.join("&"))
    }
}

/// The index term for one clause value and whether the result must be post-filtered.
/// `None` term: the index cannot help.
fn value_term(clause: &Clause, value: &str) -> (Option<String>, bool) {
    let def = clause.def;
    match def.kind {
        ParamKind::Token | ParamKind::Telecom => {
            let norm = |c: &str| {
                if def.kind == ParamKind::Telecom {
                    params::normalize_telecom(c)
                } else {
                    c.to_string()
                }
            };
            match value.split_once('|') {
                None => (Some(format!("c:{}", norm(value))), false),
                Some(("", code)) => (Some(format!("c:{}", norm(code))), true),
                Some((_, "")) => (None, true),
                Some((sys, code)) => (Some(format!("sc:{sys}|{}", norm(code))), false),
            }
        }
        ParamKind::Str => {
            let norm = params::normalize_str(value);
            match clause.modifier.as_deref() {
                Some("contains") => (None, true),
                _ if norm.is_empty() => (None, true),
                Some(_) => (
                    Some(format!(
                        "p:{}",
                        params::char_prefix(&norm, params::MAX_PREFIX)
                    )),
                    true,
                ),
                None => {
                    let long = norm.chars().count() > params::MAX_PREFIX;
                    (
                        Some(format!(
                            "p:{}",
                            params::char_prefix(&norm, params::MAX_PREFIX)
                        )),
                        long,
                    )
                }
            }
        }
        ParamKind::Reference(restrict) => match reference_query(clause, value, restrict) {
            RefQuery::Full(r) => (Some(format!("r:{r}")), false),
            RefQuery::Id(id) => (Some(format!("i:{id}")), false),
        },
        ParamKind::Date => match parse_date(value) {
            Ok((Prefix::Eq, lo, hi)) => {
                let term = if lo == hi {
                    format!("d:{lo}")
                } else if lo[..7] == hi[..7] {
                    format!("m:{}", &lo[..7])
                } else {
                    format!("y:{}", &lo[..4])
                };
                (Some(term), true)
            }
            _ => (None, true),
        },
    }
}

/// The index terms of one clause value in the index of `ty` (any of them matches): the
/// [`value_term`], except that a bare id of a reference parameter not restricted to one
/// target type becomes `r:<T>/<id>` for every type `T` the store holds where that index
/// files no `i:<id>` terms ([`params::indexes_bare_ids`]).
fn value_terms(ty: &str, clause: &Clause, value: &str) -> (Option<Vec<String>>, bool) {
    if let ParamKind::Reference(restrict) = clause.def.kind
        && !params::indexes_bare_ids(ty)
        && let RefQuery::Id(id) = reference_query(clause, value, restrict)
    {
        let terms = super::route::stored_types()
            .map(|t| format!("r:{t}/{id}"))
            .collect();
        return (Some(terms), false);
    }
    let (term, post) = value_term(clause, value);
    (term.map(|t| vec![t]), post)
}

enum RefQuery {
    Full(String),
    Id(String),
}

fn reference_query(clause: &Clause, value: &str, restrict: Option<&str>) -> RefQuery {
    if let Some(r) = params::normalize_reference(value) {
        return RefQuery::Full(r);
    }
    match (clause.modifier.as_deref(), restrict) {
        (Some(t), _) => RefQuery::Full(format!("{t}/{value}")),
        (None, Some(t)) => RefQuery::Full(format!("{t}/{value}")),
        (None, None) => RefQuery::Id(value.to_string()),
    }
}

/// Post-filter: does `resource` satisfy the clause (any of its values)?
pub fn clause_matches(clause: &Clause, resource: &Value) -> bool {
    let def = clause.def;
    let vals = params::values(def, resource);
    clause.values.iter().any(|q| match def.kind {
        ParamKind::Token | ParamKind::Telecom => {
            let mut pairs = Vec::new();
            for v in &vals {
                params::token_pairs(v, &mut pairs);
            }
            let norm = |c: &str| {
                if def.kind == ParamKind::Telecom {
                    params::normalize_telecom(c)
                } else {
                    c.to_string()
                }
            };
            pairs.iter().any(|(sys, code)| {
                let code = norm(code);
                match q.split_once('|') {
                    None => code == norm(q),
                    Some(("", c)) => sys.is_none() && code == norm(c),
                    Some((s, "")) => sys.as_deref() == Some(s),
                    Some((s, c)) => sys.as_deref() == Some(s) && code == norm(c),
                }
            })
        }
        ParamKind::Str => {
            let mut parts = Vec::new();
            for v in &vals {
                params::string_parts(v, &mut parts);
            }
            let nq = params::normalize_str(q);
            parts.iter().any(|p| match clause.modifier.as_deref() {
                Some("exact") => p == q,
                Some("contains") => params::normalize_str(p).contains(&nq),
                _ => {
                    let np = params::normalize_str(p);
                    np.starts_with(&nq)
                        || np
                            .match_indices(' ')
                            .any(|(i, _)| np[i + 1..].starts_with(&nq))
                }
            })
        }
        ParamKind::Reference(restrict) => {
            let refs: Vec<String> = vals
                .iter()
                .flat_map(|v| params::references(v, restrict))
                .collect();
            match reference_query(clause, q, restrict) {
                RefQuery::Full(r) => refs.contains(&r),
                RefQuery::Id(id) => refs
                    .iter()
                    .any(|r| r.split_once('/').map(|x| x.1) == Some(id.as_str())),
            }
        }
        ParamKind::Date => match parse_date(q) {
            Ok((prefix, lo, hi)) => vals
                .iter()
                .filter_map(|v| params::date_range(v))
                .any(|(tlo, thi)| date_cmp(prefix, &tlo, &thi, &lo, &hi)),
            Err(_) => false,
        },
    })
}

/// One match before paging.
struct Hit {
    id: String,
    last_updated: u64,
    record: Option<Record>,
}

impl Store {
    /// Runs a search and returns the total and the requested page.
    pub fn search(&self, q: &SearchQuery) -> StoreResult<SearchPage> {
        self.with_read(|txn| self.search_in(txn, q))
    }

    /// `Patient/{id}/$everything`: the Patient and every live resource of the patient's
    /// compartment this store indexes by `patient` (shared health record, consents,
    /// related persons, devices), in one read transaction.
    pub fn everything(&self, patient_id: &str) -> StoreResult<Vec<Record>> {
        self.with_read(|txn| {
            let mut out = vec![self.read_in(txn, "Patient", patient_id)?];
            let mut types: Vec<&str> = super::route::SHR_TYPES.to_vec();
            types.extend(["Consent", "RelatedPerson", "Device"]);
            for ty in types {
                if params::param(ty, "patient").is_none() {
                    continue;
                }
                let mut q = SearchQuery::from_pairs(ty, &[("patient", patient_id)])?;
                q.count = usize::MAX;
                out.extend(self.search_in(txn, &q)?.items);
            }
            Ok(out)
        })
    }

    /// Search inside an existing transaction (the writer uses it for conditional creates).
    pub(crate) fn search_in(&self, txn: &RoTxn, q: &SearchQuery) -> StoreResult<SearchPage> {
        self.search_filtered_in(txn, q, None)
    }

    /// [`Store::search_in`] keeping only the hits `keep(txn, id, record if loaded)` accepts,
    /// before counting and paging (the access policy's hook).
    pub(crate) fn search_filtered_in(
        &self,
        txn: &RoTxn,
        q: &SearchQuery,
        mut keep: Option<SearchFilter<'_>>,
    ) -> StoreResult<SearchPage> {
        let ty = q.resource_type.as_str();
        match ty {
            "Provenance" => return self.search_provenance(txn, q),
            "AuditEvent" => return self.search_audit(txn, q),
            _ => {}
        }
        let c = component_for(ty)?;
        let dbs = self.dbs(c);
        // 1. Candidates.
        // Candidate ids as sorted, distinct lists: a posting list comes out of the index in
        // order, so sorting what a clause collected is a merge of a few runs.
        let mut candidates: Option<Vec<String>> = q.ids.as_ref().map(|ids| {
            let mut ids = ids.to_vec();
            ids.sort();
            ids.dedup();
            ids
        });
        let mut post: Vec<&Clause> = Vec::new();
        for clause in &q.clauses {
            let mut set = Vec::new();
            let mut usable = true;
            let mut needs_post = false;
            for v in &clause.values {
                let (terms, p) = value_terms(ty, clause, v);
                needs_post |= p;
                match terms {
                    Some(terms) => {
                        for param in params::posting_params(ty, clause.def.name) {
                            for t in &terms {
                                self.postings(txn, c, ty, param, t, &mut set)?;
                            }
                        }
                    }
                    None => usable = false,
                }
            }
            if needs_post || !usable {
                post.push(clause);
            }
            if usable {
                set.sort();
                set.dedup();
                candidates = Some(match candidates {
                    Some(prev) => intersect_sorted(prev, set),
                    None => set,
                });
            }
        }
        // 2. Live resources among the candidates, through `_lastUpdated`, the post-filters
        // and the caller's filter, one candidate at a time, in id order.
        let needs_records =
            !post.is_empty() || q.sort.iter().any(|(k, _)| matches!(k, SortKey::Param(_)));
        let mut admit = |id: String, cur: &format::Current| -> StoreResult<Option<Hit>> {
            if cur.deleted {
                return Ok(None);
            }
            if !q.last_updated.is_empty() {
                let d = time::day(cur.last_updated);
                let within = |(p, lo, hi): &(Prefix, String, String)| date_cmp(*p, &d, &d, lo, hi);
                if !q.last_updated.iter().all(within) {
                    return Ok(None);
                }
            }
            let record = if needs_records {
                let r = self.read_in(txn, ty, &id)?;
                if !post.iter().all(|c| clause_matches(c, &r.resource)) {
                    return Ok(None);
                }
                Some(r)
            } else {
                None
            };
            if let Some(keep) = keep.as_mut()
                && !keep(txn, &id, record.as_ref())?
            {
                return Ok(None);
            }
            Ok(Some(Hit {
                id,
                last_updated: cur.last_updated,
                record,
            }))
        };
        // With `_total=none` and the results in id order (the order candidates come in),
        // the search stops once it holds the page and one hit past it.
        let by_id = q.sort.iter().all(|s| *s == (SortKey::Id, false));
        let stop_at =
            (q.no_total && by_id).then(|| q.offset.saturating_add(q.count).saturating_add(1));
        let full = |hits: &Vec<Hit>| stop_at.is_some_and(|n| hits.len() >= n);
        let mut hits = Vec::new();
        let mut stopped = false;
        match candidates {
            Some(ids) => {
                for id in ids {
                    if full(&hits) {
                        stopped = true;
                        break;
                    }
                    if let Some(cur) = self.current_in(txn, ty, &id)?
                        && let Some(h) = admit(id, &cur)?
                    {
                        hits.push(h);
                    }
                }
            }
            None => {
                let mut prefix = ty.as_bytes().to_vec();
                prefix.push(b'/');
                for item in dbs.current.prefix_iter(txn, &prefix)? {
                    if full(&hits) {
                        stopped = true;
                        break;
                    }
                    let (k, v) = item?;
                    if let Some(cur) = format::Current::from_bytes(v) {
                        let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                        if let Some(h) = admit(id, &cur)? {
                            hits.push(h);
                        }
                    }
                }
            }
        }
        // 3. Sort, page, load.
        sort_hits(&mut hits, &q.sort);
        let total = hits.len();
        let mut items = Vec::new();
        for h in hits.into_iter().skip(q.offset).take(q.count) {
            items.push(match h.record {
                Some(r) => r,
                None => self.read_in(txn, ty, &h.id)?,
            });
        }
        Ok(SearchPage {
            total,
            items,
            exact: !stopped,
        })
    }

    /// Adds the ids posted under one term.
    fn postings(
        &self,
        txn: &RoTxn,
        c: Component,
        ty: &str,
        param: &str,
        term: &str,
        out: &mut Vec<String>,
    ) -> StoreResult<()> {
        let blind = self.blind(c, &format!("{ty}.{param}"), term);
        let prefix = format::index_prefix(ty, &blind);
        for item in self.dbs(c).index.prefix_iter(txn, &prefix)? {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        if super::journal::journaled(c) {
            // And those still in the index journal, as of this snapshot.
            self.journal.postings(txn.id() as u64, &prefix, |id| {
                out.push(String::from_utf8_lossy(id).into_owned());
            });
        }
        Ok(())
    }

    fn search_audit(&self, txn: &RoTxn, q: &SearchQuery) -> StoreResult<SearchPage> {
        let c = Component::Audit;
        let to_indexes = |ids: &mut dyn Iterator<Item = &String>| -> StoreResult<BTreeSet<u64>> {
            let mut out = BTreeSet::new();
            for id in ids {
                if let Some(i) = self.audit_index_of(txn, id)? {
                    out.insert(i);
                }
            }
            Ok(out)
        };
        let mut candidates: Option<BTreeSet<u64>> = match &q.ids {
            Some(ids) => Some(to_indexes(&mut ids.iter())?),
            None => None,
        };
        let mut post: Vec<&Clause> = Vec::new();
        for clause in &q.clauses {
            // Format-1 postings (by event id) and the runs' postings (by log index).
            let mut legacy = Vec::new();
            let mut set = BTreeSet::new();
            let mut usable = true;
            let mut needs_post = false;
            for v in &clause.values {
                let (term, p) = value_term(clause, v);
                needs_post |= p;
                match term {
                    Some(t) => {
                        for param in params::posting_params("AuditEvent", clause.def.name) {
                            self.postings(txn, c, "AuditEvent", param, &t, &mut legacy)?;
                            let blind = self.blind(c, &format!("AuditEvent.{param}"), &t);
                            self.audit_run_postings(txn, &blind, &mut set)?;
                        }
                    }
                    None => usable = false,
                }
            }
            if needs_post || !usable {
                post.push(clause);
            }
            if usable {
                set.extend(to_indexes(&mut legacy.iter())?);
                candidates = Some(match candidates {
                    Some(prev) => prev.intersection(&set).copied().collect(),
                    None => set,
                });
            }
        }
        let size = self.frontier_in(txn)?.size();
        let ids: Vec<u64> = match candidates {
            Some(mut s) => {
                // The tail the deferred indexer has not filed yet: scanned, so the result
                // is exact (see `audit_index`).
                for i in self.audit_indexed_in(txn, size)?..size {
                    let r = audit::audit_record(self.audit_entry_in(txn, i)?)?;
                    let id_ok = q.ids.as_ref().is_none_or(|ids| ids.contains(&r.id));
                    if id_ok && q.clauses.iter().all(|c| clause_matches(c, &r.resource)) {
                        s.insert(i);
                    }
                }
                s.into_iter().collect()
            }
            None => (0..size).collect(),
        };
        let mut records = Vec::new();
        let unfiltered = post.is_empty() && q.last_updated.is_empty();
        let total;
        if unfiltered {
            total = ids.len();
            let mut ids = ids;
            if q.sort.first().is_some_and(|(_, desc)| *desc) {
                ids.reverse();
            }
            for i in ids.into_iter().skip(q.offset).take(q.count) {
                records.push(audit::audit_record(self.audit_entry_in(txn, i)?)?);
            }
        } else {
            let mut all = Vec::new();
            for i in ids {
                let r = audit::audit_record(self.audit_entry_in(txn, i)?)?;
                if post.iter().all(|c| clause_matches(c, &r.resource)) {
                    all.push(r);
                }
            }
            if q.sort.first().is_some_and(|(_, desc)| *desc) {
                all.reverse();
            }
            total = all.len();
            records = all.into_iter().skip(q.offset).take(q.count).collect();
        }
        Ok(SearchPage {
            total,
            items: records,
            exact: true,
        })
    }

    fn search_provenance(&self, txn: &RoTxn, q: &SearchQuery) -> StoreResult<SearchPage> {
        let mut all = Vec::new();
        let mut seen = BTreeSet::new();
        let mut any = false;
        for clause in &q.clauses {
            if clause.def.name != "target" {
                return Err(StoreError::UnsupportedSearch(format!(
                    "Provenance supports only `target`, not `{}`",
                    clause.def.name
                )));
            }
            any = true;
            for v in &clause.values {
                let target = v.split("/fhir/").last().unwrap_or(v);
                for r in self.provenance_for_in(txn, target)? {
                    if seen.insert(r.id.clone()) {
                        all.push(r);
                    }
                }
            }
        }
        if !any {
            return Err(StoreError::UnsupportedSearch(
                "Provenance search needs `target`".into(),
            ));
        }
        let total = all.len();
        Ok(SearchPage {
            total,
            items: all.into_iter().skip(q.offset).take(q.count).collect(),
            exact: true,
        })
    }
}

fn sort_value(def: &ParamDef, r: &Record) -> String {
    let vals = params::values(def, &r.resource);
    let Some(v) = vals.first() else {
        return String::new();
    };
    match def.kind {
        ParamKind::Date => params::date_range(v).map(|x| x.0).unwrap_or_default(),
        ParamKind::Str => {
            let mut parts = Vec::new();
            params::string_parts(v, &mut parts);
            parts
                .first()
                .map(|p| params::normalize_str(p))
                .unwrap_or_default()
        }
        _ => {
            let mut pairs = Vec::new();
            params::token_pairs(v, &mut pairs);
            pairs.first().map(|p| p.1.clone()).unwrap_or_default()
        }
    }
}

/// The ids in both of two sorted, distinct lists, in order.
fn intersect_sorted(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let mut b = b.into_iter().peekable();
    for x in a {
        while b.next_if(|y| *y < x).is_some() {}
        if b.next_if(|y| *y == x).is_some() {
            out.push(x);
        }
    }
    out
}

fn sort_hits(hits: &mut [Hit], sort: &[(SortKey, bool)]) {
    hits.sort_by(|a, b| {
        for (key, desc) in sort {
            let ord = match key {
                SortKey::Id => a.id.cmp(&b.id),
                SortKey::LastUpdated => a.last_updated.cmp(&b.last_updated),
                SortKey::Param(def) => {
                    let av = a
                        .record
                        .as_ref()
                        .map(|r| sort_value(def, r))
                        .unwrap_or_default();
                    let bv = b
                        .record
                        .as_ref()
                        .map(|r| sort_value(def, r))
                        .unwrap_or_default();
                    av.cmp(&bv)
                }
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        a.id.cmp(&b.id)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The merge of two sorted, distinct id lists keeps exactly the ids of both, in
        /// order (against the set intersection the search used before).
        #[test]
        fn intersect_sorted_is_the_set_intersection(
            a in proptest::collection::btree_set("[a-d]{0,3}", 0..40),
            b in proptest::collection::btree_set("[a-d]{0,3}", 0..40),
        ) {
            let want: Vec<String> = a.intersection(&b).cloned().collect();
            let got = intersect_sorted(a.into_iter().collect(), b.into_iter().collect());
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn date_prefixes() {
        assert_eq!(
            parse_date("ge2020-01").unwrap(),
            (Prefix::Ge, "2020-01-01".into(), "2020-01-31".into())
        );
        assert!(parse_date("gt20x").is_err());
        assert!(date_cmp(
            Prefix::Eq,
            "2020-05-01",
            "2020-05-01",
            "2020-01-01",
            "2020-12-31"
        ));
        assert!(!date_cmp(
            Prefix::Eq,
            "2019-12-31",
            "2020-01-02",
            "2020-01-01",
            "2020-12-31"
        ));
        assert!(date_cmp(
            Prefix::Ge,
            "2020-05-01",
            "2020-05-01",
            "2020-05-01",
            "2020-05-01"
        ));
        assert!(!date_cmp(
            Prefix::Gt,
            "2020-05-01",
            "2020-05-01",
            "2020-05-01",
            "2020-05-01"
        ));
        assert!(date_cmp(
            Prefix::Lt,
            "2020-04-30",
            "2020-04-30",
            "2020-05-01",
            "2020-05-01"
        ));
    }

    #[test]
    fn parse_rejects_unknown() {
        assert!(matches!(
            SearchQuery::from_pairs("Patient", &[("shoe-size", "3")]),
            Err(StoreError::UnsupportedSearch(_))
        ));
        assert!(matches!(
            SearchQuery::from_pairs("Patient", &[("gender:text", "x")]),
            Err(StoreError::UnsupportedSearch(_))
        ));
        assert!(SearchQuery::from_pairs("Patient", &[("birthdate", "19x")]).is_err());
        let q = SearchQuery::from_pairs(
            "Patient",
            &[
                ("family", "uwi"),
                ("_count", "5000"),
                ("_sort", "-birthdate"),
            ],
        )
        .unwrap();
        assert_eq!(q.count, MAX_COUNT);
        assert_eq!(q.clauses.len(), 1);
    }

    #[test]
    fn post_filter_semantics() {
        let p = serde_json::json!({"name": [{"family": "Mukamana", "given": ["Aline Grâce"]}],
            "identifier": [{"system": "urn:nid", "value": "42"}], "birthDate": "1988-03-04",
            "generalPractitioner": [{"reference": "Practitioner/d1"}]});
        let q = SearchQuery::from_pairs(
            "Patient",
            &[
                ("name", "grace"),
                ("identifier", "urn:nid|42"),
                ("birthdate", "le1988-03-04"),
                ("general-practitioner", "d1"),
            ],
        )
        .unwrap();
        for c in &q.clauses {
            assert!(clause_matches(c, &p), "{c:?}");
        }
        let q = SearchQuery::from_pairs(
            "Patient",
            &[
                ("name:exact", "mukamana"),
                ("identifier", "other|42"),
                ("birthdate", "gt1988-03-04"),
            ],
        )
        .unwrap();
        for c in &q.clauses {
            assert!(!clause_matches(c, &p), "{c:?}");
        }
    }
}
