//! Audit: AuditEvents in a Merkle log (RFC 6962 leaves over their JCS bytes), Provenance of
//! every version, signed C2SP checkpoints, inclusion and consistency proofs.
//!
//! The writer appends AuditEvents in the same LMDB transaction as the change they record
//! (reads and searches: before the data is handed out). The log persists the
//! [`Frontier`] (in `meta`) and every completed perfect subtree in `audit.tree`
//! (`level:u8 || index:u64 BE -> hash`), so roots and proofs are O(log n) reads.

use std::borrow::Cow;
use std::sync::LazyLock;

use base64::Engine as _;
use heed::{RoTxn, RwTxn};
use hexa_crypto::checkpoint::{Checkpoint, sign_note};
use hexa_crypto::jcs::Canon;
use hexa_crypto::merkle::{self, Frontier, Hash, SubtreeSource};
use hexa_crypto::seal::Aad;
use serde_json::Value;

use super::error::{StoreError, StoreResult};
use super::format::StoredProvenance;
use super::policy::{BASIS_EXTENSION, Basis, Decision};
use super::writer::{Staged, StagedOp};
use super::{META_FRONTIER, META_LAST_CKPT, Record, Store, format, params, slot, time};

/// Who is asking, on whose behalf and why; recorded in every AuditEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessContext {
    /// Authenticated client system (integrator key id or name).
    pub client_id: String,
    /// Facility the request comes from.
    pub facility_id: String,
    /// Practitioner on whose behalf the client acts, if any (id of a Practitioner).
    pub practitioner: Option<String>,
    /// Purpose of use (v3 ActReason code, e.g. `TREAT`, `ETREAT`, `HOPERAT`).
    pub purpose_of_use: String,
    /// Justification text (required later for emergency overrides).
    pub justification: Option<String>,
    /// Set when a patient reads their own record through a card-tap session at the
    /// front desk: the patient's logical reference (`Patient/<id>`).
    pub patient_session: Option<String>,
}

/// Client id of the appliance's own context ([`AccessContext::system`]); the HTTP layer
/// refuses integrator clients registered under it.
pub const SYSTEM_CLIENT_ID: &str = "hexa-appliance";

impl AccessContext {
    /// A context for the appliance's own operations (`HOPERAT`).
    pub fn system(facility_id: &str) -> Self {
        AccessContext {
            client_id: SYSTEM_CLIENT_ID.into(),
            facility_id: facility_id.into(),
            practitioner: None,
            purpose_of_use: "HOPERAT".into(),
            justification: None,
            patient_session: None,
        }
    }

    /// Whether this is the appliance's own context (access basis `system`).
    pub fn is_system(&self) -> bool {
        self.client_id == SYSTEM_CLIENT_ID
            && self.purpose_of_use == "HOPERAT"
            && self.patient_session.is_none()
    }
}

/// The RESTful interaction an AuditEvent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// create / conditional create.
    Create,
    /// read.
    Read,
    /// vread.
    Vread,
    /// update.
    Update,
    /// delete.
    Delete,
    /// search-type.
    Search,
    /// history-instance / history-type.
    History,
    /// transaction (one event per entry is also written).
    Transaction,
    /// patient matching ($match).
    Operation,
}

impl Interaction {
    /// `http://hl7.org/fhir/restful-interaction` code.
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Search => "search-type",
            Interaction::History => "history-instance",
            Interaction::Transaction => "transaction",
            Interaction::Operation => "operation",
        }
    }

    /// AuditEvent.action (C, R, U, D, E).
    pub fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Read | Interaction::Vread | Interaction::History => "R",
            Interaction::Update => "U",
            Interaction::Delete => "D",
            Interaction::Search | Interaction::Transaction | Interaction::Operation => "E",
        }
    }
}

/// An AuditEvent before the writer gives it its log index.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// What happened.
    pub interaction: Interaction,
    /// When (unix millis).
    pub recorded: u64,
    /// Who / why.
    pub ctx: AccessContext,
    /// References of the resources touched (`Type/id` or versioned).
    pub entities: Vec<String>,
    /// Patients whose record was touched (`Patient/id`).
    pub patients: Vec<String>,
    /// The search query string, for searches.
    pub query: Option<String>,
    /// Why the interaction failed (None = success).
    pub failure: Option<String>,
    /// Access bases of the disclosure (`urn:hexa:access-basis` extensions), each once.
    pub bases: Vec<Basis>,
    /// Consents that authorized it (`Consent/id/_history/v`), each once.
    pub consents: Vec<String>,
}

impl AuditDraft {
    /// A draft stamped now.
    pub fn new(interaction: Interaction, ctx: &AccessContext) -> Self {
        AuditDraft {
            interaction,
            recorded: time::now_millis(),
            ctx: ctx.clone(),
            entities: Vec::new(),
            patients: Vec::new(),
            query: None,
            failure: None,
            bases: Vec::new(),
            consents: Vec::new(),
        }
    }

    /// Records the policy decision that let a record out.
    pub fn decided(&mut self, d: &Decision) {
        if !self.bases.contains(&d.basis) {
            self.bases.push(d.basis);
        }
        for c in &d.consents {
            if !self.consents.contains(c) {
                self.consents.push(c.clone());
            }
        }
    }

    /// Adds a touched resource and the patient(s) it belongs to.
    pub fn touch(&mut self, r: &Record) {
        self.entities.push(r.versioned_reference());
        self.name_patients(patients_of(&r.resource_type, &r.id, &r.resource));
    }

    /// [`AuditDraft::touch`] for a version about to be written (its patients were found
    /// when it was prepared), and the patients of the version it replaces (a record moved
    /// to another patient, or deleted, is in the first patient's trail too).
    pub(crate) fn touch_prepared(&mut self, p: &super::Prepared) {
        self.entities.push(p.record.versioned_reference());
        self.name_patients(p.patients.iter().cloned());
        self.name_patients(p.replaced_patients.iter().cloned());
    }

    fn name_patients(&mut self, patients: impl IntoIterator<Item = String>) {
        for p in patients {
            if !self.patients.contains(&p) {
                self.patients.push(p);
            }
        }
    }
}

/// `Patient/id` references of the patients a resource belongs to.
pub fn patients_of(ty: &str, id: &str, resource: &Value) -> Vec<String> {
    if ty == "Patient" {
        return vec![params::cat(&["Patient/", id])];
    }
    let mut out = Vec::new();
    if let Some(def) = params::param(ty, "patient") {
        for v in params::values(def, resource) {
            for r in params::references(v, Some("Patient")) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// A FHIR Coding as a [`Canon`] object (`display` only when given).
fn coding<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Canon<'a> {
    let mut m = vec![("system", Canon::Str(system)), ("code", Canon::Str(code))];
    if let Some(t) = display {
        m.push(("display", Canon::Str(t)));
    }
    Canon::Object(m)
}

/// A FHIR CodeableConcept of one [`coding`].
fn codeable<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Canon<'a> {
    Canon::Object(vec![(
        "coding",
        Canon::Array(vec![coding(system, code, display)]),
    )])
}

const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

// Constant subtrees of the AuditEvent, rendered once (RFC 8785) and copied into every event
// as [`Canon::Raw`]: the codings every event repeats, instead of building and sorting the
// same small objects for each disclosure. `audit_canon_tests` compares the events with an
// oracle built from plain JSON.
static EVENT_TYPE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    coding(
        "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "rest",
        Some("RESTful Operation"),
    )
    .to_bytes()
});
static APPLICATION: LazyLock<Vec<u8>> = LazyLock::new(|| {
    codeable(
        "http://dicom.nema.org/resources/ontology/DCM",
        "110150",
        Some("Application"),
    )
    .to_bytes()
});
static PROVIDER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    codeable(
        "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
        "PROV",
        Some("healthcare provider"),
    )
    .to_bytes()
});
static RECIPIENT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    codeable(
        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "IRCP",
        Some("information recipient"),
    )
    .to_bytes()
});
static PERSON: LazyLock<Vec<u8>> =
    LazyLock::new(|| coding(ENTITY_TYPE, "1", Some("Person")).to_bytes());
static PATIENT_ROLE: LazyLock<Vec<u8>> =
    LazyLock::new(|| coding(OBJECT_ROLE, "1", Some("Patient")).to_bytes());
static SYSTEM_OBJECT: LazyLock<Vec<u8>> =
    LazyLock::new(|| coding(ENTITY_TYPE, "2", Some("System Object")).to_bytes());

/// The FHIR AuditEvent of a draft (without `id`; [`prepare_audit`] assigns a UUIDv7), as a
/// [`Canon`] tree: every disclosure builds one, so it is composed from borrowed
/// strings and written canonically without a `serde_json::Value`.
pub(crate) fn audit_event_canon<'a>(
    store: &'a Store,
    d: &'a AuditDraft,
    failure: Option<&'a str>,
) -> Canon<'a> {
    use Canon::{Array as A, Bool as B, Object as O, Str as S, String as Own};
    let failure = failure.or(d.failure.as_deref());
    const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
    let purpose = || A(vec![codeable(ACT_REASON, &d.ctx.purpose_of_use, None)]);
    let mut agents = vec![
        O(vec![
            ("type", Canon::Raw(&APPLICATION)),
            (
                "who",
                O(vec![(
                    "identifier",
                    O(vec![
                        ("system", S("urn:hexa:client")),
                        ("value", S(&d.ctx.client_id)),
                    ]),
                )]),
            ),
            ("requestor", B(d.ctx.practitioner.is_none())),
            ("purposeOfUse", purpose()),
        ]),
        O(vec![
            ("type", Canon::Raw(&PROVIDER)),
            (
                "who",
                O(vec![(
                    "reference",
                    Own(params::cat(&["Organization/", &d.ctx.facility_id])),
                )]),
            ),
            ("requestor", B(false)),
        ]),
    ];
    if let Some(p) = &d.ctx.practitioner {
        agents.push(O(vec![
            ("type", Canon::Raw(&RECIPIENT)),
            (
                "who",
                O(vec![("reference", Own(params::cat(&["Practitioner/", p])))]),
            ),
            ("requestor", B(true)),
        ]));
    }
    let mut entities: Vec<Canon<'a>> = d
        .patients
        .iter()
        .map(|p| {
            O(vec![
                ("what", O(vec![("reference", S(p))])),
                ("type", Canon::Raw(&PERSON)),
                ("role", Canon::Raw(&PATIENT_ROLE)),
            ])
        })
        .collect();
    for e in &d.entities {
        entities.push(O(vec![
            ("what", O(vec![("reference", S(e))])),
            ("type", Canon::Raw(&SYSTEM_OBJECT)),
        ]));
    }
    for c in &d.consents {
        entities.push(O(vec![
            ("what", O(vec![("reference", S(c))])),
            (
                "type",
                coding("http://hl7.org/fhir/resource-types", "Consent", None),
            ),
            ("description", S("authorizing consent")),
        ]));
    }
    if let Some(q) = &d.query {
        entities.push(O(vec![
            ("type", coding(ENTITY_TYPE, "2", None)),
            ("role", coding(OBJECT_ROLE, "24", Some("Query"))),
            (
                "query",
                Own(base64::engine::general_purpose::STANDARD.encode(q.as_bytes())),
            ),
        ]));
    }
    let purpose_of_event = match &d.ctx.justification {
        None => purpose(),
        Some(j) => A(vec![O(vec![
            (
                "coding",
                A(vec![coding(ACT_REASON, &d.ctx.purpose_of_use, None)]),
            ),
            ("text", S(j)),
        ])]),
    };
    let mut ev = vec![
        ("resourceType", S("AuditEvent")),
        ("type", Canon::Raw(&EVENT_TYPE)),
        (
            "subtype",
            A(vec![coding(
                "http://hl7.org/fhir/restful-interaction",
                d.interaction.code(),
                None,
            )]),
        ),
        ("action", S(d.interaction.action())),
        ("recorded", Own(time::instant(d.recorded))),
        ("outcome", S(if failure.is_some() { "4" } else { "0" })),
        ("purposeOfEvent", purpose_of_event),
        ("agent", A(agents)),
        (
            "source",
            O(vec![
                ("site", S(&d.ctx.facility_id)),
                (
                    "observer",
                    O(vec![(
                        "reference",
                        Own(params::cat(&["Device/", &store.config.appliance_id])),
                    )]),
                ),
            ]),
        ),
        ("entity", A(entities)),
    ];
    if !d.bases.is_empty() {
        let ext = d
            .bases
            .iter()
            .map(|b| {
                O(vec![
                    ("url", S(BASIS_EXTENSION)),
                    ("valueCode", S(b.code())),
                ])
            })
            .collect();
        ev.push(("extension", A(ext)));
    }
    if let Some(f) = failure {
        ev.push(("outcomeDesc", S(f)));
    }
    O(ev)
}

/// The Provenance of a stored version: target, agent (the custodian appliance
/// `Device/<custodian>`, and the author when given), and the detached JWS(s) as `signature`
/// (`sigFormat` application/jose). Composed as a [`Canon`] tree like the AuditEvent, when
/// the Provenance is read, from the version `r` and its
/// [`super::format::StoredProvenance`].
pub(crate) fn provenance_canon<'a>(
    custodian: &'a str,
    r: &'a Record,
    id: &'a str,
    author: Option<&'a str>,
) -> Canon<'a> {
    use Canon::{Array as A, Object as O, Str as S, String as Own};
    let device = || {
        O(vec![(
            "reference",
            Own(params::cat(&["Device/", custodian])),
        )])
    };
    let when = time::instant(r.last_updated);
    let activity = match (r.version, r.deleted) {
        (_, true) => "DELETE",
        (1, false) => "CREATE",
        _ => "UPDATE",
    };
    let sig_type = || {
        A(vec![coding(
            "urn:iso-astm:E1762-95:2013",
            "1.2.840.10065.1.12.1.1",
            Some("Author's Signature"),
        )])
    };
    let participant = |code: &'a str| {
        codeable(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            code,
            None,
        )
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = |who: Canon<'a>, jws: &str| {
        O(vec![
            ("type", sig_type()),
            ("when", Own(when.clone())),
            ("who", who),
            ("targetFormat", S("application/fhir+json")),
            ("sigFormat", S("application/jose")),
            ("data", Own(b64.encode(jws.as_bytes()))),
        ])
    };
    let mut agents = vec![O(vec![
        ("type", participant("custodian")),
        ("who", device()),
    ])];
    let mut sigs = vec![signature(device(), &r.jws)];
    if let Some(a) = &r.author_jws {
        let author = || match author {
            Some(a) => O(vec![("reference", S(a))]),
            None => O(vec![("display", S("author (identified by the JWS kid)"))]),
        };
        agents.push(O(vec![("type", participant("author")), ("who", author())]));
        sigs.push(signature(author(), a));
    }
    O(vec![
        ("resourceType", S("Provenance")),
        ("id", S(id)),
        (
            "target",
            A(vec![O(vec![("reference", Own(r.versioned_reference()))])]),
        ),
        ("recorded", Own(when.clone())),
        (
            "activity",
            codeable(
                "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                activity,
                None,
            ),
        ),
        ("agent", A(agents)),
        ("signature", A(sigs)),
    ])
}

/// An AuditEvent ready for the log: id, the value to seal (its JCS bytes compressed,
/// [`super::compress`]), the Merkle leaf hash of the JCS bytes and the blinded search
/// terms. Built on the registry threads so the single writer only seals and puts.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAudit {
    pub id: String,
    pub stored: Vec<u8>,
    pub leaf: Hash,
    pub terms: Vec<[u8; 32]>,
}

/// Builds the AuditEvent of `d` (with a fresh UUID id), canonicalises it and computes its
/// leaf hash and blinded search terms.
pub(crate) fn prepare_audit(
    store: &Store,
    d: &AuditDraft,
    failure: Option<&str>,
) -> StoreResult<PreparedAudit> {
    let mut event = audit_event_canon(store, d, failure);
    let id = super::new_id()?;
    if let Canon::Object(m) = &mut event {
        m.push(("id", Canon::Str(&id)));
    }
    let bytes = event.to_bytes();
    let terms = super::audit_index::canon_event_terms(store, &event);
    drop(event);
    Ok(PreparedAudit {
        id,
        leaf: merkle::leaf_hash(&bytes),
        stored: super::compress::pack_audit(&bytes).map_err(StoreError::Audit)?,
        terms,
    })
}

/// Key of a perfect subtree in `audit.tree`.
pub(crate) fn tree_key(level: u32, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level as u8;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Log entry key.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The writer's view of the audit log: frontier and checkpoint bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct AuditAppender {
    pub frontier: Frontier,
    pub last_ckpt_size: u64,
    pub last_ckpt_time: u64,
    /// Index keys of the entries appended in the current batch (log index, keys): the
    /// deferred audit indexer ([`super::audit_index`]) files them after the commit.
    pub fresh: Vec<(u64, Vec<[u8; 32]>)>,
}

impl AuditAppender {
    /// Loads the persisted frontier and checkpoint state.
    pub fn load(store: &Store, txn: &RoTxn) -> StoreResult<Self> {
        let frontier = match store.meta.get(txn, META_FRONTIER)? {
            Some(b) => postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
                database: "meta".into(),
                key: "frontier".into(),
                reason: e.to_string(),
            })?,
            None => Frontier::new(),
        };
        let (last_ckpt_size, last_ckpt_time) = match store.meta.get(txn, META_LAST_CKPT)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(b[8..].try_into().unwrap_or_default()),
            ),
            _ => (0, 0),
        };
        Ok(AuditAppender {
            frontier,
            last_ckpt_size,
            last_ckpt_time,
            fresh: Vec::new(),
        })
    }

    /// Appends one prepared AuditEvent; returns its log index. Its puts are staged for the
    /// batch's sorted flush (log keys only grow, so the log entry is an `MDB_APPEND`); its
    /// search index keys go to `fresh`, for the deferred indexer.
    pub fn append<'a>(
        &mut self,
        store: &Store,
        staged: &mut Staged<'a>,
        ev: &'a PreparedAudit,
    ) -> StoreResult<u64> {
        use std::borrow::Cow::Borrowed;
        let id = Borrowed(ev.id.as_bytes());
        self.append_parts(store, staged, &ev.stored, ev.leaf, id, ev.terms.clone())
    }

    /// [`AuditAppender::append`] of an event built in the writer (failure audits).
    pub fn append_owned(
        &mut self,
        store: &Store,
        staged: &mut Staged<'_>,
        ev: PreparedAudit,
    ) -> StoreResult<u64> {
        use std::borrow::Cow::Owned;
        let id = Owned(ev.id.into_bytes());
        self.append_parts(store, staged, &ev.stored, ev.leaf, id, ev.terms)
    }

    fn append_parts<'a>(
        &mut self,
        store: &Store,
        staged: &mut Staged<'a>,
        stored: &[u8],
        leaf: Hash,
        id: Cow<'a, [u8]>,
        terms: Vec<[u8; 32]>,
    ) -> StoreResult<u64> {
        use std::borrow::Cow::Owned;
        let index = self.frontier.size();
        for (level, i, h) in self.frontier.append(leaf) {
            staged.push(
                slot::TREE,
                store.audit_tree,
                Owned(tree_key(level, i).to_vec()),
                StagedOp::Put(Owned(h.to_vec())),
            );
        }
        let key = log_key(index);
        let sealed = store
            .seal_log
            .seal(
                stored,
                &Aad {
                    database: "audit.log",
                    key: &key,
                    version: index,
                },
            )
            .map_err(|e| StoreError::Crypto(e.to_string()))?;
        staged.push(
            slot::LOG,
            store.audit_log,
            Owned(key.to_vec()),
            StagedOp::Append(Owned(sealed)),
        );
        staged.push(
            slot::IDS,
            store.audit_ids,
            id,
            StagedOp::Put(Owned(key.to_vec())),
        );
        self.fresh.push((index, terms));
        Ok(index)
    }

    /// Persists the frontier (end of every batch).
    pub fn persist(&self, store: &Store, wtxn: &mut RwTxn) -> StoreResult<()> {
        let b =
            postcard::to_stdvec(&self.frontier).map_err(|e| StoreError::Storage(e.to_string()))?;
        store.meta.put(wtxn, META_FRONTIER, &b)?;
        Ok(())
    }

    /// Signs and stores a checkpoint if due (or `force`d and the log grew). Returns its size.
    pub fn maybe_checkpoint(
        &mut self,
        store: &Store,
        wtxn: &mut RwTxn,
        now: u64,
        force: bool,
    ) -> StoreResult<Option<u64>> {
        let size = self.frontier.size();
        if size == 0 || size == self.last_ckpt_size {
            return Ok(None);
        }
        let due = size - self.last_ckpt_size >= store.config.checkpoint_every
            || now.saturating_sub(self.last_ckpt_time) >= store.config.checkpoint_interval_ms;
        if !(due || force) {
            return Ok(None);
        }
        let cp = Checkpoint {
            origin: store.origin.clone(),
            size,
            root: self.frontier.root(),
            extensions: vec![],
        };
        let note = sign_note(&cp.body(), &store.origin, &store.node_key);
        store
            .audit_checkpoints
            .put(wtxn, &size.to_be_bytes(), note.as_bytes())?;
        let mut st = [0u8; 16];
        st[..8].copy_from_slice(&size.to_be_bytes());
        st[8..].copy_from_slice(&now.to_be_bytes());
        store.meta.put(wtxn, META_LAST_CKPT, &st)?;
        self.last_ckpt_size = size;
        self.last_ckpt_time = now;
        Ok(Some(size))
    }
}

/// `SubtreeSource` over the `audit.tree` database in a read transaction.
struct TreeSource<'a, 't> {
    store: &'a Store,
    txn: &'a RoTxn<'t>,
}

impl SubtreeSource for TreeSource<'_, '_> {
    type Error = StoreError;
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let v = self
            .store
            .audit_tree
            .get(self.txn, &tree_key(level, index))?
            .ok_or_else(|| StoreError::Audit(format!("subtree ({level}, {index}) missing")))?;
        v.try_into()
            .map_err(|_| StoreError::Audit("subtree hash has wrong length".into()))
    }
}

fn source_err(e: merkle::SourceError<StoreError>) -> StoreError {
    match e {
        merkle::SourceError::Source(s) => s,
        merkle::SourceError::Proof(p) => StoreError::Audit(p.to_string()),
    }
}

/// One audit-log entry: its index, the exact JCS bytes and their RFC 6962 leaf hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Log index (the position of the leaf in the Merkle tree).
    pub index: u64,
    /// JCS bytes of the AuditEvent.
    pub bytes: Vec<u8>,
    /// `merkle::leaf_hash(bytes)`.
    pub leaf: Hash,
}

impl Store {
    /// Number of entries in the audit log.
    pub fn audit_size(&self) -> StoreResult<u64> {
        self.with_read(|txn| Ok(self.frontier_in(txn)?.size()))
    }

    pub(crate) fn frontier_in(&self, txn: &RoTxn) -> StoreResult<Frontier> {
        match self.meta.get(txn, META_FRONTIER)? {
            Some(b) => postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
                database: "meta".into(),
                key: "frontier".into(),
                reason: e.to_string(),
            }),
            None => Ok(Frontier::new()),
        }
    }

    pub(crate) fn audit_entry_in(&self, txn: &RoTxn, index: u64) -> StoreResult<AuditEntry> {
        let key = log_key(index);
        let sealed = self
            .audit_log
            .get(txn, &key)?
            .ok_or_else(|| StoreError::Audit(format!("no audit entry {index}")))?;
        let corrupt = |reason: String| StoreError::Corrupt {
            database: "audit.log".into(),
            key: index.to_string(),
            reason,
        };
        let plain = self
            .seal_log
            .open(
                sealed,
                &Aad {
                    database: "audit.log",
                    key: &key,
                    version: index,
                },
            )
            .map_err(|e| corrupt(e.to_string()))?;
        let bytes = super::compress::unpack_audit(plain).map_err(corrupt)?;
        let leaf = merkle::leaf_hash(&bytes);
        Ok(AuditEntry { index, bytes, leaf })
    }

    /// The audit entry at `index`.
    pub fn audit_entry(&self, index: u64) -> StoreResult<AuditEntry> {
        self.with_read(|txn| self.audit_entry_in(txn, index))
    }

    /// Root of the first `size` entries (O(log n) reads).
    pub fn audit_root(&self, size: u64) -> StoreResult<Hash> {
        self.with_read(|txn| {
            if size > self.frontier_in(txn)?.size() {
                return Err(StoreError::Audit(format!(
                    "log has fewer than {size} entries"
                )));
            }
            merkle::root_from(&mut TreeSource { store: self, txn }, size)
        })
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub fn audit_inclusion_proof(&self, index: u64, size: u64) -> StoreResult<Vec<Hash>> {
        self.with_read(|txn| {
            if size > self.frontier_in(txn)?.size() {
                return Err(StoreError::Audit(format!(
                    "log has fewer than {size} entries"
                )));
            }
            merkle::inclusion_proof_from(&mut TreeSource { store: self, txn }, index, size)
                .map_err(source_err)
        })
    }

    /// Consistency proof between tree sizes `old` and `new`.
    pub fn audit_consistency_proof(&self, old: u64, new: u64) -> StoreResult<Vec<Hash>> {
        self.with_read(|txn| {
            if new > self.frontier_in(txn)?.size() {
                return Err(StoreError::Audit(format!(
                    "log has fewer than {new} entries"
                )));
            }
            merkle::consistency_proof_from(&mut TreeSource { store: self, txn }, old, new)
                .map_err(source_err)
        })
    }

    /// The latest signed checkpoint note, if any.
    pub fn latest_checkpoint(&self) -> StoreResult<Option<String>> {
        self.with_read(|txn| {
            Ok(self
                .audit_checkpoints
                .last(txn)?
                .map(|(_, note)| String::from_utf8_lossy(note).into_owned()))
        })
    }

    /// The checkpoint signed at exactly `size`, if one was.
    pub fn checkpoint_at(&self, size: u64) -> StoreResult<Option<String>> {
        self.with_read(|txn| {
            Ok(self
                .audit_checkpoints
                .get(txn, &size.to_be_bytes())?
                .map(|n| String::from_utf8_lossy(n).into_owned()))
        })
    }

    /// AuditEvent or Provenance by id (via `audit.ids` / `audit.provids`) as a record.
    pub(crate) fn read_audit_resource(
        &self,
        txn: &RoTxn,
        ty: &str,
        id: &str,
    ) -> StoreResult<Record> {
        let not_found = || StoreError::NotFound {
            resource_type: ty.into(),
            id: id.into(),
        };
        match ty {
            "AuditEvent" => {
                let index = self.audit_index_of(txn, id)?.ok_or_else(not_found)?;
                audit_record(self.audit_entry_in(txn, index)?)
            }
            "Provenance" => {
                let key = self
                    .audit_provids
                    .get(txn, id.as_bytes())?
                    .ok_or_else(not_found)?
                    .to_vec();
                self.provenance_at(txn, &key)
            }
            _ => Err(not_found()),
        }
    }

    /// Log index of the AuditEvent with id `id`.
    pub(crate) fn audit_index_of(&self, txn: &RoTxn, id: &str) -> StoreResult<Option<u64>> {
        Ok(self
            .audit_ids
            .get(txn, id.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes))
    }

    /// Log index of the AuditEvent with id `id`, if it is in the log (auditors' exports
    /// pair each event with its inclusion proof).
    pub fn audit_index(&self, id: &str) -> StoreResult<Option<u64>> {
        self.with_read(|txn| self.audit_index_of(txn, id))
    }

    /// Provenance stored under a version key ([`format::stamp_key`]): composed from the
    /// version's envelope and the [`StoredProvenance`] (format 3), or the JSON a format-2
    /// directory stored.
    pub(crate) fn provenance_at(&self, txn: &RoTxn, key: &[u8]) -> StoreResult<Record> {
        let corrupt = |reason: String| StoreError::Corrupt {
            database: "audit.provenance".into(),
            key: format::printable_key(key),
            reason,
        };
        let (ty, _) = format::parse_stamp_key(key).ok_or_else(|| corrupt("bad key".into()))?;
        let c = super::component_for(ty)?;
        // The version it describes: the seal binds the Provenance to that version's number.
        let target = match self.dbs(c).versions.get(txn, key)? {
            Some(value) => self.open_stored(c, key, value)?,
            None => return Err(corrupt("the version it describes is missing".into())),
        };
        let version = target.version;
        let sealed = self
            .audit_provenance
            .get(txn, key)?
            .ok_or_else(|| StoreError::NotFound {
                resource_type: "Provenance".into(),
                id: format::printable_key(key),
            })?;
        let bytes = self
            .seal_provenance
            .open(
                sealed,
                &Aad {
                    database: "audit.provenance",
                    key,
                    version,
                },
            )
            .map_err(|e| corrupt(e.to_string()))?;
        let (id, resource, canonical) = if bytes.first() == Some(&b'{') {
            // Format 2: the whole Provenance as JSON.
            let resource: Value =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let id = resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (id, resource, bytes)
        } else {
            let stored = StoredProvenance::from_bytes(&bytes).map_err(corrupt)?;
            let canon = provenance_canon(
                &stored.custodian,
                &target,
                &stored.id,
                stored.author.as_deref(),
            );
            (stored.id.clone(), canon.to_value(), canon.to_bytes())
        };
        Ok(Record {
            resource_type: "Provenance".into(),
            id,
            version: 1,
            last_updated: 0,
            deleted: false,
            resource,
            canonical,
            jws: String::new(),
            author_jws: None,
        })
    }

    /// Provenances of every version of `Type/id` (or of one version).
    pub fn provenance_for(&self, target: &str) -> StoreResult<Vec<Record>> {
        self.with_read(|txn| self.provenance_for_in(txn, target))
    }

    pub(crate) fn provenance_for_in(&self, txn: &RoTxn, target: &str) -> StoreResult<Vec<Record>> {
        let (base, version) = match target.split_once("/_history/") {
            Some((b, v)) => (b, v.parse::<u64>().ok()),
            None => (target, None),
        };
        let (ty, id) = base
            .split_once('/')
            .ok_or_else(|| StoreError::Invalid(format!("`{target}` is not Type/id")))?;
        let c = super::component_for(ty)?;
        let Some(cur) = self.current_in(txn, ty, id)? else {
            return Ok(Vec::new());
        };
        let stamps = match version {
            Some(v) => self.stamp_of(txn, c, ty, &cur, v)?.into_iter().collect(),
            // Oldest first, as they were written.
            None => {
                let mut all = self.stamps_in(txn, c, ty, &cur)?;
                all.reverse();
                all
            }
        };
        let mut out = Vec::new();
        for stamp in stamps {
            let key = format::stamp_key(ty, stamp);
            if self.audit_provenance.get(txn, &key)?.is_some() {
                out.push(self.provenance_at(txn, &key)?);
            }
        }
        Ok(out)
    }
}

/// An audit entry as a FHIR record.
pub(crate) fn audit_record(e: AuditEntry) -> StoreResult<Record> {
    let resource: Value = serde_json::from_slice(&e.bytes).map_err(|err| StoreError::Corrupt {
        database: "audit.log".into(),
        key: e.index.to_string(),
        reason: err.to_string(),
    })?;
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Record {
        resource_type: "AuditEvent".into(),
        id,
        version: 1,
        last_updated: 0,
        deleted: false,
        resource,
        canonical: e.bytes,
        jws: String::new(),
        author_jws: None,
    })
}
