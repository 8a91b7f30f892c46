//! `hexa export`: everything an auditor needs to check one patient's record offline, as a
//! FHIR Bundle of type `collection` (see [`crate::verify`] for what is checked).
//!
//! Entries:
//! - every version of every resource of the patient's compartment (the Patient, clinical
//!   resources, Consents, enrolment Devices) — including records since deleted, found
//!   through the entities of the patient's AuditEvents and kept when a version of theirs
//!   was in the patient's compartment — and of the Practitioners they name, exactly
//!   as stored (JCS of the resource reproduces the signed bytes), `fullUrl`
//!   `urn:hexa:record:Type/id/_history/v`; deletion versions carry the entry extension
//!   `urn:hexa:deleted`;
//! - the Provenance of each version (its `signature` holds the appliance's detached JWS and
//!   the author's, if any);
//! - every AuditEvent naming the patient that the checkpoint covers, unchanged (its JCS
//!   bytes are the Merkle leaf), with the entry extension `urn:hexa:audit-inclusion-proof`
//!   (`index`, `treeSize`, `hash`...);
//! - Binaries: the checkpoint (C2SP signed note), the ministry-signed roster vouching for
//!   the node key, the node key (JWKS), and a manifest signed by the node key listing the
//!   record versions and AuditEvent indexes the export must contain.
//!
//! The export is itself a disclosure: its AuditEvent (system context, operation
//! `Patient/<id>/$export`) is committed, and a checkpoint forced, before anything is
//! collected, so the export's own event is in it.
//!
//! The roster lives in `<data-dir>/roster.json` (a [`SignedRoster`]), installed by
//! `hexa roster install FILE --root KEY`, which refuses a roster that the root key does
//! not sign or that does not vouch for this appliance's node key and facility.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::audit::Interaction;
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{AccessContext, Record, StoreError, policy};
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::keys::{PublicKey, SigningKey};
use hexa_crypto::roster::SignedRoster;
use hexa_crypto::{jcs, jws};
use serde_json::{Value, json};

use crate::verify::{
    AUDIT_PROOF_EXT, CHECKPOINT_URL, DELETED_EXT, KEYS_URL, MANIFEST_FORMAT, MANIFEST_URL,
    RECORD_URL_PREFIX, ROSTER_URL,
};

/// Name of the installed roster in the data directory.
pub const ROSTER_FILE: &str = "roster.json";
/// Largest roster file accepted.
const MAX_ROSTER_BYTES: u64 = 16 << 20;
/// Most record versions one export holds.
const MAX_VERSIONS: usize = 1_000_000;

/// Why an export or a roster installation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// No roster is installed.
    #[error("no roster is installed in {0}: run `hexa roster install FILE --root KEY` first")]
    NoRoster(String),
    /// The roster file is unreadable or invalid.
    #[error("roster {path}: {reason}")]
    Roster {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The log has no checkpoint (cannot happen after the export's own AuditEvent).
    #[error("the audit log has no checkpoint")]
    NoCheckpoint,
    /// The export is larger than this tool writes.
    #[error("the patient's record has more than {MAX_VERSIONS} versions")]
    TooLarge,
}

/// `<data-dir>/roster.json`.
pub fn roster_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ROSTER_FILE)
}

/// Reads a signed roster file (size-limited).
pub fn read_roster(path: &Path) -> Result<SignedRoster, ExportError> {
    let err = |reason: String| ExportError::Roster {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_ROSTER_BYTES {
        return Err(err(format!("larger than {MAX_ROSTER_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| err(format!("not a signed roster: {e}")))
}

/// The installed roster of a data directory.
pub fn installed_roster(data_dir: &Path) -> Result<SignedRoster, ExportError> {
    let p = roster_path(data_dir);
    if !p.exists() {
        return Err(ExportError::NoRoster(data_dir.display().to_string()));
    }
    read_roster(&p)
}

/// Checks `roster` is signed by `root` and vouches for `node` as `facility` at `now`, then
/// writes it to `<data-dir>/roster.json` (replacing an older one).
pub fn install_roster(
    data_dir: &Path,
    roster: &SignedRoster,
    root: &PublicKey,
    node: &PublicKey,
    facility: &str,
    now: u64,
) -> Result<(), ExportError> {
    let path = roster_path(data_dir);
    let err = |reason: String| ExportError::Roster {
        path: path.display().to_string(),
        reason,
    };
    let v = roster.verify(root, now).map_err(|e| err(e.to_string()))?;
    v.node_key(facility, &node.kid(), now)
        .map_err(|e| err(format!("it does not vouch for this appliance: {e}")))?;
    let text = serde_json::to_vec_pretty(roster).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn binary(full_url: &str, content_type: &str, data: &[u8]) -> Value {
    json!({
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Binary",
            "contentType": content_type,
            "data": STANDARD.encode(data),
        }
    })
}

/// Practitioners a resource names (consent actors, enrolling and countersigning workers).
fn practitioners_named(r: &Value, out: &mut BTreeSet<String>) {
    match r {
        Value::String(s) => {
            if let Some(id) = s.strip_prefix("Practitioner/") {
                let id = id.split('/').next().unwrap_or(id);
                if !id.is_empty() && id.len() <= 64 {
                    out.insert(id.to_string());
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| practitioners_named(v, out)),
        Value::Object(o) => o.values().for_each(|v| practitioners_named(v, out)),
        _ => {}
    }
}

/// The evidence JSON of a Consent (to find the countersigning Practitioner).
fn evidence(r: &Value) -> Option<Value> {
    let d = r["sourceAttachment"]["data"].as_str()?;
    serde_json::from_slice(&STANDARD.decode(d).ok()?).ok()
}

/// Builds the export of `patient_id`. `node_key` signs the manifest; `facility_id` is the
/// appliance's facility; `roster` is the installed roster.
pub async fn export_patient(
    store: &StoreHandle,
    node_key: &SigningKey,
    facility_id: &str,
    roster: &SignedRoster,
    patient_id: &str,
) -> Result<Value, ExportError> {
    let s = store.store();
    // Every resource of the compartment (current versions), then all their versions.
    let current = s.everything(patient_id)?;
    let mut keys: BTreeSet<(String, String)> = current
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    // Records since deleted (or changed to leave the compartment) are no longer found by
    // `everything`, but their earlier versions were the patient's: the patient's
    // AuditEvents name every write and disclosure of them, so each entity named there
    // whose history has a version in this patient's compartment is exported too. (Other
    // patients' records named by the same events, e.g. a search result, stay out.)
    let me = format!("Patient/{patient_id}");
    let mut q = SearchQuery::from_pairs("AuditEvent", &[("patient", &me)])?;
    q.count = usize::MAX;
    let mut named = BTreeSet::new();
    for ev in s.search(&q)?.items {
        for e in ev.resource["entity"].as_array().into_iter().flatten() {
            let Some(r) = e["what"]["reference"].as_str() else {
                continue;
            };
            let mut parts = r.split('/');
            if let (Some(ty), Some(id)) = (parts.next(), parts.next())
                && !matches!(ty, "Patient" | "AuditEvent" | "Provenance" | "Practitioner")
                && !keys.contains(&(ty.to_string(), id.to_string()))
            {
                named.insert((ty.to_string(), id.to_string()));
            }
        }
    }
    for (ty, id) in named {
        let h = match s.history(&ty, &id) {
            Ok(h) => h,
            // Entities of failed requests may name ids or types that never existed.
            Err(
                StoreError::NotFound { .. }
                | StoreError::Invalid(_)
                | StoreError::UnknownResourceType(_),
            ) => continue,
            Err(e) => return Err(e.into()),
        };
        if h.iter()
            .any(|v| !v.deleted && policy::compartment_of(v).contains(&me))
        {
            keys.insert((ty, id));
        }
        if keys.len() > MAX_VERSIONS {
            return Err(ExportError::TooLarge);
        }
    }
    let mut workers = BTreeSet::new();
    for r in &current {
        if matches!(r.resource_type.as_str(), "Consent" | "Device") {
            practitioners_named(&r.resource, &mut workers);
        }
    }
    let mut versions: Vec<Record> = Vec::new();
    for (ty, id) in &keys {
        let mut h = s.history(ty, id)?;
        h.reverse();
        for r in &h {
            if matches!(r.resource_type.as_str(), "Consent" | "Device") {
                practitioners_named(&r.resource, &mut workers);
                if let Some(ev) = evidence(&r.resource) {
                    practitioners_named(&ev, &mut workers);
                }
            }
        }
        versions.extend(h);
        if versions.len() > MAX_VERSIONS {
            return Err(ExportError::TooLarge);
        }
    }
    // Authors named in Provenance, and the Practitioners found above.
    let mut provenance = Vec::new();
    for r in &versions {
        for p in s.provenance_for(&r.versioned_reference())? {
            practitioners_named(&p.resource["agent"], &mut workers);
            provenance.push(p);
        }
    }
    for w in workers {
        if keys.insert(("Practitioner".into(), w.clone())) {
            match s.history("Practitioner", &w) {
                Ok(mut h) => {
                    h.reverse();
                    for r in &h {
                        provenance.extend(s.provenance_for(&r.versioned_reference())?);
                    }
                    versions.extend(h);
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // The export is a disclosure: audit it, then checkpoint the log including it.
    let ctx = AccessContext::system(facility_id);
    store
        .engine()
        .audit_disclosure(
            &ctx,
            Interaction::Operation,
            Some(format!("Patient/{patient_id}/$export")),
            &versions,
        )?
        .wait()
        .await?;
    let note = store
        .audit_checkpoint()
        .await?
        .ok_or(ExportError::NoCheckpoint)?;
    let origin = s.origin().to_string();
    let (body, _) = open_note(
        &note,
        &[NoteVerifier::new(&origin, s.node_public().clone())],
    )
    .map_err(|e| StoreError::Audit(e.to_string()))?;
    let cp = Checkpoint::parse_body(&body).map_err(|e| StoreError::Audit(e.to_string()))?;

    // The AuditEvents naming the patient, with their positions and proofs.
    let mut q = SearchQuery::from_pairs(
        "AuditEvent",
        &[("patient", &format!("Patient/{patient_id}"))],
    )?;
    q.count = usize::MAX;
    let events = s.search(&q)?.items;
    let mut audit_entries = Vec::new();
    let mut indexes = Vec::new();
    for ev in events {
        let Some(index) = s.audit_index(&ev.id)? else {
            continue;
        };
        if index >= cp.size {
            continue;
        }
        let proof = s.audit_inclusion_proof(index, cp.size)?;
        let mut parts = vec![
            json!({"url": "index", "valueString": index.to_string()}),
            json!({"url": "treeSize", "valueString": cp.size.to_string()}),
        ];
        parts.extend(
            proof
                .iter()
                .map(|h| json!({"url": "hash", "valueBase64Binary": STANDARD.encode(h)})),
        );
        indexes.push(index);
        audit_entries.push(json!({
            "fullUrl": format!("urn:hexa:audit:{index}"),
            "extension": [{"url": AUDIT_PROOF_EXT, "extension": parts}],
            "resource": ev.resource,
        }));
    }

    let generated_at = hexa_actors::store::time::instant(hexa_actors::store::time::now_millis());
    let records: Vec<String> = versions.iter().map(Record::versioned_reference).collect();
    let manifest = json!({
        "format": MANIFEST_FORMAT,
        "patient": format!("Patient/{patient_id}"),
        "facility": facility_id,
        "appliance": node_key.kid(),
        "generatedAt": generated_at,
        "checkpointSize": cp.size,
        "records": records,
        "auditEvents": indexes,
    });
    let canonical = jcs::canonicalize(&manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let signed_manifest = json!({
        "manifest": manifest,
        "signature": jws::sign_detached(node_key, &canonical),
    });

    let mut entries = vec![
        binary(
            MANIFEST_URL,
            "application/vnd.hexa.export-manifest+json",
            &serde_json::to_vec(&signed_manifest).unwrap_or_default(),
        ),
        binary(
            ROSTER_URL,
            "application/vnd.hexa.roster+json",
            &serde_json::to_vec(roster).unwrap_or_default(),
        ),
        binary(
            KEYS_URL,
            "application/jwk-set+json",
            &serde_json::to_vec(&hexa_crypto::keys::jwks(&[node_key.public()])).unwrap_or_default(),
        ),
        binary(CHECKPOINT_URL, "text/plain; charset=utf-8", note.as_bytes()),
    ];
    for r in &versions {
        let mut e = json!({
            "fullUrl": format!("{RECORD_URL_PREFIX}{}", r.versioned_reference()),
            "resource": r.resource,
        });
        if r.deleted {
            e["extension"] = json!([{"url": DELETED_EXT, "valueBoolean": true}]);
        }
        entries.push(e);
    }
    for p in &provenance {
        entries.push(json!({
            "fullUrl": format!("urn:hexa:provenance:{}", p.id),
            "resource": p.resource,
        }));
    }
    entries.extend(audit_entries);
    Ok(json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": generated_at,
        "meta": {"tag": [{"system": "urn:hexa:export", "code": "patient-audit-export"}]},
        "identifier": {"system": "urn:hexa:export", "value": format!("{}:{}", cp.size, patient_id)},
        "entry": entries,
    }))
}
