//! The store's operations as the registry actors run them: read and prepare on the calling
//! thread (blocking LMDB reads, canonicalisation, signing, sealing, blind indexes), then
//! hand the result to the group-commit writer and return a [`Pending`] that resolves once
//! the change — or, for reads and searches, the AuditEvent of the disclosure — is durable.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::ack::AckReceiver;
use super::audit::{AccessContext, AuditDraft, Interaction, prepare_audit};
use super::error::{StoreError, StoreResult};
use super::format::Current;
use super::route::{client_writable, component_for, validate_id};
use super::search::SearchQuery;
use super::writer::{Member, Outcome, Writer};
use super::{Record, SearchPage, Store, VersionSpec, new_id, policy, time};

/// One unconditional create of a batch ([`Engine::create_many`]).
#[derive(Debug)]
pub struct CreateItem {
    /// Who creates.
    pub ctx: AccessContext,
    /// The resource.
    pub resource: Value,
    /// The author's detached JWS over its canonical bytes, if any.
    pub author_jws: Option<String>,
}

/// A result that becomes available after the group commit that makes it durable.
pub struct Pending<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    /// Waiting for the writer; `then` turns its outcome into the result.
    Commit {
        rx: AckReceiver<StoreResult<Outcome>>,
        then: Box<dyn FnOnce(Outcome) -> StoreResult<T> + Send>,
    },
    /// Already resolved (forwarded by a registry after the commit).
    Ready(StoreResult<T>),
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    fn new(
        rx: AckReceiver<StoreResult<Outcome>>,
        then: impl FnOnce(Outcome) -> StoreResult<T> + Send + 'static,
    ) -> Self {
        Pending {
            inner: Inner::Commit {
                rx,
                then: Box::new(then),
            },
        }
    }

    /// A Pending that is already resolved to `r`.
    pub(crate) fn ready(r: StoreResult<T>) -> Self {
        Pending {
            inner: Inner::Ready(r),
        }
    }

    /// The same commit, with `f` applied to its result.
    fn map<U>(self, f: impl FnOnce(T) -> StoreResult<U> + Send + 'static) -> Pending<U>
    where
        T: 'static,
    {
        match self.inner {
            Inner::Commit { rx, then } => Pending::new(rx, move |o| then(o).and_then(f)),
            Inner::Ready(r) => Pending::ready(r.and_then(f)),
        }
    }

    /// Waits (async) for the commit.
    pub async fn wait(self) -> StoreResult<T> {
        match self.inner {
            Inner::Commit { rx, then } => {
                let outcome = rx.await.ok_or(StoreError::WriterStopped)??;
                then(outcome)
            }
            Inner::Ready(r) => r,
        }
    }

    /// Waits (blocking the thread) for the commit. Not for async executors.
    pub fn wait_blocking(self) -> StoreResult<T> {
        match self.inner {
            Inner::Commit { rx, then } => {
                let outcome = rx.recv_blocking().ok_or(StoreError::WriterStopped)??;
                then(outcome)
            }
            Inner::Ready(r) => r,
        }
    }

    /// Runs `f` with the result once the commit is durable: on the writer thread, right
    /// after the commit (so `f` must be short and must not submit to the writer), or here
    /// at once if the result is already there.
    pub(crate) fn on_done(self, f: impl FnOnce(StoreResult<T>) + Send + 'static)
    where
        T: 'static,
    {
        match self.inner {
            Inner::Commit { rx, then } => rx.then(move |r| {
                f(r.ok_or(StoreError::WriterStopped)
                    .and_then(|r| r)
                    .and_then(then))
            }),
            Inner::Ready(r) => f(r),
        }
    }
}

/// The one result of a single-version write.
fn first_write(ws: Vec<WriteResult>) -> StoreResult<WriteResult> {
    ws.into_iter()
        .next()
        .ok_or_else(|| StoreError::Storage("empty write result".into()))
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteResult {
    /// The version now current (for a conditional create that matched: the existing one).
    pub record: Record,
    /// True if this write created the resource.
    pub created: bool,
    /// Audit log indexes of the AuditEvents recording the write.
    pub audit_indexes: Vec<u64>,
}

/// One entry of a FHIR transaction.
#[derive(Debug, Clone)]
pub enum TxEntry {
    /// POST: create with a server-assigned id. `full_url` (e.g. `urn:uuid:...`) lets other
    /// entries reference it; such references are rewritten to `Type/id`.
    Create {
        /// The resource.
        resource: Value,
        /// The entry's fullUrl.
        full_url: Option<String>,
    },
    /// PUT: update (or create with a client id), optionally with If-Match.
    Update {
        /// The resource (its `resourceType` and `id` name the target).
        resource: Value,
        /// Expected current version.
        if_match: Option<u64>,
    },
    /// DELETE.
    Delete {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
    },
}

/// Store + writer: what a registry actor needs.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The store.
    pub store: Arc<Store>,
    /// The group-commit writer.
    pub writer: Writer,
}

fn resource_type_of(resource: &Value) -> StoreResult<String> {
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Invalid("resourceType is missing".into()))?;
    component_for(ty)?;
    if !client_writable(ty) {
        return Err(StoreError::Invalid(format!(
            "{ty} resources are written by the appliance only"
        )));
    }
    Ok(ty.to_string())
}

fn deletion_body(ty: &str, id: &str) -> Value {
    json!({"resourceType": ty, "id": id})
}

/// Rewrites `{"reference": "<fullUrl>"}` to the assigned `Type/id`.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = x
                    && let Some(to) = map.get(s.as_str())
                {
                    *s = to.clone();
                } else {
                    rewrite_references(x, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_references(x, map)),
        _ => {}
    }
}

impl Engine {
    /// Opens the writer for a store.
    pub fn start(store: Arc<Store>) -> StoreResult<Engine> {
        let writer = Writer::start(store.clone())?;
        Ok(Engine { store, writer })
    }

    /// Orderly close: stops the writer (after committing what is queued) and closes the
    /// LMDB environment. Every other clone of this engine and of its `Arc<Store>` must be
    /// dropped first; otherwise this returns an error after `timeout`.
    pub fn close(self, timeout: std::time::Duration) -> StoreResult<()> {
        let Engine { store, writer } = self;
        writer.shutdown();
        drop(writer);
        let closing = store.env.clone().prepare_for_closing();
        drop(store);
        if closing.wait_timeout(timeout) {
            Ok(())
        } else {
            Err(StoreError::Storage(
                "the store is still in use; it was not closed".into(),
            ))
        }
    }

    /// Records a failed interaction and returns a Pending that yields `e` after the audit
    /// entry is durable.
    fn fail<T: 'static>(&self, mut draft: AuditDraft, e: StoreError) -> StoreResult<Pending<T>> {
        draft.failure = Some(e.to_string());
        let ev = prepare_audit(&self.store, &draft, None)?;
        let rx = self.writer.submit(Member::Audit(vec![ev]))?;
        Ok(Pending::new(rx, move |_| Err(e)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spec(
        &self,
        ty: &str,
        id: &str,
        base: Option<Current>,
        resource: Value,
        deleted: bool,
        author_jws: Option<String>,
        ctx: &AccessContext,
    ) -> VersionSpec {
        VersionSpec {
            resource_type: ty.to_string(),
            id: id.to_string(),
            base,
            resource,
            deleted,
            author: author_jws
                .as_ref()
                .and(ctx.practitioner.as_ref())
                .map(|p| format!("Practitioner/{p}")),
            author_jws,
            now: time::now_millis(),
            source: ctx.facility_id.clone(),
            system: ctx.is_system() && ctx.facility_id == self.store.config.facility_id,
        }
    }

    fn submit_versions(
        &self,
        prepared: Vec<super::Prepared>,
        audits: Vec<AuditDraft>,
        conditional: Option<SearchQuery>,
        created: Vec<bool>,
    ) -> StoreResult<Pending<Vec<WriteResult>>> {
        let (writes, records): (Vec<super::PreparedWrite>, Vec<Record>) =
            prepared.into_iter().map(|p| (p.write, p.record)).unzip();
        let prepared_audits = audits
            .iter()
            .map(|d| prepare_audit(&self.store, d, None))
            .collect::<StoreResult<Vec<_>>>()?;
        let rx = self.writer.submit(Member::Versions {
            versions: writes,
            audits,
            prepared_audits,
            conditional,
        })?;
        Ok(Pending::new(rx, move |o| match o {
            Outcome::Written { audit_indexes } => Ok(records
                .into_iter()
                .zip(created)
                .map(|(record, created)| WriteResult {
                    record,
                    created,
                    audit_indexes: audit_indexes.clone(),
                })
                .collect()),
            Outcome::Existing {
                record,
                audit_indexes,
            } => Ok(vec![WriteResult {
                record: *record,
                created: false,
                audit_indexes,
            }]),
        }))
    }

    /// The registry-thread half of a create with a server-assigned id: the AuditEvent's
    /// draft, and the version prepared (id, policy, canonical bytes, signature, seals,
    /// index keys, Provenance) or the error the draft is to record. An RNG failure while
    /// drawing the id is returned as is, unaudited, as before.
    fn prepare_create(
        &self,
        ctx: &AccessContext,
        resource: Value,
        author_jws: Option<String>,
        if_none_exist: Option<&SearchQuery>,
    ) -> StoreResult<(AuditDraft, StoreResult<super::Prepared>)> {
        let (mut draft, unsigned) =
            self.prepare_create_unsigned(ctx, resource, author_jws, if_none_exist)?;
        let prepared = unsigned.and_then(|u| self.store.sign_version(u));
        if let Ok(p) = &prepared {
            draft.touch_prepared(p);
        }
        Ok((draft, prepared))
    }

    /// [`Engine::prepare_create`] up to the signature ([`super::Store::prepare_unsigned`]).
    /// A failure to open the read snapshot is the draft's error, audited like a refusal.
    fn prepare_create_unsigned(
        &self,
        ctx: &AccessContext,
        resource: Value,
        author_jws: Option<String>,
        if_none_exist: Option<&SearchQuery>,
    ) -> StoreResult<(AuditDraft, StoreResult<super::Unsigned>)> {
        let draft = AuditDraft::new(Interaction::Create, ctx);
        let ty = match resource_type_of(&resource) {
            Ok(t) => t,
            Err(e) => return Ok((draft, Err(e))),
        };
        if let Some(q) = if_none_exist
            && q.resource_type != ty
        {
            let e = StoreError::Invalid("If-None-Exist criteria name another type".into());
            return Ok((draft, Err(e)));
        }
        let id = new_id()?;
        let spec = self.spec(&ty, &id, None, resource, false, author_jws, ctx);
        let unsigned = self
            .store
            .with_read(|txn| self.store.prepare_unsigned(txn, spec));
        Ok((draft, unsigned))
    }

    /// Create with a server-assigned id; `if_none_exist` makes it conditional.
    pub fn create(
        &self,
        ctx: &AccessContext,
        resource: Value,
        author_jws: Option<String>,
        if_none_exist: Option<SearchQuery>,
    ) -> StoreResult<Pending<WriteResult>> {
        let (draft, prepared) =
            self.prepare_create(ctx, resource, author_jws, if_none_exist.as_ref())?;
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return self.fail(draft, e),
        };
        // Only a conditional create can answer with an existing record, which is a read of
        // it: only then does the completion need the reader's context.
        let reader = if_none_exist.as_ref().map(|_| ctx.clone());
        // The writer's check takes the criteria only: whatever paging or `_total` came with
        // them, it needs the exact number of matches and the first of them.
        let if_none_exist = if_none_exist.map(|mut q| {
            (q.no_total, q.offset, q.count) = (false, 0, 1);
            q
        });
        self.submit_create(draft, prepared, if_none_exist, reader)
    }

    /// Several unconditional creates, each as [`Engine::create`] would make it (its own
    /// AuditEvent, its own writer member, its own answer, its own error), with their
    /// signatures made in one batch ([`super::Store::sign_versions`]). A registry thread
    /// takes them from its pool's lane ([`crate::registry`]).
    pub fn create_many(&self, items: Vec<CreateItem>) -> Vec<StoreResult<Pending<WriteResult>>> {
        self.prepare_many(items)
            .into_iter()
            .map(|prepared| {
                let (draft, prepared) = prepared?;
                match prepared {
                    Ok(p) => self.submit_create(draft, p, None, None),
                    Err(e) => self.fail(draft, e),
                }
            })
            .collect()
    }

    /// The registry-thread half of [`Engine::create_many`]: each create prepared up to its
    /// signature ([`Engine::prepare_create`]'s first half), then the signatures in one batch.
    fn prepare_many(
        &self,
        items: Vec<CreateItem>,
    ) -> Vec<StoreResult<(AuditDraft, StoreResult<super::Prepared>)>> {
        // Each item reads in a snapshot of its own, as a single create does: the resize gate
        // that a snapshot holds is not kept across the batch.
        let drafted = items
            .into_iter()
            .map(|it| self.prepare_create_unsigned(&it.ctx, it.resource, it.author_jws, None));
        let mut unsigned = Vec::new();
        let mut slots = Vec::new();
        for d in drafted {
            slots.push(match d {
                Ok((draft, Ok(u))) => {
                    unsigned.push(u);
                    Ok((draft, None))
                }
                Ok((draft, Err(e))) => Ok((draft, Some(e))),
                Err(e) => Err(e),
            });
        }
        let mut signed = self.store.sign_versions(unsigned);
        slots
            .into_iter()
            .map(|slot| {
                let (mut draft, refused) = slot?;
                if let Some(e) = refused {
                    return Ok((draft, Err(e)));
                }
                let prepared = signed.next().ok_or_else(|| {
                    StoreError::Storage("a batch of creates lost a signature".into())
                })?;
                if let Ok(p) = &prepared {
                    draft.touch_prepared(p);
                }
                Ok((draft, prepared))
            })
            .collect()
    }

    /// Hands a prepared create and its AuditEvent to the writer; `reader` is the context of
    /// a conditional create, whose answer may be an existing record (a disclosure).
    fn submit_create(
        &self,
        draft: AuditDraft,
        prepared: super::Prepared,
        if_none_exist: Option<SearchQuery>,
        reader: Option<AccessContext>,
    ) -> StoreResult<Pending<WriteResult>> {
        let p = self.submit_versions(vec![prepared], vec![draft], if_none_exist, vec![true])?;
        let store = self.store.clone();
        Ok(p.map(move |ws| {
            let w = first_write(ws)?;
            if !w.created {
                let reader = reader.as_ref().ok_or_else(|| {
                    StoreError::Storage("an unconditional create matched an existing record".into())
                })?;
                store.disclose_one(reader, w.record.clone())?;
            }
            Ok(w)
        }))
    }

    /// The registry-thread half of [`Engine::create_many`], without the writer:
    /// everything the creates prepare (ids, policy, canonical bytes, signatures, seals,
    /// index keys, Provenance, AuditEvents), then dropped. Nothing is written or disclosed. For the
    /// `budget` bench, which times it on one thread against the required primitives;
    /// returns the sealed bytes prepared.
    #[doc(hidden)]
    pub fn prepare_create_unsubmitted(
        &self,
        ctx: &AccessContext,
        resources: Vec<Value>,
    ) -> StoreResult<usize> {
        let items = resources
            .into_iter()
            .map(|resource| CreateItem {
                ctx: ctx.clone(),
                resource,
                author_jws: None,
            })
            .collect();
        let mut bytes = 0;
        for prepared in self.prepare_many(items) {
            let (draft, prepared) = prepared?;
            let prepared = prepared?;
            let audit = prepare_audit(&self.store, &draft, None)?;
            bytes +=
                prepared.write.value.len() + prepared.write.prov_sealed.len() + audit.stored.len();
        }
        Ok(bytes)
    }

    /// Update (or create with a client-chosen id). `if_match`: expected current version.
    pub fn update(
        &self,
        ctx: &AccessContext,
        ty: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
        author_jws: Option<String>,
    ) -> StoreResult<Pending<WriteResult>> {
        let mut draft = AuditDraft::new(Interaction::Update, ctx);
        draft.entities.push(format!("{ty}/{id}"));
        let checked = resource_type_of(&resource).and_then(|rt| {
            validate_id(id)?;
            if rt != ty {
                return Err(StoreError::Invalid(format!(
                    "resourceType {rt} does not match the URL type {ty}"
                )));
            }
            match resource.get("id").and_then(Value::as_str) {
                Some(rid) if rid != id => Err(StoreError::Invalid(format!(
                    "resource id {rid} does not match the URL id {id}"
                ))),
                _ => Ok(()),
            }
        });
        if let Err(e) = checked {
            return self.fail(draft, e);
        }
        let prepared = self.store.with_read(|txn| {
            let cur = self.store.current_in(txn, ty, id)?;
            let base = cur.map_or(0, |c| c.version);
            if let Some(m) = if_match
                && m != base
            {
                return Err(StoreError::Conflict {
                    resource_type: ty.into(),
                    id: id.into(),
                    expected: m,
                    current: base,
                });
            }
            self.store.prepare_version(
                txn,
                self.spec(ty, id, cur, resource, false, author_jws, ctx),
            )
        });
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return self.fail(draft, e),
        };
        let created = prepared.write.base == 0;
        draft.interaction = if created {
            Interaction::Create
        } else {
            Interaction::Update
        };
        draft.entities.clear();
        draft.touch_prepared(&prepared);
        let p = self.submit_versions(vec![prepared], vec![draft], None, vec![created])?;
        Ok(p.map(first_write))
    }

    /// Logical delete: a new version with `deleted = true`. Deleting a deleted resource is a
    /// no-op that returns the deletion version.
    pub fn delete(
        &self,
        ctx: &AccessContext,
        ty: &str,
        id: &str,
    ) -> StoreResult<Pending<WriteResult>> {
        let mut draft = AuditDraft::new(Interaction::Delete, ctx);
        draft.entities.push(format!("{ty}/{id}"));
        if let Err(e) = component_for(ty).and_then(|_| {
            if client_writable(ty) {
                Ok(())
            } else {
                Err(StoreError::Invalid(format!("{ty} cannot be deleted")))
            }
        }) {
            return self.fail(draft, e);
        }
        let r = self.store.with_read(|txn| {
            let cur = self
                .store
                .current_in(txn, ty, id)?
                .ok_or_else(|| StoreError::NotFound {
                    resource_type: ty.into(),
                    id: id.into(),
                })?;
            if cur.deleted {
                let rec = self.store.current_version_in(txn, ty, id, &cur)?;
                return Ok(Err(rec));
            }
            self.store
                .prepare_version(
                    txn,
                    self.spec(ty, id, Some(cur), deletion_body(ty, id), true, None, ctx),
                )
                .map(Ok)
        });
        match r {
            Err(e) => self.fail(draft, e),
            Ok(Err(existing)) => {
                draft.touch(&existing);
                let ev = prepare_audit(&self.store, &draft, None)?;
                let rx = self.writer.submit(Member::Audit(vec![ev]))?;
                Ok(Pending::new(rx, move |o| {
                    Ok(WriteResult {
                        record: existing,
                        created: false,
                        audit_indexes: o.audit_indexes().to_vec(),
                    })
                }))
            }
            Ok(Ok(prepared)) => {
                draft.entities.clear();
                // The deletion body has no subject: this names the old version's patients.
                draft.touch_prepared(&prepared);
                let p = self.submit_versions(vec![prepared], vec![draft], None, vec![false])?;
                Ok(p.map(first_write))
            }
        }
    }

    /// A FHIR transaction: every entry commits, or none does.
    pub fn transaction(
        &self,
        ctx: &AccessContext,
        entries: Vec<TxEntry>,
    ) -> StoreResult<Pending<Vec<WriteResult>>> {
        let mut tx_draft = AuditDraft::new(Interaction::Transaction, ctx);
        match self.prepare_transaction(ctx, entries) {
            Err(e) => self.fail(tx_draft, e),
            Ok((prepared, mut drafts, created)) => {
                for p in &prepared {
                    tx_draft.touch_prepared(p);
                }
                drafts.insert(0, tx_draft);
                self.submit_versions(prepared, drafts, None, created)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare_transaction(
        &self,
        ctx: &AccessContext,
        entries: Vec<TxEntry>,
    ) -> StoreResult<(Vec<super::Prepared>, Vec<AuditDraft>, Vec<bool>)> {
        if entries.is_empty() {
            return Err(StoreError::Invalid("empty transaction".into()));
        }
        // Assign ids to creates and map their fullUrls.
        let mut map = HashMap::new();
        let mut plan = Vec::new();
        for e in entries {
            match e {
                TxEntry::Create { resource, full_url } => {
                    let ty = resource_type_of(&resource)?;
                    let id = new_id()?;
                    if let Some(u) = full_url {
                        map.insert(u, format!("{ty}/{id}"));
                    }
                    plan.push((ty, id, Some(resource), None, true));
                }
                TxEntry::Update { resource, if_match } => {
                    let ty = resource_type_of(&resource)?;
                    let id = resource
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| StoreError::Invalid("update entry without id".into()))?
                        .to_string();
                    validate_id(&id)?;
                    plan.push((ty, id, Some(resource), if_match, false));
                }
                TxEntry::Delete { resource_type, id } => {
                    component_for(&resource_type)?;
                    plan.push((resource_type, id, None, None, false));
                }
            }
        }
        self.store.with_read(|txn| {
            let mut unsigned = Vec::new();
            let mut interactions = Vec::new();
            let mut created = Vec::new();
            for (ty, id, resource, if_match, is_create) in plan {
                let cur = if is_create {
                    None
                } else {
                    self.store.current_in(txn, &ty, &id)?
                };
                let base = cur.map(|c| c.version).unwrap_or(0);
                if let Some(m) = if_match
                    && m != base
                {
                    return Err(StoreError::Conflict {
                        resource_type: ty,
                        id,
                        expected: m,
                        current: base,
                    });
                }
                let (body, deleted, interaction) = match resource {
                    Some(mut r) => {
                        rewrite_references(&mut r, &map);
                        (
                            r,
                            false,
                            if base == 0 {
                                Interaction::Create
                            } else {
                                Interaction::Update
                            },
                        )
                    }
                    None => {
                        match cur {
                            None => {
                                return Err(StoreError::NotFound {
                                    resource_type: ty,
                                    id,
                                });
                            }
                            Some(c) if c.deleted => continue,
                            Some(_) => {}
                        }
                        (deletion_body(&ty, &id), true, Interaction::Delete)
                    }
                };
                unsigned.push(
                    self.store.prepare_unsigned(
                        txn,
                        self.spec(&ty, &id, cur, body, deleted, None, ctx),
                    )?,
                );
                interactions.push(interaction);
                created.push(base == 0);
            }
            if unsigned.is_empty() {
                return Err(StoreError::Invalid(
                    "transaction has nothing to write".into(),
                ));
            }
            // The entries' signatures, in one batch.
            let prepared = self
                .store
                .sign_versions(unsigned)
                .collect::<StoreResult<Vec<_>>>()?;
            let drafts = prepared
                .iter()
                .zip(interactions)
                .map(|(p, interaction)| {
                    let mut d = AuditDraft::new(interaction, ctx);
                    d.touch_prepared(p);
                    d
                })
                .collect();
            Ok((prepared, drafts, created))
        })
    }

    /// Merges duplicate Patient `source` into golden record `target` (`merge == true`):
    /// `source` gets `link: replaced-by target` and `active: false`, `target` gets
    /// `link: replaces source`, in one transaction. `merge == false` unmerges: both links are
    /// removed and `source` is active again. Both states stay in the history.
    pub fn link_patients(
        &self,
        ctx: &AccessContext,
        source: &str,
        target: &str,
        merge: bool,
    ) -> StoreResult<Pending<Vec<WriteResult>>> {
        let mut draft = AuditDraft::new(Interaction::Operation, ctx);
        let op = if merge { "merge" } else { "unmerge" };
        draft.query = Some(format!("Patient/{source}/${op}?target={target}"));
        if source == target {
            return self.fail(
                draft,
                StoreError::Invalid("a patient cannot be merged into itself".into()),
            );
        }
        let plan = (|| -> StoreResult<Vec<TxEntry>> {
            // Merging returns both records: the reader must be allowed to read them.
            let s = (self.store)
                .disclose_one(ctx, self.store.read("Patient", source)?)?
                .value;
            let t = (self.store)
                .disclose_one(ctx, self.store.read("Patient", target)?)?
                .value;
            let with_links = |r: &Record, other: &str, kind: &str| -> Value {
                let mut body = r.resource.clone();
                let other_ref = format!("Patient/{other}");
                let mut links: Vec<Value> = body
                    .get("link")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|l| l["other"]["reference"] != json!(other_ref))
                    .collect();
                if merge {
                    links.push(json!({"other": {"reference": other_ref}, "type": kind}));
                }
                if let Some(obj) = body.as_object_mut() {
                    if links.is_empty() {
                        obj.remove("link");
                    } else {
                        obj.insert("link".into(), Value::Array(links));
                    }
                    if kind == "replaced-by" {
                        obj.insert("active".into(), json!(!merge));
                    }
                }
                body
            };
            Ok(vec![
                TxEntry::Update {
                    resource: with_links(&s, target, "replaced-by"),
                    if_match: Some(s.version),
                },
                TxEntry::Update {
                    resource: with_links(&t, source, "replaces"),
                    if_match: Some(t.version),
                },
            ])
        })();
        match plan {
            Ok(entries) => self.transaction(ctx, entries),
            Err(e) => self.fail(draft, e),
        }
    }

    /// Audits a disclosure the policy already screened ([`policy`]): every record and the
    /// decision that let it out are named in the AuditEvent, which is durable before the
    /// value is handed out.
    fn audited_read<T: Send + 'static>(
        &self,
        mut draft: AuditDraft,
        result: StoreResult<policy::Disclosure<T>>,
    ) -> StoreResult<Pending<T>> {
        match result {
            Err(e) => self.fail(draft, e),
            Ok(d) => {
                for r in &d.records {
                    draft.touch(r);
                }
                for dec in &d.decisions {
                    draft.decided(dec);
                }
                let ev = prepare_audit(&self.store, &draft, None)?;
                let rx = self.writer.submit(Member::Audit(vec![ev]))?;
                let v = d.value;
                Ok(Pending::new(rx, move |_| Ok(v)))
            }
        }
    }

    /// Read the current version; the AuditEvent is durable before the record is returned.
    pub fn read(&self, ctx: &AccessContext, ty: &str, id: &str) -> StoreResult<Pending<Record>> {
        let mut draft = AuditDraft::new(Interaction::Read, ctx);
        let r = (self.store.read(ty, id))
            .and_then(|r| self.store.disclose_one_noting(ctx, r, &mut draft));
        self.audited_read(draft, r)
    }

    /// Read one version.
    pub fn vread(
        &self,
        ctx: &AccessContext,
        ty: &str,
        id: &str,
        version: u64,
    ) -> StoreResult<Pending<Record>> {
        let mut draft = AuditDraft::new(Interaction::Vread, ctx);
        let r = (self.store.vread(ty, id, version))
            .and_then(|r| self.store.disclose_one_noting(ctx, r, &mut draft));
        if r.is_err() && draft.entities.is_empty() {
            draft.entities.push(format!("{ty}/{id}/_history/{version}"));
        }
        self.audited_read(draft, r)
    }

    /// Instance history, newest first.
    pub fn history(
        &self,
        ctx: &AccessContext,
        ty: &str,
        id: &str,
    ) -> StoreResult<Pending<Vec<Record>>> {
        let mut draft = AuditDraft::new(Interaction::History, ctx);
        let r = self
            .store
            .history(ty, id)
            .and_then(|v| self.store.disclose_history(ctx, v));
        if r.is_err() {
            draft.entities.push(format!("{ty}/{id}"));
        }
        self.audited_read(draft, r)
    }

    /// Type history, newest first, paged.
    pub fn type_history(
        &self,
        ctx: &AccessContext,
        ty: &str,
        count: usize,
        offset: usize,
    ) -> StoreResult<Pending<SearchPage>> {
        let mut draft = AuditDraft::new(Interaction::History, ctx);
        draft.query = Some(format!("{ty}/_history?_count={count}&_offset={offset}"));
        let r = self.store.disclose_type_history(ctx, ty, count, offset);
        self.audited_read(draft, r)
    }

    /// Search; every returned resource and its patient are named in the AuditEvent.
    pub fn search(&self, ctx: &AccessContext, q: &SearchQuery) -> StoreResult<Pending<SearchPage>> {
        let mut draft = AuditDraft::new(Interaction::Search, ctx);
        draft.query = Some(q.describe());
        let r = self.store.disclose_search(ctx, q);
        self.audited_read(draft, r)
    }

    /// `Patient/{id}/$everything`, audited like a search.
    pub fn everything(
        &self,
        ctx: &AccessContext,
        patient_id: &str,
    ) -> StoreResult<Pending<Vec<Record>>> {
        let mut draft = AuditDraft::new(Interaction::Operation, ctx);
        draft.query = Some(format!("Patient/{patient_id}/$everything"));
        let r = self
            .store
            .everything(patient_id)
            .and_then(|v| self.store.disclose_all(ctx, v));
        if r.is_err() {
            draft.patients.push(format!("Patient/{patient_id}"));
        }
        self.audited_read(draft, r)
    }

    /// Audits an operation whose result the caller computed from store data (e.g. $match).
    pub fn audit_disclosure(
        &self,
        ctx: &AccessContext,
        interaction: Interaction,
        query: Option<String>,
        records: &[Record],
    ) -> StoreResult<Pending<()>> {
        let mut draft = AuditDraft::new(interaction, ctx);
        draft.query = query;
        let r = self
            .store
            .disclose_all(ctx, records.to_vec())
            .map(|d| policy::Disclosure {
                records: d.records,
                decisions: d.decisions,
                value: (),
            });
        self.audited_read(draft, r)
    }

    /// Forces a checkpoint if the log grew; resolves to the latest signed note.
    pub fn checkpoint(&self) -> StoreResult<oneshot::Receiver<StoreResult<Option<String>>>> {
        self.writer.checkpoint()
    }
}
