//! Access policy: the single choke point every disclosure passes through (consent
//! contract, section 6).
//!
//! A [`Policy`] is built per request from its [`AccessContext`] and decides, record by
//! record, whether the reader may see it and on which [`Basis`]:
//! 1. `author`: the version's `meta.source` is the reader's facility;
//! 2. `patient`: the reader is the patient's own card-tap session;
//! 3. `emergency`: purpose `ETREAT` with a written justification of at least
//!    [`MIN_JUSTIFICATION`] characters;
//! 4. `consent`: an active permit Consent of every patient the record belongs to names the
//!    reader's Organization (and Practitioner, when it names one), the purpose, a period
//!    holding now, the record's type (or all classes) and a data period holding its
//!    `meta.lastUpdated`; an active deny Consent naming the Organization wins over permits;
//! 5. otherwise refused.
//!
//! Records outside every patient compartment are `public`; the appliance's own context is
//! `system`. AuditEvents are readable by the facility named as their agent and by the
//! session of the patient they name; a Provenance follows the version it targets.
//!
//! The patient's consents are read once per request and patient (cached in the `Policy`),
//! through the Consent `patient` index. The `Store::disclose_*` functions apply the policy
//! to each read path: a direct read is refused with `Forbidden` (403), lists (history,
//! searches, `$everything`, matches) drop what is refused *before* paging and counting, so
//! an empty result and `total` reveal nothing.

use std::collections::HashMap;
use std::rc::Rc;

use heed::RoTxn;
use hexa_crypto::jcs;
use serde_json::{Value, json};

use super::audit::{AccessContext, AuditDraft, AuditEntry, audit_record, patients_of};
use super::bases::BaseFacts;
use super::consent::ConsentRule;
use super::error::{StoreError, StoreResult};
use super::pmatch::PatientMatch;
use super::route::{Component, component_for};
use super::search::SearchQuery;
use super::{Record, SearchPage, Store};

/// Prefix of `meta.source`: `urn:hexa:facility:<facility id>` names the authoring facility.
pub const SOURCE_PREFIX: &str = "urn:hexa:facility:";
/// Purpose of use of an emergency (break-the-glass) access.
pub const EMERGENCY_PURPOSE: &str = "ETREAT";
/// Fewest characters of an emergency justification.
pub const MIN_JUSTIFICATION: usize = 10;
/// Extension URL of the access basis recorded in AuditEvents.
pub const BASIS_EXTENSION: &str = "urn:hexa:access-basis";

/// Blind-index parameter under which every version's `meta.source` is filed (`<Type>._source`),
/// so a search can tell the reader's own records from the index, without opening them.
pub const SOURCE_PARAM: &str = "_source";

/// The index term of a resource's `meta.source` (none without one).
pub fn source_term(resource_type: &str, resource: &Value) -> Option<(String, String)> {
    resource
        .pointer("/meta/source")
        .and_then(Value::as_str)
        .map(|s| (format!("{resource_type}.{SOURCE_PARAM}"), s.to_string()))
}

/// `meta.source` value of versions written by `facility_id`.
pub fn source_of(facility_id: &str) -> String {
    super::params::cat(&[SOURCE_PREFIX, facility_id])
}

/// Why a disclosure was permitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    /// The reader's facility authored the version (or is the agent of an AuditEvent).
    Author,
    /// The patient's own session.
    Patient,
    /// Justified emergency access (`ETREAT`).
    Emergency,
    /// An active consent of the patient.
    Consent,
    /// Outside every patient compartment.
    Public,
    /// The appliance's own operation.
    System,
}

impl Basis {
    /// The `valueCode` of the `urn:hexa:access-basis` extension.
    pub fn code(self) -> &'static str {
        match self {
            Basis::Author => "author",
            Basis::Patient => "patient",
            Basis::Emergency => "emergency",
            Basis::Consent => "consent",
            Basis::Public => "public",
            Basis::System => "system",
        }
    }
}

/// A permit: its basis and, for `consent`, the consents used (`Consent/id/_history/v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Why.
    pub basis: Basis,
    /// The authorizing consents (basis `consent` only).
    pub consents: Vec<String>,
}

impl Decision {
    fn of(basis: Basis) -> Option<Decision> {
        Some(Decision {
            basis,
            consents: Vec::new(),
        })
    }
}

/// Records leaving the store, the decision that let each out, and the value returned.
#[derive(Debug, Clone)]
pub struct Disclosure<T> {
    /// The records disclosed (named in the AuditEvent).
    pub records: Vec<Record>,
    /// One decision per disclosed record.
    pub decisions: Vec<Decision>,
    /// What the caller gets.
    pub value: T,
}

/// The policy of one request: the reader and a cache of the consents read so far.
pub struct Policy<'s> {
    store: &'s Store,
    ctx: &'s AccessContext,
    now: i64,
    system: bool,
    source: String,
    organization: String,
    practitioner: Option<String>,
    emergency: bool,
    consents: HashMap<String, Rc<Vec<ConsentRule>>>,
}

impl std::fmt::Debug for Policy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("facility", &self.ctx.facility_id)
            .field("purpose", &self.ctx.purpose_of_use)
            .field("cached_patients", &self.consents.len())
            .finish_non_exhaustive()
    }
}

impl<'s> Policy<'s> {
    /// The policy of `ctx` at the current time.
    pub fn new(store: &'s Store, ctx: &'s AccessContext) -> Self {
        Self::at(store, ctx, super::time::now_millis() as i64)
    }

    /// The policy of `ctx` at `now` (unix millis).
    pub fn at(store: &'s Store, ctx: &'s AccessContext, now: i64) -> Self {
        let emergency = ctx.purpose_of_use == EMERGENCY_PURPOSE
            && ctx
                .justification
                .as_deref()
                .is_some_and(|j| j.trim().chars().count() >= MIN_JUSTIFICATION);
        Policy {
            store,
            ctx,
            now,
            system: ctx.is_system() && ctx.facility_id == store.config.facility_id,
            source: source_of(&ctx.facility_id),
            organization: format!("Organization/{}", ctx.facility_id),
            practitioner: ctx
                .practitioner
                .as_ref()
                .map(|p| format!("Practitioner/{p}")),
            emergency,
            consents: HashMap::new(),
        }
    }

    /// Whether every record of `resource_type` is disclosed without looking at it (the
    /// system context, or a type outside every patient compartment).
    pub fn unrestricted(&self, resource_type: &str) -> bool {
        self.system
            || match component_for(resource_type) {
                Ok(Component::Facility | Component::Worker | Component::Term) => true,
                // Of the products, only a Device can belong to a patient.
                Ok(Component::Product) => resource_type != "Device",
                _ => false,
            }
    }

    /// Decides one record inside `txn`; `None` refuses it.
    pub fn decide(&mut self, txn: &RoTxn, r: &Record) -> StoreResult<Option<Decision>> {
        if self.system {
            return Ok(Decision::of(Basis::System));
        }
        match r.resource_type.as_str() {
            "AuditEvent" => return Ok(self.decide_audit_event(r)),
            "Provenance" => return self.decide_provenance(txn, r),
            _ => {}
        }
        if r.resource.pointer("/meta/source").and_then(Value::as_str) == Some(&self.source) {
            return Ok(Decision::of(Basis::Author));
        }
        let patients = compartment_of(r);
        if patients.is_empty() {
            // Person resources are identities, not in a patient's compartment: author only.
            if r.resource_type == "Person" {
                return Ok(None);
            }
            return Ok(Decision::of(Basis::Public));
        }
        if let Some(s) = &self.ctx.patient_session
            && patients.iter().all(|p| p == s)
        {
            return Ok(Decision::of(Basis::Patient));
        }
        if self.emergency {
            return Ok(Decision::of(Basis::Emergency));
        }
        let mut used = Vec::new();
        for p in &patients {
            match self.consent_for(txn, p, r)? {
                Some(c) => {
                    if !used.contains(&c) {
                        used.push(c)
                    }
                }
                None => return Ok(None),
            }
        }
        Ok(Some(Decision {
            basis: Basis::Consent,
            consents: used,
        }))
    }

    /// The consent of `patient` (`Patient/<id>`) that permits `r`, unless a deny wins.
    fn consent_for(
        &mut self,
        txn: &RoTxn,
        patient: &str,
        r: &Record,
    ) -> StoreResult<Option<String>> {
        let Some(pid) = patient.strip_prefix("Patient/") else {
            return Ok(None);
        };
        let rules = match self.consents.get(patient) {
            Some(r) => r.clone(),
            None => {
                let rules = Rc::new(self.store.consent_rules_in(txn, pid)?);
                self.consents.insert(patient.to_string(), rules.clone());
                rules
            }
        };
        let ty = r.resource_type.as_str();
        let names_org = |c: &ConsentRule| c.organizations.contains(&self.organization);
        // A deny naming the reader's organization, in force now and covering the type, wins
        // over every permit (whichever practitioner it names: deny errs on the safe side).
        if rules
            .iter()
            .any(|c| !c.permit && names_org(c) && c.period.contains(self.now) && c.covers_type(ty))
        {
            return Ok(None);
        }
        let updated = r.last_updated as i64;
        let found = rules.iter().find(|c| {
            c.permit
                && names_org(c)
                && (c.practitioners.is_empty()
                    || self
                        .practitioner
                        .as_ref()
                        .is_some_and(|p| c.practitioners.contains(p)))
                && c.purposes.contains(&self.ctx.purpose_of_use)
                && c.period.contains(self.now)
                && c.covers_type(ty)
                && (ty == "Patient" || c.data_period.is_none_or(|d| d.contains(updated)))
        });
        Ok(found.map(|c| c.reference.clone()))
    }

    fn decide_audit_event(&self, r: &Record) -> Option<Decision> {
        let refs = |path: &str, field: &str| -> Vec<String> {
            r.resource
                .get(path)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x[field]["reference"].as_str().map(str::to_string))
                .collect()
        };
        if refs("agent", "who").contains(&self.organization) {
            return Decision::of(Basis::Author);
        }
        if let Some(s) = &self.ctx.patient_session
            && refs("entity", "what").contains(s)
        {
            return Decision::of(Basis::Patient);
        }
        None
    }

    fn decide_provenance(&mut self, txn: &RoTxn, r: &Record) -> StoreResult<Option<Decision>> {
        let Some(target) = r.resource["target"][0]["reference"].as_str() else {
            return Ok(None);
        };
        let Some((base, version)) = target.split_once("/_history/") else {
            return Ok(None);
        };
        let (Some((ty, id)), Ok(version)) = (base.split_once('/'), version.parse::<u64>()) else {
            return Ok(None);
        };
        if matches!(ty, "Provenance" | "AuditEvent") || component_for(ty).is_err() {
            return Ok(None);
        }
        match self.store.version_in(txn, ty, id, version)? {
            Some(t) => self.decide(txn, &t),
            None => Ok(None),
        }
    }

    fn refused(&self, r: &Record) -> StoreError {
        StoreError::Forbidden(format!(
            "{}/{} is not disclosed to facility {} for purpose {}: it did not author it and no \
             active consent or justified emergency access covers it",
            r.resource_type, r.id, self.ctx.facility_id, self.ctx.purpose_of_use
        ))
    }
}

/// Patients whose compartment holds `r`: its `patient` search parameter and, for clinical
/// records, every `Patient/` reference anywhere in it (participants, members, ...).
pub fn compartment_of(r: &Record) -> Vec<String> {
    let mut out = patients_of(&r.resource_type, &r.id, &r.resource);
    if component_for(&r.resource_type) == Ok(Component::Shr) {
        collect_patient_refs(&r.resource, &mut out, 0);
    }
    out
}

fn collect_patient_refs(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference"
                    && let Some(s) = x.as_str()
                    && let Some(n) = super::params::normalize_reference(s)
                    && n.starts_with("Patient/")
                {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                } else {
                    collect_patient_refs(x, out, depth + 1);
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect_patient_refs(x, out, depth + 1)),
        _ => {}
    }
}

/// The redacted stand-in of a Patient the reader may not read: type and id only.
fn redacted_patient(r: &Record) -> Record {
    let resource = json!({"resourceType": "Patient", "id": r.id});
    Record {
        resource_type: r.resource_type.clone(),
        id: r.id.clone(),
        version: r.version,
        last_updated: r.last_updated,
        deleted: r.deleted,
        canonical: jcs::canonicalize(&resource).unwrap_or_default(),
        resource,
        jws: String::new(),
        author_jws: None,
    }
}

impl Store {
    /// Decides `records` (in one read transaction) and keeps the permitted ones.
    fn screen(
        &self,
        ctx: &AccessContext,
        records: Vec<Record>,
    ) -> StoreResult<(Vec<Record>, Vec<Decision>)> {
        self.with_read(|txn| {
            let mut p = Policy::new(self, ctx);
            let mut kept = Vec::with_capacity(records.len());
            let mut decisions = Vec::with_capacity(records.len());
            for r in records {
                if let Some(d) = p.decide(txn, &r)? {
                    kept.push(r);
                    decisions.push(d);
                }
            }
            Ok((kept, decisions))
        })
    }

    /// A direct read or vread: the record, or `Forbidden`.
    pub fn disclose_one(&self, ctx: &AccessContext, r: Record) -> StoreResult<Disclosure<Record>> {
        let d = self.with_read(|txn| {
            let mut p = Policy::new(self, ctx);
            p.decide(txn, &r)?.ok_or_else(|| p.refused(&r))
        })?;
        Ok(Disclosure {
            records: vec![r.clone()],
            decisions: vec![d],
            value: r,
        })
    }

    /// [`Store::disclose_one`] that, on a refusal, names the record and its patients in
    /// the (failure) AuditEvent, so the patient's access list shows refused attempts too.
    pub fn disclose_one_noting(
        &self,
        ctx: &AccessContext,
        r: Record,
        draft: &mut AuditDraft,
    ) -> StoreResult<Disclosure<Record>> {
        let (ty, id) = (r.resource_type.clone(), r.id.clone());
        let patients = match r.resource_type.as_str() {
            "AuditEvent" | "Provenance" => Vec::new(),
            _ => compartment_of(&r),
        };
        self.disclose_one(ctx, r).inspect_err(|e| {
            if matches!(e, StoreError::Forbidden(_)) {
                draft.entities.push(format!("{ty}/{id}"));
                for p in patients {
                    if !draft.patients.contains(&p) {
                        draft.patients.push(p);
                    }
                }
            }
        })
    }

    /// Instance history: the permitted versions; `Forbidden` when none is.
    pub fn disclose_history(
        &self,
        ctx: &AccessContext,
        versions: Vec<Record>,
    ) -> StoreResult<Disclosure<Vec<Record>>> {
        let first = versions.first().cloned();
        let (kept, decisions) = self.screen(ctx, versions)?;
        if kept.is_empty()
            && let Some(r) = first
        {
            return Err(Policy::new(self, ctx).refused(&r));
        }
        Ok(Disclosure {
            records: kept.clone(),
            decisions,
            value: kept,
        })
    }

    /// A list (`$everything`, includes, disclosures computed elsewhere): refused records are
    /// silently dropped.
    pub fn disclose_all(
        &self,
        ctx: &AccessContext,
        records: Vec<Record>,
    ) -> StoreResult<Disclosure<Vec<Record>>> {
        let (kept, decisions) = self.screen(ctx, records)?;
        Ok(Disclosure {
            records: kept.clone(),
            decisions,
            value: kept,
        })
    }

    /// Search with the policy applied before paging: `total` counts only permitted records
    /// (so `_summary=count` does too). Unrestricted types run the plain paged search.
    pub fn disclose_search(
        &self,
        ctx: &AccessContext,
        q: &SearchQuery,
    ) -> StoreResult<Disclosure<SearchPage>> {
        self.with_read(|txn| {
            let mut p = Policy::new(self, ctx);
            if p.unrestricted(&q.resource_type) {
                let page = self.search_in(txn, q)?;
                let mut decisions = Vec::with_capacity(page.items.len());
                for r in &page.items {
                    decisions.push(p.decide(txn, r)?.ok_or_else(|| p.refused(r))?);
                }
                return Ok(Disclosure {
                    records: page.items.clone(),
                    decisions,
                    value: page,
                });
            }
            if matches!(q.resource_type.as_str(), "AuditEvent" | "Provenance") {
                // The audit log's searches read their entries anyway: screen them all.
                let mut all = q.clone();
                all.count = usize::MAX;
                all.offset = 0;
                let mut permitted = Vec::new();
                for r in self.search_in(txn, &all)?.items {
                    if let Some(d) = p.decide(txn, &r)? {
                        permitted.push((r, d));
                    }
                }
                let total = permitted.len();
                let (items, decisions): (Vec<Record>, Vec<Decision>) =
                    permitted.into_iter().skip(q.offset).take(q.count).unzip();
                return Ok(Disclosure {
                    records: items.clone(),
                    decisions,
                    value: SearchPage {
                        total,
                        items,
                        exact: true,
                    },
                });
            }
            // Hits the reader's facility authored are kept from the `_source` index (a
            // point lookup); only the others are opened and decided.
            let ty = q.resource_type.clone();
            let c = component_for(&ty)?;
            let blind = self.blind(
                c,
                &format!("{ty}.{SOURCE_PARAM}"),
                &source_of(&ctx.facility_id),
            );
            let page = {
                let mut keep =
                    |txn: &RoTxn, id: &str, loaded: Option<&Record>| -> StoreResult<bool> {
                        let key = super::format::index_key(&ty, &blind, id);
                        if self.dbs(c).index.get(txn, &key)?.is_some() {
                            return Ok(true);
                        }
                        let decided = match loaded {
                            Some(r) => p.decide(txn, r)?,
                            None => {
                                let r = self.read_in(txn, &ty, id)?;
                                p.decide(txn, &r)?
                            }
                        };
                        Ok(decided.is_some())
                    };
                self.search_filtered_in(txn, q, Some(&mut keep))?
            };
            let mut decisions = Vec::with_capacity(page.items.len());
            for r in &page.items {
                decisions.push(p.decide(txn, r)?.ok_or_else(|| p.refused(r))?);
            }
            Ok(Disclosure {
                records: page.items.clone(),
                decisions,
                value: page,
            })
        })
    }

    /// Type history with the policy applied before paging.
    pub fn disclose_type_history(
        &self,
        ctx: &AccessContext,
        ty: &str,
        count: usize,
        offset: usize,
    ) -> StoreResult<Disclosure<SearchPage>> {
        if Policy::new(self, ctx).unrestricted(ty) {
            let page = self.type_history(ty, count, offset)?;
            let (records, decisions) = self.screen(ctx, page.items.clone())?;
            return Ok(Disclosure {
                records,
                decisions,
                value: page,
            });
        }
        let all = self.type_history(ty, usize::MAX, 0)?;
        let (kept, decisions) = self.screen(ctx, all.items)?;
        let total = kept.len();
        let pairs: Vec<(Record, Decision)> = kept
            .into_iter()
            .zip(decisions)
            .skip(offset)
            .take(count)
            .collect();
        let (items, decisions): (Vec<Record>, Vec<Decision>) = pairs.into_iter().unzip();
        Ok(Disclosure {
            records: items.clone(),
            decisions,
            value: SearchPage {
                total,
                items,
                exact: true,
            },
        })
    }

    /// `$match` results: candidates the reader may not read keep their score and id only
    /// (the resource is replaced by `{"resourceType": "Patient", "id": ...}`, unsigned).
    pub fn redact_matches(
        &self,
        ctx: &AccessContext,
        found: Vec<PatientMatch>,
    ) -> StoreResult<Vec<PatientMatch>> {
        self.with_read(|txn| {
            let mut p = Policy::new(self, ctx);
            let mut out = Vec::with_capacity(found.len());
            for mut m in found {
                if p.decide(txn, &m.record)?.is_none() {
                    m.record = redacted_patient(&m.record);
                }
                out.push(m);
            }
            Ok(out)
        })
    }

    /// Audit-log entry `index`, if the reader may read that AuditEvent (`Forbidden`
    /// otherwise).
    pub fn audit_entry_for(&self, ctx: &AccessContext, index: u64) -> StoreResult<AuditEntry> {
        self.with_read(|txn| {
            let entry = self.audit_entry_in(txn, index)?;
            let r = audit_record(entry.clone())?;
            let mut p = Policy::new(self, ctx);
            match p.decide(txn, &r)? {
                Some(_) => Ok(entry),
                None => Err(StoreError::Forbidden(format!(
                    "audit entry {index} is not readable by facility {}",
                    ctx.facility_id
                ))),
            }
        })
    }

    /// Refuses generic writes of Consents and of enrolment Devices (consent contract,
    /// section 3): only the appliance's own context (the ceremonies) writes them. Checks
    /// the new body and, for an update or delete, the version it replaces.
    ///
    /// An update or delete must also come from the facility that authored the version it
    /// replaces (`meta.source`): another facility may add records about a patient, but not
    /// change or delete what it did not write (it may not even read it without consent).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn authorize_write(
        &self,
        system: bool,
        source: &str,
        ty: &str,
        id: &str,
        base: Option<&BaseFacts>,
        resource: &Value,
    ) -> StoreResult<()> {
        if system {
            return Ok(());
        }
        if let Some(old) = base
            && old.source.as_deref() != Some(source_of(source).as_str())
        {
            return Err(StoreError::Forbidden(format!(
                "{ty}/{id} was written by another facility: only its author changes or deletes it"
            )));
        }
        let refuse = |what: &str| {
            Err(StoreError::Forbidden(format!(
                "{what} are written only by the appliance's consent and enrolment ceremonies"
            )))
        };
        if ty == "Consent" {
            return refuse("Consent resources");
        }
        if ty == "Device" {
            if is_enrolment_device(resource) {
                return refuse("enrolment Devices");
            }
            if let Some(old) = base
                && old.enrolment_device
            {
                return refuse("enrolment Devices");
            }
        }
        Ok(())
    }
}

/// Whether a Device carries the `urn:hexa:device-type` coding of an enrolment record.
pub fn is_enrolment_device(resource: &Value) -> bool {
    resource["type"]["coding"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["system"] == "urn:hexa:device-type"))
}
