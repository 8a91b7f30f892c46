//! [`StoreHandle`]: the facade the HTTP layer calls. Clone + Send; every method is async,
//! takes an [`AccessContext`] (recorded in the AuditEvent) and routes by resource type to
//! the registry actor that owns it. Must be started inside a running actix `System`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::Addr;
use hexa_crypto::keyfile::ApplianceSecrets;
use serde_json::Value;

use crate::registry::{Call, Drain, Lane, LaneCall, Op, Registry, Request, Response};
use crate::store::audit::AuditEntry;
use crate::store::engine::{CreateItem, Engine, TxEntry, WriteResult};
use crate::store::pmatch::PatientMatch;
use crate::store::search::SearchQuery;
use crate::store::{
    AccessContext, Component, Record, SearchPage, Store, StoreConfig, StoreError, StoreResult,
    component_for,
};

/// One entry of a FHIR batch (entries are independent; each has its own outcome).
#[derive(Debug, Clone)]
pub enum BatchEntry {
    /// A write.
    Write(TxEntry),
    /// A read.
    Read {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
    },
    /// A search.
    Search(SearchQuery),
}

/// Outcome of one batch entry.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Written.
    Written(WriteResult),
    /// Read.
    Read(Record),
    /// Searched.
    Searched(SearchPage),
}

/// The audit log as monitoring sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStatus {
    /// Entries in the Merkle log.
    pub size: u64,
    /// Tree size of the latest signed checkpoint (0 when none was signed).
    pub checkpoint_size: u64,
    /// When the latest checkpoint was signed, unix milliseconds.
    pub checkpoint_time_ms: Option<u64>,
}

/// How many times an update without If-Match is retried when a concurrent writer wins.
const UPDATE_RETRIES: usize = 8;

/// The store facade.
#[derive(Clone)]
pub struct StoreHandle {
    registries: Arc<Vec<Addr<Registry>>>,
    /// Each pool's lane of plain creates (see [`crate::registry`]).
    lanes: Arc<Vec<Arc<Lane>>>,
    engine: Engine,
    restarts: Arc<AtomicU64>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("store", &self.engine.store)
            .finish_non_exhaustive()
    }
}

fn unexpected() -> StoreError {
    StoreError::Storage("registry replied with an unexpected response kind".into())
}

impl StoreHandle {
    /// Opens the store and starts the writer and one registry pool per component
    /// (`threads` actors each). Call inside a running actix `System`.
    pub fn start(
        config: StoreConfig,
        secrets: ApplianceSecrets,
        threads: usize,
    ) -> StoreResult<StoreHandle> {
        let store = Arc::new(Store::open(config, secrets)?);
        let engine = Engine::start(store)?;
        let restarts = Arc::new(AtomicU64::new(0));
        let lanes: Vec<Arc<Lane>> = Component::ALL.iter().map(|_| Arc::default()).collect();
        let registries = Component::ALL
            .iter()
            .zip(&lanes)
            .map(|(c, lane)| {
                Registry::start_pool(*c, engine.clone(), threads, restarts.clone(), lane.clone())
            })
            .collect();
        Ok(StoreHandle {
            registries: Arc::new(registries),
            lanes: Arc::new(lanes),
            engine,
            restarts,
        })
    }

    /// The underlying store (for verification helpers and tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.engine.store
    }

    /// The engine (store + writer).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Batches of plain creates the registries took from their lanes, and the creates in
    /// them, since the store started (see [`crate::registry`]).
    pub fn lane_counts(&self) -> (u64, u64) {
        self.lanes.iter().fold((0, 0), |(b, n), lane| {
            let (lb, ln) = lane.counts();
            (b + lb, n + ln)
        })
    }

    /// How many registry actors were restarted after a panic.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Sends a request to the registry of `c` and waits for its final response: any write
    /// or AuditEvent it depends on is committed. A stopped or restarting actor is a typed
    /// `Unavailable` error, never a hang.
    pub async fn call(
        &self,
        c: Component,
        ctx: &AccessContext,
        request: Request,
    ) -> StoreResult<Response> {
        self.dispatch(c, ctx, request).await
    }

    /// Queues a request to the registry of `c` and returns the future of its final
    /// response. The pool's queue is not bounded here: each request waits in it for a
    /// registry thread instead of in its caller, which the HTTP server's connection limits
    /// bound. A request whose registry has stopped, or stops before answering, gets
    /// `Unavailable`.
    fn dispatch(
        &self,
        c: Component,
        ctx: &AccessContext,
        request: Request,
    ) -> impl std::future::Future<Output = StoreResult<Response>> + use<> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self.engine.store.queued();
        let item = match request {
            // A plain create waits in the pool's lane, to be prepared with others; anything
            // else is a message. (Updates stay messages: through the lane, HTTP updates at
            // 64 connections lost 3-12 %, as a batch widens the window in which two
            // updates of one resource conflict; benches/README, "Session 18".)
            Request::Create {
                resource,
                author_jws,
                if_none_exist: None,
            } => Ok(CreateItem {
                ctx: ctx.clone(),
                resource,
                author_jws,
            }),
            request => Err(request),
        };
        match item {
            Ok(item) => {
                let call = LaneCall {
                    item,
                    reply,
                    queued,
                };
                // Dropped (so `answer` fails) if the pool has no actor left.
                if let Ok(true) = self.lanes[c.index()].push(call) {
                    self.registries[c.index()].do_send(Drain);
                }
            }
            // Queued even when the mailbox is over its nominal capacity; dropped (so
            // `answer` fails) if the pool has stopped.
            Err(request) => self.registries[c.index()].do_send(Call {
                op: Op {
                    ctx: ctx.clone(),
                    request,
                },
                reply,
                queued,
            }),
        }
        async move {
            answer.await.map_err(|_| {
                StoreError::Unavailable(format!("{} (no answer)", Registry::name(c)))
            })?
        }
    }

    async fn write(
        &self,
        c: Component,
        ctx: &AccessContext,
        request: Request,
    ) -> StoreResult<WriteResult> {
        match self.call(c, ctx, request).await? {
            Response::Write(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    async fn record(
        &self,
        c: Component,
        ctx: &AccessContext,
        request: Request,
    ) -> StoreResult<Record> {
        match self.call(c, ctx, request).await? {
            Response::Record(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    fn type_component(resource: &Value) -> StoreResult<Component> {
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Invalid("resourceType is missing".into()))?;
        component_for(ty)
    }

    /// Create with a server-assigned id.
    pub async fn create(
        &self,
        ctx: &AccessContext,
        resource: Value,
        author_jws: Option<String>,
    ) -> StoreResult<WriteResult> {
        let c = Self::type_component(&resource)?;
        self.write(
            c,
            ctx,
            Request::Create {
                resource,
                author_jws,
                if_none_exist: None,
            },
        )
        .await
    }

    /// Conditional create (If-None-Exist): creates unless exactly one resource matches
    /// `criteria` (then returns it with `created == false`); several matches are an error.
    pub async fn conditional_create(
        &self,
        ctx: &AccessContext,
        resource: Value,
        criteria: &[(String, String)],
    ) -> StoreResult<WriteResult> {
        let c = Self::type_component(&resource)?;
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let q = SearchQuery::parse(ty, criteria)?;
        self.write(
            c,
            ctx,
            Request::Create {
                resource,
                author_jws: None,
                if_none_exist: Some(q),
            },
        )
        .await
    }

    /// Read the current version.
    pub async fn read(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> StoreResult<Record> {
        let c = component_for(resource_type)?;
        self.record(
            c,
            ctx,
            Request::Read {
                resource_type: resource_type.into(),
                id: id.into(),
            },
        )
        .await
    }

    /// Read one version.
    pub async fn vread(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> StoreResult<Record> {
        let c = component_for(resource_type)?;
        self.record(
            c,
            ctx,
            Request::Vread {
                resource_type: resource_type.into(),
                id: id.into(),
                version,
            },
        )
        .await
    }

    /// Update (If-Match optional). Without If-Match, a concurrent update that wins the race
    /// is not the caller's conflict: the update is re-prepared on the new version.
    pub async fn update(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
        author_jws: Option<String>,
    ) -> StoreResult<WriteResult> {
        let c = component_for(resource_type)?;
        let mut attempt = 0;
        loop {
            let req = Request::Update {
                resource_type: resource_type.into(),
                id: id.into(),
                resource: resource.clone(),
                if_match,
                author_jws: author_jws.clone(),
            };
            match self.write(c, ctx, req).await {
                Err(StoreError::Conflict { .. })
                    if if_match.is_none() && attempt < UPDATE_RETRIES =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    /// Logical delete.
    pub async fn delete(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> StoreResult<WriteResult> {
        let c = component_for(resource_type)?;
        self.write(
            c,
            ctx,
            Request::Delete {
                resource_type: resource_type.into(),
                id: id.into(),
            },
        )
        .await
    }

    /// Instance history, newest first.
    pub async fn history(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> StoreResult<Vec<Record>> {
        let c = component_for(resource_type)?;
        match self
            .call(
                c,
                ctx,
                Request::History {
                    resource_type: resource_type.into(),
                    id: id.into(),
                },
            )
            .await?
        {
            Response::Records(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// Type history, newest first.
    pub async fn type_history(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        count: usize,
        offset: usize,
    ) -> StoreResult<SearchPage> {
        let c = component_for(resource_type)?;
        match self
            .call(
                c,
                ctx,
                Request::TypeHistory {
                    resource_type: resource_type.into(),
                    count,
                    offset,
                },
            )
            .await?
        {
            Response::Page(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// Search with `(name, value)` parameters (`_count`, `_offset`, `_sort` included);
    /// returns the total and one page.
    pub async fn search(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        params: &[(String, String)],
    ) -> StoreResult<SearchPage> {
        let q = SearchQuery::parse(resource_type, params)?;
        self.search_query(ctx, q).await
    }

    /// Search with a parsed query.
    pub async fn search_query(
        &self,
        ctx: &AccessContext,
        q: SearchQuery,
    ) -> StoreResult<SearchPage> {
        let c = component_for(&q.resource_type)?;
        match self.call(c, ctx, Request::Search(q)).await? {
            Response::Page(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// FHIR transaction: all entries commit together or none does.
    pub async fn transaction(
        &self,
        ctx: &AccessContext,
        entries: Vec<TxEntry>,
    ) -> StoreResult<Vec<WriteResult>> {
        let c = match entries.first() {
            Some(TxEntry::Create { resource, .. } | TxEntry::Update { resource, .. }) => {
                Self::type_component(resource)?
            }
            Some(TxEntry::Delete { resource_type, .. }) => component_for(resource_type)?,
            None => return Err(StoreError::Invalid("empty transaction".into())),
        };
        match self.call(c, ctx, Request::Transaction(entries)).await? {
            Response::Writes(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// FHIR batch: independent entries, each with its own outcome. All entries are sent
    /// before any is awaited, so their writes share group commits.
    pub async fn batch(
        &self,
        ctx: &AccessContext,
        entries: Vec<BatchEntry>,
    ) -> Vec<StoreResult<BatchOutcome>> {
        let mut sent = Vec::with_capacity(entries.len());
        for entry in entries {
            let routed = match &entry {
                BatchEntry::Write(
                    TxEntry::Create { resource, .. } | TxEntry::Update { resource, .. },
                ) => Self::type_component(resource),
                BatchEntry::Write(TxEntry::Delete { resource_type, .. })
                | BatchEntry::Read { resource_type, .. } => component_for(resource_type),
                BatchEntry::Search(q) => component_for(&q.resource_type),
            };
            let request = match entry {
                BatchEntry::Write(TxEntry::Create { resource, .. }) => Request::Create {
                    resource,
                    author_jws: None,
                    if_none_exist: None,
                },
                BatchEntry::Write(TxEntry::Update { resource, if_match }) => {
                    let ty = resource
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let id = resource
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    Request::Update {
                        resource_type: ty,
                        id,
                        resource,
                        if_match,
                        author_jws: None,
                    }
                }
                BatchEntry::Write(TxEntry::Delete { resource_type, id }) => {
                    Request::Delete { resource_type, id }
                }
                BatchEntry::Read { resource_type, id } => Request::Read { resource_type, id },
                BatchEntry::Search(q) => Request::Search(q),
            };
            sent.push(routed.map(|c| self.dispatch(c, ctx, request)));
        }
        let mut replies = Vec::with_capacity(sent.len());
        for s in sent {
            replies.push(match s {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            });
        }
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            out.push(match r {
                Ok(Response::Write(p)) => p.wait().await.map(BatchOutcome::Written),
                Ok(Response::Record(p)) => p.wait().await.map(BatchOutcome::Read),
                Ok(Response::Page(p)) => p.wait().await.map(BatchOutcome::Searched),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Patient matching ($match): candidates scoring at least `min_score` (or sharing an
    /// identifier), best first. The disclosure is audited before results are returned.
    pub async fn match_patients(
        &self,
        ctx: &AccessContext,
        patient: Value,
        min_score: f64,
        count: usize,
    ) -> StoreResult<Vec<PatientMatch>> {
        match self
            .call(
                Component::Patient,
                ctx,
                Request::Match {
                    patient,
                    min_score,
                    count,
                },
            )
            .await?
        {
            Response::Matches(p, found) => {
                p.wait().await?;
                Ok(found)
            }
            _ => Err(unexpected()),
        }
    }

    /// `Patient/{id}/$everything`: the Patient and its compartment's resources.
    pub async fn everything(
        &self,
        ctx: &AccessContext,
        patient_id: &str,
    ) -> StoreResult<Vec<Record>> {
        match self
            .call(Component::Shr, ctx, Request::Everything(patient_id.into()))
            .await?
        {
            Response::Records(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// Merges duplicate Patient `source` into golden record `target` (`Patient.link`
    /// replaced-by / replaces, `source.active = false`), atomically; returns both new versions.
    pub async fn merge_patients(
        &self,
        ctx: &AccessContext,
        source: &str,
        target: &str,
    ) -> StoreResult<Vec<WriteResult>> {
        self.link(ctx, source, target, true).await
    }

    /// Undoes a merge: removes both links and reactivates `source`; history keeps the merge.
    pub async fn unmerge_patients(
        &self,
        ctx: &AccessContext,
        source: &str,
        target: &str,
    ) -> StoreResult<Vec<WriteResult>> {
        self.link(ctx, source, target, false).await
    }

    async fn link(
        &self,
        ctx: &AccessContext,
        source: &str,
        target: &str,
        merge: bool,
    ) -> StoreResult<Vec<WriteResult>> {
        let req = Request::LinkPatients {
            source: source.into(),
            target: target.into(),
            merge,
        };
        match self.call(Component::Patient, ctx, req).await? {
            Response::Writes(p) => p.wait().await,
            _ => Err(unexpected()),
        }
    }

    /// The audit log's size and its latest checkpoint, for monitoring: a synchronous,
    /// read-only LMDB transaction (no registry actor involved, nothing disclosed).
    pub fn audit_status(&self) -> StoreResult<AuditStatus> {
        let store = &self.engine.store;
        store.with_read(|txn| {
            let size = store.frontier_in(txn)?.size();
            let (checkpoint_size, checkpoint_time_ms) =
                match store.meta.get(txn, crate::store::META_LAST_CKPT)? {
                    Some(b) if b.len() == 16 => {
                        let mut s = [0u8; 8];
                        let mut t = [0u8; 8];
                        s.copy_from_slice(&b[..8]);
                        t.copy_from_slice(&b[8..]);
                        (u64::from_be_bytes(s), Some(u64::from_be_bytes(t)))
                    }
                    _ => (0, None),
                };
            Ok(AuditStatus {
                size,
                checkpoint_size,
                checkpoint_time_ms,
            })
        })
    }

    /// The store's write policy for `ctx` writing `resource` (its `id`, when present,
    /// names the version it would replace), checked ahead of the write so that a refused
    /// client gets 403 before its body is validated (and before a reference check could
    /// tell it which resources exist). The write itself checks again when it commits.
    pub fn check_write_policy(&self, ctx: &AccessContext, resource: &Value) -> StoreResult<()> {
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Invalid("resourceType is missing".into()))?;
        let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
        let store = &self.engine.store;
        let system = ctx.is_system() && ctx.facility_id == store.config().facility_id;
        component_for(ty)?;
        store.with_read(|txn| {
            // The system context is not checked, so it reads nothing.
            let base = if system || id.is_empty() {
                None
            } else {
                match store.current_in(txn, ty, id)? {
                    Some(c) => Some(store.base_facts_in(txn, ty, id, &c)?),
                    None => None,
                }
            };
            store.authorize_write(system, &ctx.facility_id, ty, id, base.as_deref(), resource)
        })
    }

    /// Whether `resource_type/id` exists, for reference checks before a write: with
    /// `version`, whether that version was ever written (a versioned reference may point
    /// at a superseded or deleted version); without it, whether the current version is
    /// live (not deleted). Non-disclosing: it reads only the current-version pointer (or,
    /// for the audit log, its id index), never a sealed value, and answers only a boolean,
    /// so it is not an audited disclosure. Synchronous: one LMDB read transaction, no
    /// actor round trip. An unknown resource type is `UnknownResourceType`.
    pub fn exists(&self, resource_type: &str, id: &str, version: Option<u64>) -> StoreResult<bool> {
        let c = component_for(resource_type)?;
        let store = &self.engine.store;
        store.with_read(|txn| {
            if c == Component::Audit {
                let found = match resource_type {
                    "AuditEvent" => store.audit_index_of(txn, id)?.is_some(),
                    "Provenance" => store.audit_provids.get(txn, id.as_bytes())?.is_some(),
                    _ => false,
                };
                // Audit resources have a single version.
                return Ok(found && version.is_none_or(|v| v == 1));
            }
            Ok(match (store.current_in(txn, resource_type, id)?, version) {
                (None, _) => false,
                (Some(cur), None) => !cur.deleted,
                (Some(cur), Some(v)) => v >= 1 && v <= cur.version,
            })
        })
    }

    /// Forces a checkpoint if the log grew and returns the latest signed note.
    pub async fn audit_checkpoint(&self) -> StoreResult<Option<String>> {
        self.engine
            .checkpoint()?
            .await
            .map_err(|_| StoreError::WriterStopped)?
    }

    /// Audit-log entry by index.
    pub async fn audit_entry(&self, ctx: &AccessContext, index: u64) -> StoreResult<AuditEntry> {
        match self
            .call(Component::Audit, ctx, Request::AuditEntry(index))
            .await?
        {
            Response::Entry(e) => Ok(e),
            _ => Err(unexpected()),
        }
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn audit_inclusion_proof(
        &self,
        ctx: &AccessContext,
        index: u64,
        size: u64,
    ) -> StoreResult<Vec<[u8; 32]>> {
        match self
            .call(Component::Audit, ctx, Request::InclusionProof(index, size))
            .await?
        {
            Response::Proof(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }

    /// Consistency proof between two tree sizes.
    pub async fn audit_consistency_proof(
        &self,
        ctx: &AccessContext,
        old: u64,
        new: u64,
    ) -> StoreResult<Vec<[u8; 32]>> {
        match self
            .call(Component::Audit, ctx, Request::ConsistencyProof(old, new))
            .await?
        {
            Response::Proof(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }
}
