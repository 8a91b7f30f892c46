//! `hexa verify`: offline verification of a patient export (the Bundle `hexa export` writes).
//!
//! Needs no data directory, no network and no appliance: only the export, the ministry's
//! root public key, the clock (to check the roster is not issued in the future) and
//! `hexa-crypto`. It checks, and reports by name every failure of:
//! - the roster's root signature; every appliance key used is in the roster for the
//!   appliance's facility and valid when it signed ([`Code::KeyNotInRoster`]);
//! - the signed export manifest (what the export must contain) and the checkpoint (C2SP
//!   signed note by the node key);
//! - every record version's appliance JWS over the JCS bytes of the resource as exported,
//!   through its Provenance, and every author signature by a health worker's registered key;
//! - every consent's evidence (card: the FIDO2 assertion against the enrolled Device's COSE
//!   key; fingerprint: the health worker's countersignature), see [`consent`];
//! - every enrolment statement says what its Device says, and its health worker's
//!   countersignature verifies, see [`enrolment`];
//! - every AuditEvent's inclusion proof against the checkpoint, and that the export holds
//!   exactly the AuditEvents the manifest lists (a removed or moved entry fails);
//! - every disclosure of the patient's data recorded in the log was covered by authorship, a
//!   consent in force, a justified emergency access, the patient's own session or the
//!   appliance itself, see [`disclosure`].

pub mod consent;
pub mod disclosure;
pub mod enrolment;
pub mod time;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::keys::PublicKey;
use hexa_crypto::merkle::{self, Hash};
use hexa_crypto::roster::{SignedRoster, VerifiedRoster};
use hexa_crypto::{jcs, jws};
use serde_json::Value;

/// `fullUrl` of the Binary holding the signed roster.
pub const ROSTER_URL: &str = "urn:hexa:export:roster";
/// `fullUrl` of the Binary holding the checkpoint (C2SP signed note).
pub const CHECKPOINT_URL: &str = "urn:hexa:export:checkpoint";
/// `fullUrl` of the Binary holding the signed export manifest.
pub const MANIFEST_URL: &str = "urn:hexa:export:manifest";
/// `fullUrl` of the Binary holding the appliance's node public keys (JWKS).
pub const KEYS_URL: &str = "urn:hexa:export:node-keys";
/// Prefix of record version `fullUrl`s (`urn:hexa:record:Type/id/_history/v`).
pub const RECORD_URL_PREFIX: &str = "urn:hexa:record:";
/// Entry extension carrying an AuditEvent's log position and inclusion proof.
pub const AUDIT_PROOF_EXT: &str = "urn:hexa:audit-inclusion-proof";
/// Entry extension marking a deletion version.
pub const DELETED_EXT: &str = "urn:hexa:deleted";
/// `format` of the export manifest.
pub const MANIFEST_FORMAT: &str = "hexa-export-manifest-v1";
/// Largest export accepted by the verifier, in bytes.
pub const MAX_EXPORT_BYTES: usize = 512 << 20;

/// What a finding is about: a stable code the report and tests name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// The file is not an export Bundle, or a part of it is malformed.
    Malformed,
    /// The roster is missing or its root signature does not verify.
    Roster,
    /// A signing key is not in the roster for the facility, or not valid at signing time.
    KeyNotInRoster,
    /// The manifest is missing or its signature does not verify.
    Manifest,
    /// The checkpoint is missing, malformed or not signed by a roster key.
    Checkpoint,
    /// A record version's appliance signature does not verify (edited resource).
    RecordSignature,
    /// A record version has no Provenance with the appliance's signature.
    MissingProvenance,
    /// An author's (health worker's) signature does not verify or its key is unknown.
    AuthorSignature,
    /// A record the manifest lists is missing, or one it does not list is present.
    RecordSet,
    /// A consent's evidence does not verify or does not match the consent.
    ConsentEvidence,
    /// An enrolment statement does not match its Device, or its health worker's
    /// countersignature does not verify.
    EnrolmentCountersignature,
    /// An AuditEvent's inclusion proof does not verify against the checkpoint.
    AuditInclusion,
    /// An AuditEvent the manifest lists is missing, duplicated or not listed.
    AuditSet,
    /// A disclosure recorded in the log is not covered.
    Disclosure,
    /// Not a failure: something the auditor should see (emergency access, patient session,
    /// proposed consents, inferred bases).
    Notice,
}

impl Code {
    /// Stable kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Code::Malformed => "malformed",
            Code::Roster => "roster",
            Code::KeyNotInRoster => "key-not-in-roster",
            Code::Manifest => "manifest",
            Code::Checkpoint => "checkpoint",
            Code::RecordSignature => "record-signature",
            Code::MissingProvenance => "missing-provenance",
            Code::AuthorSignature => "author-signature",
            Code::RecordSet => "record-set",
            Code::ConsentEvidence => "consent-evidence",
            Code::EnrolmentCountersignature => "enrolment-countersignature",
            Code::AuditInclusion => "audit-inclusion",
            Code::AuditSet => "audit-set",
            Code::Disclosure => "disclosure",
            Code::Notice => "notice",
        }
    }
}

/// One failure or notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind.
    pub code: Code,
    /// What it is about (a reference, `AuditEvent/<id> (log index n)`, `roster`, ...).
    pub subject: String,
    /// What was found, in words.
    pub message: String,
}

/// Counters of what verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Record versions whose appliance signature verified.
    pub records: usize,
    /// Author signatures that verified.
    pub author_signatures: usize,
    /// Consent versions whose evidence verified.
    pub consents: usize,
    /// Enrolment Devices whose health worker's countersignature verified.
    pub enrolment_countersignatures: usize,
    /// AuditEvents whose inclusion proof verified.
    pub audit_events: usize,
    /// Disclosures to another facility covered (by consent, emergency, session, system).
    pub disclosures_covered: usize,
    /// Of which emergency accesses.
    pub emergency: usize,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The patient the export is about.
    pub patient: String,
    /// The appliance's facility.
    pub facility: String,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// What verified.
    pub counts: Counts,
    /// Failures and notices, in the order found.
    pub findings: Vec<Finding>,
}

impl Report {
    fn fail(&mut self, code: Code, subject: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            code,
            subject: subject.into(),
            message: message.into(),
        });
    }

    fn notice(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.fail(Code::Notice, subject, message);
    }

    /// The failures (everything but notices).
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.code != Code::Notice)
    }

    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.failures().next().is_none()
    }

    /// Whether a failure with `code` names `subject` (a substring of it).
    pub fn has_failure(&self, code: Code, subject: &str) -> bool {
        self.failures()
            .any(|f| f.code == code && f.subject.contains(subject))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hexa verify: export of {} from facility {}",
            self.patient, self.facility
        )?;
        let c = &self.counts;
        writeln!(f, "  checkpoint tree size      {}", self.tree_size)?;
        writeln!(f, "  record signatures ok      {}", c.records)?;
        writeln!(f, "  author signatures ok      {}", c.author_signatures)?;
        writeln!(f, "  consent evidence ok       {}", c.consents)?;
        writeln!(
            f,
            "  enrolments countersigned  {}",
            c.enrolment_countersignatures
        )?;
        writeln!(f, "  audit inclusion proofs ok {}", c.audit_events)?;
        writeln!(
            f,
            "  disclosures covered       {} (emergency: {})",
            c.disclosures_covered, c.emergency
        )?;
        let notices: Vec<_> = self
            .findings
            .iter()
            .filter(|x| x.code == Code::Notice)
            .collect();
        if !notices.is_empty() {
            writeln!(f, "notices:")?;
            for n in notices {
                writeln!(f, "  - {}: {}", n.subject, n.message)?;
            }
        }
        let failures: Vec<_> = self.failures().collect();
        if failures.is_empty() {
            writeln!(f, "RESULT: OK, every check passed")
        } else {
            writeln!(f, "FAILURES ({}):", failures.len())?;
            for x in &failures {
                writeln!(f, "  - [{}] {}: {}", x.code.name(), x.subject, x.message)?;
            }
            writeln!(f, "RESULT: FAILED")
        }
    }
}

/// One exported record version.
#[derive(Debug, Clone)]
pub(crate) struct Version<'a> {
    pub ty: String,
    pub id: String,
    pub version: u64,
    pub resource: &'a Value,
    pub deleted: bool,
    /// `meta.lastUpdated` in unix millis.
    pub updated: Option<i64>,
}

impl Version<'_> {
    pub fn reference(&self) -> String {
        format!("{}/{}/_history/{}", self.ty, self.id, self.version)
    }

    /// The facility of `meta.source` (`urn:hexa:facility:<id>`).
    pub fn source_facility(&self) -> Option<&str> {
        self.resource["meta"]["source"]
            .as_str()
            .and_then(|s| s.strip_prefix("urn:hexa:facility:"))
    }
}

/// An exported AuditEvent with its claimed log position.
#[derive(Debug, Clone)]
pub(crate) struct AuditItem<'a> {
    pub resource: &'a Value,
    pub index: Option<u64>,
    pub tree_size: Option<u64>,
    pub proof: Option<Vec<Hash>>,
}

impl AuditItem<'_> {
    pub fn subject(&self) -> String {
        let id = self.resource["id"].as_str().unwrap_or("?");
        match self.index {
            Some(i) => format!("AuditEvent/{id} (log index {i})"),
            None => format!("AuditEvent/{id}"),
        }
    }
}

/// The parts of an export.
#[derive(Debug, Default)]
pub(crate) struct Export<'a> {
    pub roster: Option<&'a Value>,
    pub checkpoint: Option<String>,
    pub manifest: Option<&'a Value>,
    /// Versions by `Type/id/_history/v`.
    pub versions: BTreeMap<String, Version<'a>>,
    /// Provenances by target reference.
    pub provenance: BTreeMap<String, Vec<&'a Value>>,
    pub audits: Vec<AuditItem<'a>>,
}

impl<'a> Export<'a> {
    /// Every version of `Type/id`, oldest first.
    pub fn history(&self, ty: &str, id: &str) -> Vec<&Version<'a>> {
        let prefix = format!("{ty}/{id}/_history/");
        let mut v: Vec<_> = self
            .versions
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .collect();
        v.sort_by_key(|x| x.version);
        v
    }

    /// The version of `Type/id` in force at `at` (the newest with lastUpdated <= at).
    pub fn in_force_at(&self, ty: &str, id: &str, at: i64) -> Option<&Version<'a>> {
        self.history(ty, id)
            .into_iter()
            .filter(|v| v.updated.is_some_and(|u| u <= at))
            .max_by_key(|v| v.version)
    }
}

fn b64_binary(v: &Value) -> Option<Vec<u8>> {
    v["data"].as_str().and_then(|d| STANDARD.decode(d).ok())
}

fn proof_of(entry: &Value) -> (Option<u64>, Option<u64>, Option<Vec<Hash>>) {
    let Some(ext) = entry["extension"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["url"] == AUDIT_PROOF_EXT))
    else {
        return (None, None, None);
    };
    let mut index = None;
    let mut size = None;
    let mut hashes = Some(Vec::new());
    for part in ext["extension"].as_array().into_iter().flatten() {
        match part["url"].as_str() {
            Some("index") => index = part["valueString"].as_str().and_then(|s| s.parse().ok()),
            Some("treeSize") => size = part["valueString"].as_str().and_then(|s| s.parse().ok()),
            Some("hash") => {
                let h = part["valueBase64Binary"]
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .and_then(|b| <Hash>::try_from(b).ok());
                match (h, hashes.as_mut()) {
                    (Some(h), Some(list)) => list.push(h),
                    _ => hashes = None,
                }
            }
            _ => {}
        }
    }
    (index, size, hashes)
}

/// Splits the Bundle into its parts; malformed entries are reported.
fn parse<'a>(bundle: &'a Value, report: &mut Report) -> Export<'a> {
    let mut ex = Export::default();
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "collection" {
        report.fail(
            Code::Malformed,
            "export",
            "the file is not a FHIR Bundle of type collection",
        );
        return ex;
    }
    for (i, entry) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
        let r = &entry["resource"];
        let url = entry["fullUrl"].as_str().unwrap_or("");
        let ty = r["resourceType"].as_str().unwrap_or("");
        match (url, ty) {
            (ROSTER_URL, "Binary") => ex.roster = Some(r),
            (CHECKPOINT_URL, "Binary") => {
                ex.checkpoint = b64_binary(r).and_then(|b| String::from_utf8(b).ok())
            }
            (MANIFEST_URL, "Binary") => ex.manifest = Some(r),
            (KEYS_URL, "Binary") => {}
            (_, "AuditEvent") => {
                let (index, tree_size, proof) = proof_of(entry);
                ex.audits.push(AuditItem {
                    resource: r,
                    index,
                    tree_size,
                    proof,
                });
            }
            (_, "Provenance") => {
                for t in r["target"].as_array().into_iter().flatten() {
                    if let Some(t) = t["reference"].as_str() {
                        ex.provenance.entry(t.to_string()).or_default().push(r);
                    }
                }
            }
            (_, "") => report.fail(
                Code::Malformed,
                format!("entry {i}"),
                "entry without a resource",
            ),
            (_, ty) => {
                let id = r["id"].as_str().unwrap_or("");
                let version = r["meta"]["versionId"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok());
                let Some(version) = version.filter(|_| !id.is_empty()) else {
                    report.fail(
                        Code::Malformed,
                        format!("entry {i} ({ty})"),
                        "record without id or meta.versionId",
                    );
                    continue;
                };
                let deleted = entry["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["url"] == DELETED_EXT && e["valueBoolean"] == true);
                let v = Version {
                    ty: ty.to_string(),
                    id: id.to_string(),
                    version,
                    resource: r,
                    deleted,
                    updated: r["meta"]["lastUpdated"]
                        .as_str()
                        .and_then(time::parse_millis),
                };
                let key = v.reference();
                if ex.versions.insert(key.clone(), v).is_some() {
                    report.fail(Code::RecordSet, key, "version exported twice");
                }
            }
        }
    }
    ex
}

/// The verified trust anchors: the roster and the appliance's facility.
pub(crate) struct Trust {
    pub roster: Option<VerifiedRoster>,
    pub facility: String,
}

impl Trust {
    /// The node key `kid` of the facility, valid at `at_ms`; reports why not.
    pub fn node_key(
        &self,
        kid: &str,
        at_ms: Option<i64>,
        subject: &str,
        report: &mut Report,
    ) -> Option<PublicKey> {
        let roster = self.roster.as_ref()?;
        let Some(at) = at_ms else {
            report.fail(
                Code::Malformed,
                subject,
                "no signing time (meta.lastUpdated / recorded) to check the key's validity at",
            );
            return None;
        };
        let at = u64::try_from(at.div_euclid(1000)).unwrap_or(0);
        match roster.node_key(&self.facility, kid, at) {
            Ok(e) => Some(e.node_key.clone()),
            Err(e) => {
                report.fail(
                    Code::KeyNotInRoster,
                    subject,
                    format!("signed by node key {kid}: {e}"),
                );
                None
            }
        }
    }

    /// Every key of the facility valid at `at_ms`.
    pub fn facility_keys(&self, at_ms: i64) -> Vec<PublicKey> {
        let at = u64::try_from(at_ms.div_euclid(1000)).unwrap_or(0);
        self.roster
            .iter()
            .flat_map(|r| r.entries())
            .filter(|e| e.facility_id == self.facility && e.not_before <= at && at < e.not_after)
            .map(|e| e.node_key.clone())
            .collect()
    }
}

/// The manifest's content, once its signature verified.
#[derive(Debug, Default)]
struct Manifest {
    generated_at: Option<i64>,
    checkpoint_size: Option<u64>,
    records: BTreeSet<String>,
    audit_indexes: BTreeSet<u64>,
}

fn check_manifest(ex: &Export, trust: &Trust, report: &mut Report) -> Option<Manifest> {
    let Some(bin) = ex.manifest else {
        report.fail(Code::Manifest, "manifest", "the export has no manifest");
        return None;
    };
    let parsed: Option<Value> = b64_binary(bin).and_then(|b| serde_json::from_slice(&b).ok());
    let Some(doc) = parsed else {
        report.fail(Code::Manifest, "manifest", "the manifest is not JSON");
        return None;
    };
    let m = &doc["manifest"];
    let sig = doc["signature"].as_str().unwrap_or("");
    let generated_at = m["generatedAt"].as_str().and_then(time::parse_millis);
    let kid = jws::peek_kid(sig).ok().flatten().unwrap_or_default();
    let key = trust.node_key(&kid, generated_at, "manifest", report)?;
    let canonical = jcs::canonicalize(m).unwrap_or_default();
    if let Err(e) = jws::verify_detached(sig, &canonical, &key) {
        report.fail(
            Code::Manifest,
            "manifest",
            format!("the manifest signature does not verify: {e}"),
        );
        return None;
    }
    if m["format"] != MANIFEST_FORMAT {
        report.fail(Code::Manifest, "manifest", "unknown manifest format");
        return None;
    }
    Some(Manifest {
        generated_at,
        checkpoint_size: m["checkpointSize"].as_u64(),
        records: m["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        audit_indexes: m["auditEvents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect(),
    })
}

/// Verifies the roster, the checkpoint and the manifest; returns the trust anchors, the
/// checkpoint and the manifest.
fn check_anchors(
    ex: &Export,
    root: &PublicKey,
    now: u64,
    report: &mut Report,
) -> (Trust, Option<Checkpoint>, Option<Manifest>) {
    // The facility the export claims, from the (not yet verified) manifest; every key
    // check below is against the roster entries of this facility.
    let claimed = ex
        .manifest
        .and_then(b64_binary)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let facility = claimed
        .as_ref()
        .and_then(|d| d["manifest"]["facility"].as_str().map(str::to_string))
        .unwrap_or_default();
    report.patient = claimed
        .as_ref()
        .and_then(|d| d["manifest"]["patient"].as_str().map(str::to_string))
        .unwrap_or_else(|| "(unknown patient)".into());
    report.facility = facility.clone();
    let roster = match ex.roster.and_then(b64_binary) {
        None => {
            report.fail(Code::Roster, "roster", "the export has no roster");
            None
        }
        Some(b) => match serde_json::from_slice::<SignedRoster>(&b) {
            Err(e) => {
                report.fail(Code::Roster, "roster", format!("not a signed roster: {e}"));
                None
            }
            Ok(sr) => match sr.verify(root, now) {
                Ok(v) => Some(v),
                Err(e) => {
                    report.fail(Code::Roster, "roster", e.to_string());
                    None
                }
            },
        },
    };
    let trust = Trust { roster, facility };
    let manifest = if trust.roster.is_some() {
        check_manifest(ex, &trust, report)
    } else {
        None
    };
    let checkpoint = match (&ex.checkpoint, &manifest) {
        (None, _) => {
            report.fail(
                Code::Checkpoint,
                "checkpoint",
                "the export has no checkpoint",
            );
            None
        }
        (Some(_), None) => None,
        (Some(note), Some(m)) => {
            let origin = format!("hexa.{}/audit", trust.facility);
            let verifiers: Vec<NoteVerifier> = trust
                .facility_keys(m.generated_at.unwrap_or(0))
                .into_iter()
                .map(|k| NoteVerifier::new(&origin, k))
                .collect();
            match open_note(note, &verifiers).and_then(|(body, _)| Checkpoint::parse_body(&body)) {
                Ok(cp) if Some(cp.size) == m.checkpoint_size && cp.origin == origin => Some(cp),
                Ok(cp) => {
                    report.fail(
                        Code::Checkpoint,
                        "checkpoint",
                        format!(
                            "checkpoint {} of size {} is not the one the manifest names",
                            cp.origin, cp.size
                        ),
                    );
                    None
                }
                Err(e) => {
                    report.fail(
                        Code::Checkpoint,
                        "checkpoint",
                        format!("not signed by a roster key of {}: {e}", trust.facility),
                    );
                    None
                }
            }
        }
    };
    (trust, checkpoint, manifest)
}

/// Checks every record version's signatures (appliance and author).
fn check_records(ex: &Export, trust: &Trust, report: &mut Report) {
    for (r, v) in &ex.versions {
        let canonical = match jcs::canonicalize(v.resource) {
            Ok(c) => c,
            Err(e) => {
                report.fail(Code::Malformed, r.as_str(), e.to_string());
                continue;
            }
        };
        let Some(provs) = ex.provenance.get(r) else {
            report.fail(
                Code::MissingProvenance,
                r.as_str(),
                "no Provenance carries this version's signature",
            );
            continue;
        };
        let sigs: Vec<&Value> = provs
            .iter()
            .flat_map(|p| p["signature"].as_array().into_iter().flatten())
            .collect();
        let jws_of = |s: &Value| {
            s["data"]
                .as_str()
                .and_then(|d| STANDARD.decode(d).ok())
                .and_then(|b| String::from_utf8(b).ok())
        };
        let appliance: Vec<String> = sigs
            .iter()
            .filter(|s| {
                s["who"]["reference"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("Device/"))
            })
            .filter_map(|s| jws_of(s))
            .collect();
        if appliance.is_empty() {
            report.fail(
                Code::MissingProvenance,
                r.as_str(),
                "the Provenance has no appliance signature",
            );
        }
        for sig in &appliance {
            let kid = jws::peek_kid(sig).ok().flatten().unwrap_or_default();
            let Some(key) = trust.node_key(&kid, v.updated, r, report) else {
                continue;
            };
            match jws::verify_detached(sig, &canonical, &key) {
                Ok(_) => report.counts.records += 1,
                Err(e) => report.fail(
                    Code::RecordSignature,
                    r.as_str(),
                    format!(
                        "the appliance signature does not verify over the exported resource \
                         (edited after signing?): {e}"
                    ),
                ),
            }
        }
        for s in sigs.iter().filter(|s| {
            s["who"]["reference"]
                .as_str()
                .is_some_and(|w| w.starts_with("Practitioner/"))
        }) {
            let who = s["who"]["reference"].as_str().unwrap_or_default();
            let Some(sig) = jws_of(s) else {
                report.fail(Code::AuthorSignature, r.as_str(), "unreadable author JWS");
                continue;
            };
            let kid = jws::peek_kid(&sig).ok().flatten().unwrap_or_default();
            match consent::practitioner_key(ex, who, &kid) {
                None => report.fail(
                    Code::AuthorSignature,
                    r.as_str(),
                    format!("author {who}'s key {kid} is not registered in the export"),
                ),
                Some(key) => match jws::verify_detached(&sig, &canonical, &key) {
                    Ok(_) => report.counts.author_signatures += 1,
                    Err(e) => report.fail(
                        Code::AuthorSignature,
                        r.as_str(),
                        format!("author {who}'s signature does not verify: {e}"),
                    ),
                },
            }
        }
    }
}

/// Checks the record and AuditEvent sets against the manifest and every inclusion proof.
fn check_log(
    ex: &Export,
    cp: Option<&Checkpoint>,
    manifest: Option<&Manifest>,
    report: &mut Report,
) {
    if let Some(m) = manifest {
        for r in &m.records {
            if !ex.versions.contains_key(r) {
                report.fail(
                    Code::RecordSet,
                    r.as_str(),
                    "listed in the signed manifest but missing from the export",
                );
            }
        }
        for r in ex.versions.keys() {
            if !m.records.contains(r) {
                report.fail(
                    Code::RecordSet,
                    r.as_str(),
                    "in the export but not listed in the signed manifest",
                );
            }
        }
        let mut seen = BTreeSet::new();
        for a in &ex.audits {
            match a.index {
                Some(i) if !seen.insert(i) => report.fail(
                    Code::AuditSet,
                    a.subject(),
                    "two AuditEvents claim the same log index",
                ),
                Some(i) if !m.audit_indexes.contains(&i) => report.fail(
                    Code::AuditSet,
                    a.subject(),
                    "log index not listed in the signed manifest",
                ),
                _ => {}
            }
        }
        for i in m.audit_indexes.difference(&seen) {
            report.fail(
                Code::AuditSet,
                format!("log index {i}"),
                "the signed manifest lists an AuditEvent at this index that the export lacks \
                 (removed entry)",
            );
        }
    }
    let Some(cp) = cp else { return };
    report.tree_size = cp.size;
    for a in &ex.audits {
        let (Some(index), Some(proof)) = (a.index, &a.proof) else {
            report.fail(
                Code::AuditInclusion,
                a.subject(),
                "no log index or inclusion proof",
            );
            continue;
        };
        if a.tree_size != Some(cp.size) {
            report.fail(
                Code::AuditInclusion,
                a.subject(),
                "the proof is for another tree size than the checkpoint's",
            );
            continue;
        }
        let leaf = merkle::leaf_hash(&jcs::canonicalize(a.resource).unwrap_or_default());
        match merkle::verify_inclusion(&leaf, index, cp.size, proof, &cp.root) {
            Ok(()) => report.counts.audit_events += 1,
            Err(e) => report.fail(
                Code::AuditInclusion,
                a.subject(),
                format!(
                    "not in the log at this index under the checkpoint (edited, removed or \
                     moved entry): {e}"
                ),
            ),
        }
    }
}

/// Verifies an export Bundle against the ministry root key at unix time `now` (seconds).
pub fn verify_export(bundle: &Value, root: &PublicKey, now: u64) -> Report {
    let mut report = Report::default();
    let ex = parse(bundle, &mut report);
    let (trust, cp, manifest) = check_anchors(&ex, root, now, &mut report);
    if trust.roster.is_none() {
        report.fail(
            Code::Roster,
            "roster",
            "without a trusted roster no signature can be checked",
        );
        return report;
    }
    check_records(&ex, &trust, &mut report);
    let consents = consent::check_consents(&ex, &trust, &mut report);
    enrolment::check_enrolments(&ex, &mut report);
    check_log(&ex, cp.as_ref(), manifest.as_ref(), &mut report);
    disclosure::check_disclosures(&ex, &consents, &mut report);
    report
}

/// Parses the `--root` argument: a public JWK (inline JSON or a file holding it, or a JWKS
/// with one key), or the raw 32-byte Ed25519 key in base64url.
pub fn parse_root_key(arg: &str) -> Result<PublicKey, String> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg).map_err(|e| format!("cannot read {arg}: {e}"))?
    } else {
        arg.to_string()
    };
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("root key is not JSON: {e}"))?;
        let jwk = match v["keys"].as_array() {
            Some(keys) if keys.len() == 1 => &keys[0],
            Some(_) => return Err("the root JWKS must hold exactly one key".into()),
            None => &v,
        };
        return PublicKey::from_jwk(jwk).map_err(|e| format!("root key: {e}"));
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "root key is neither a JWK nor base64url of 32 bytes".to_string())?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "root key must be 32 bytes".to_string())?;
    PublicKey::from_bytes(&raw).map_err(|e| format!("root key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexa_crypto::keys::SigningKey;
    use serde_json::json;

    #[test]
    fn malformed_exports_fail_without_panicking() {
        let root = SigningKey::generate().unwrap().public();
        let junk_b64 = json!({"resourceType": "Binary", "data": "!!!"});
        for bundle in [
            json!(null),
            json!([1, 2]),
            json!({"resourceType": "Bundle", "type": "searchset"}),
            json!({"resourceType": "Bundle", "type": "collection"}),
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"fullUrl": ROSTER_URL, "resource": junk_b64},
                {"fullUrl": MANIFEST_URL, "resource": junk_b64},
                {"fullUrl": CHECKPOINT_URL, "resource": junk_b64},
                {"resource": {"resourceType": "Observation", "id": "x", "meta": {"versionId": "a"}}},
                {"resource": {"resourceType": "AuditEvent", "id": "e"},
                 "extension": [{"url": AUDIT_PROOF_EXT, "extension": [
                     {"url": "index", "valueString": "99999999999999999999999"},
                     {"url": "hash", "valueBase64Binary": "AAAA"}]}]},
                {"resource": {"resourceType": "Consent", "id": "c", "meta": {"versionId": "1"},
                              "sourceAttachment": {"data": 7}}},
                {"fullUrl": 3},
            ]}),
        ] {
            let r = verify_export(&bundle, &root, 1_700_000_000);
            assert!(!r.ok(), "{bundle}");
            assert!(r.to_string().contains("RESULT: FAILED"));
        }
    }

    #[test]
    fn root_keys_are_read_in_three_forms() {
        let k = SigningKey::generate().unwrap().public();
        let jwk = k.to_jwk().to_string();
        assert_eq!(parse_root_key(&jwk).unwrap(), k);
        let jwks = json!({"keys": [k.to_jwk()]}).to_string();
        assert_eq!(parse_root_key(&jwks).unwrap(), k);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.as_bytes());
        assert_eq!(parse_root_key(&raw).unwrap(), k);
        assert!(parse_root_key("not a key").is_err());
        assert!(parse_root_key("{\"kty\": \"RSA\"}").is_err());
    }
}
