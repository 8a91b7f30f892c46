//! The supervised registry actors: one [`Registry`] pool per store component (client
//! registry, facility registry, health-worker registry, product catalogue, terminology,
//! shared health record, consent store, audit log).
//!
//! Each is an actix `SyncActor` in a [`SyncArbiter`] pool: its handlers do the blocking LMDB
//! reads and the CPU work of a write (canonicalise, sign, seal, blind-index) off the async
//! executor and hand writes to the group-commit writer. A caller sends a [`Call`] with the
//! end of a one-shot channel; the registry answers through it once the answer is final (an
//! error at once; a write, or the AuditEvent of a read, after its commit, from the
//! writer), so each request wakes its caller's executor once. Supervision: a panic inside
//! a handler is caught, the caller gets [`StoreError::Unavailable`], and the actor stops —
//! which in a `SyncContext` means the pool's factory builds a fresh actor that resumes from
//! LMDB (all durable state lives there) and serves the messages still queued. Other
//! components never notice.
//!
//! Plain creates (no If-None-Exist) take a side lane instead of the mailbox: each pool has
//! a [`Lane`] of them, and a [`Drain`] message tells the pool there is work in it. The
//! thread that handles a `Drain` takes up to [`LANE_BATCH`] creates and prepares them
//! together ([`Engine::create_many`]), so that their signatures share one field inversion
//! (`hexa_crypto::keys::SigningKey::sign_many`). One create alone is a batch of one. Each
//! create still has its own AuditEvent, writer member, answer and error; a panic answers
//! every create of the batch with `Unavailable`, as it answers the one request of a
//! `Call`. Updates stay `Call`s (see `StoreHandle::dispatch`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde_json::Value;

use crate::store::audit::{AuditEntry, Interaction};
use crate::store::engine::{CreateItem, Engine, Pending, TxEntry, WriteResult};
use crate::store::pmatch::PatientMatch;
use crate::store::search::SearchQuery;
use crate::store::{AccessContext, Component, Record, SearchPage, StoreError, StoreResult};

/// A request to a registry actor.
#[derive(Debug, Clone)]
pub enum Request {
    /// Create (optionally conditional on a search).
    Create {
        /// The resource.
        resource: Value,
        /// Author's detached JWS over the canonical bytes, if any.
        author_jws: Option<String>,
        /// If-None-Exist criteria.
        if_none_exist: Option<SearchQuery>,
    },
    /// Update / create-with-id.
    Update {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
        /// The resource.
        resource: Value,
        /// If-Match version.
        if_match: Option<u64>,
        /// Author's JWS.
        author_jws: Option<String>,
    },
    /// Logical delete.
    Delete {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
    },
    /// Read (current).
    Read {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
    },
    /// Read a version.
    Vread {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
        /// Version.
        version: u64,
    },
    /// Instance history.
    History {
        /// Type.
        resource_type: String,
        /// Id.
        id: String,
    },
    /// Type history.
    TypeHistory {
        /// Type.
        resource_type: String,
        /// Page size.
        count: usize,
        /// Offset.
        offset: usize,
    },
    /// Search.
    Search(SearchQuery),
    /// Transaction (all or nothing).
    Transaction(Vec<TxEntry>),
    /// Patient matching.
    Match {
        /// The query Patient.
        patient: Value,
        /// Minimum score.
        min_score: f64,
        /// Most candidates.
        count: usize,
    },
    /// Merge (true) or unmerge (false) duplicate Patient `source` into golden `target`.
    LinkPatients {
        /// The duplicate.
        source: String,
        /// The golden record.
        target: String,
        /// Merge or unmerge.
        merge: bool,
    },
    /// `Patient/{id}/$everything`.
    Everything(String),
    /// Audit-log entry by index.
    AuditEntry(u64),
    /// Inclusion proof (index, size).
    InclusionProof(u64, u64),
    /// Consistency proof (old, new).
    ConsistencyProof(u64, u64),
    /// Fault injection for supervision tests: the handler panics.
    #[cfg(test)]
    Panic,
}

/// A registry actor's reply.
#[derive(Debug)]
pub enum Response {
    /// One write.
    Write(Pending<WriteResult>),
    /// Transaction results.
    Writes(Pending<Vec<WriteResult>>),
    /// One record.
    Record(Pending<Record>),
    /// Several records.
    Records(Pending<Vec<Record>>),
    /// A search page.
    Page(Pending<SearchPage>),
    /// Matches (their disclosure is audited before they are returned).
    Matches(Pending<()>, Vec<PatientMatch>),
    /// An audit entry.
    Entry(AuditEntry),
    /// A Merkle proof.
    Proof(Vec<[u8; 32]>),
}

/// A request and who makes it.
#[derive(Debug, Clone)]
pub struct Op {
    /// Who asks.
    pub ctx: AccessContext,
    /// What.
    pub request: Request,
}

/// Message carrying an [`Op`] and where its final [`Response`] goes. The registry replies
/// once the response is final: at once for an error or a response that needs no commit,
/// else from the writer thread right after the commit (every [`Pending`] in it is then
/// resolved). So the caller's executor is woken once per request.
pub struct Call {
    /// The request.
    pub op: Op,
    /// The caller's end.
    pub reply: tokio::sync::oneshot::Sender<StoreResult<Response>>,
    /// Counts the call in the store's backlog until a registry thread takes it.
    pub(crate) queued: crate::store::Queued,
}

impl Message for Call {
    type Result = ();
}

/// Most writes a registry thread takes from its lane at once. The saving per signature
/// is nearly all there at 16 (`benches`: `ed25519_jws_batch`), and a batch's first write
/// waits for the batch's preparation before it reaches the writer.
pub const LANE_BATCH: usize = 16;

/// One write waiting in a pool's [`Lane`], with where its answer goes.
pub(crate) struct LaneCall {
    pub item: CreateItem,
    pub reply: tokio::sync::oneshot::Sender<StoreResult<Response>>,
    pub queued: crate::store::Queued,
}

/// A pool's lane of plain creates. Invariant: while the lane holds a write, a
/// [`Drain`] is on its way to the pool or a thread is about to take from it (the push that
/// finds the lane empty sends one; a thread that leaves writes behind sends the next).
#[derive(Default)]
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// Batches taken and writes in them (for the benches' counters).
    batches: AtomicU64,
    taken: AtomicU64,
}

#[derive(Default)]
struct LaneState {
    calls: VecDeque<LaneCall>,
    /// Live actors of the pool. The pool's threads build their actors after it starts,
    /// so the lane takes writes from the start; when the last actor is gone (the system
    /// stopped), nothing would drain it, so what is in it is dropped (its callers get
    /// `Unavailable`) and it is closed.
    actors: usize,
    closed: bool,
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        // Nothing panics while holding the lock; a poisoned lane is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a write. `Ok(true)`: the lane was empty, so the caller sends the pool a
    /// [`Drain`]. `Err`: the lane is closed (the pool has no actor left); the call is
    /// handed back.
    pub(crate) fn push(&self, call: LaneCall) -> Result<bool, Box<LaneCall>> {
        let mut st = self.state();
        if st.closed {
            return Err(Box::new(call));
        }
        st.calls.push_back(call);
        Ok(st.calls.len() == 1)
    }

    /// Takes half the writes waiting (rounded up), at most `max`; `true` when some are left
    /// behind. Half, so that under moderate load the pool's other thread gets the rest at
    /// once instead of the first batch's writes waiting for a long batch's preparation.
    fn take(&self, max: usize) -> (Vec<LaneCall>, bool) {
        let mut st = self.state();
        let n = st.calls.len().div_ceil(2).min(max);
        let batch: Vec<LaneCall> = st.calls.drain(..n).collect();
        let more = !st.calls.is_empty();
        drop(st);
        if n > 0 {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.taken.fetch_add(n as u64, Ordering::Relaxed);
        }
        (batch, more)
    }

    /// (batches taken, writes taken) since the pool started.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.taken.load(Ordering::Relaxed),
        )
    }
}

/// Tells a pool that its [`Lane`] holds writes.
pub struct Drain;

impl Message for Drain {
    type Result = ();
}

/// Sends `resp` to `reply` once every Pending in it has resolved.
fn forward(resp: Response, reply: tokio::sync::oneshot::Sender<StoreResult<Response>>) {
    fn done<T: 'static>(
        p: Pending<T>,
        reply: tokio::sync::oneshot::Sender<StoreResult<Response>>,
        wrap: fn(Pending<T>) -> Response,
    ) {
        p.on_done(move |r| {
            let _ = reply.send(Ok(wrap(Pending::ready(r))));
        });
    }
    match resp {
        Response::Write(p) => done(p, reply, Response::Write),
        Response::Writes(p) => done(p, reply, Response::Writes),
        Response::Record(p) => done(p, reply, Response::Record),
        Response::Records(p) => done(p, reply, Response::Records),
        Response::Page(p) => done(p, reply, Response::Page),
        Response::Matches(p, found) => p.on_done(move |r| {
            let _ = reply.send(Ok(Response::Matches(Pending::ready(r), found)));
        }),
        r @ (Response::Entry(_) | Response::Proof(_)) => {
            let _ = reply.send(Ok(r));
        }
    }
}

/// A registry actor: one instance per pool thread, all sharing the engine.
pub struct Registry {
    component: Component,
    engine: Engine,
    restarts: Arc<AtomicU64>,
    lane: Arc<Lane>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        // A restart builds the new actor before it drops the old one, so the count reaches
        // zero only when the pool's threads are gone.
        let left = {
            let mut st = self.lane.state();
            st.actors -= 1;
            if st.actors == 0 {
                st.closed = true;
                std::mem::take(&mut st.calls)
            } else {
                VecDeque::new()
            }
        };
        drop(left);
    }
}

impl Registry {
    /// Names of the registries, for logs (`ClientRegistry`, `FacilityRegistry`, ...).
    pub fn name(c: Component) -> &'static str {
        match c {
            Component::Patient => "ClientRegistry",
            Component::Facility => "FacilityRegistry",
            Component::Worker => "WorkerRegistry",
            Component::Product => "ProductCatalogue",
            Component::Term => "Terminology",
            Component::Shr => "SharedHealthRecord",
            Component::Consent => "ConsentStore",
            Component::Audit => "AuditLog",
        }
    }

    fn new(c: Component, engine: Engine, restarts: Arc<AtomicU64>, lane: Arc<Lane>) -> Self {
        lane.state().actors += 1;
        Registry {
            component: c,
            engine,
            restarts,
            lane,
        }
    }

    /// Starts a pool of `threads` actors of component `c`, which take plain creates from
    /// `lane`.
    pub(crate) fn start_pool(
        c: Component,
        engine: Engine,
        threads: usize,
        restarts: Arc<AtomicU64>,
        lane: Arc<Lane>,
    ) -> Addr<Registry> {
        // Named threads (`hexa-shr`, `hexa-patient`, ...) let `top -H`, `ps -L` and `perf`
        // tell the pools apart; a restarted actor is rebuilt on the same thread.
        SyncArbiter::start_with_thread_builder(
            threads.max(1),
            move || std::thread::Builder::new().name(format!("hexa-{}", c.name())),
            move || Registry::new(c, engine.clone(), restarts.clone(), lane.clone()),
        )
    }

    /// Logs a handler's panic and stops the actor; its pool's factory builds the next.
    fn panicked(&self, ctx: &mut SyncContext<Self>) {
        // Supervision: stop this actor; the SyncArbiter's factory replaces it with a
        // fresh one (state is in LMDB), which then serves the queued messages.
        self.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            registry = Registry::name(self.component),
            "handler panicked; restarting actor"
        );
        ctx.stop();
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(Registry::name(self.component).into())
    }

    fn handle_op(&mut self, op: Op) -> StoreResult<Response> {
        let e = &self.engine;
        let ctx = &op.ctx;
        Ok(match op.request {
            Request::Create {
                resource,
                author_jws,
                if_none_exist,
            } => Response::Write(e.create(ctx, resource, author_jws, if_none_exist)?),
            Request::Update {
                resource_type,
                id,
                resource,
                if_match,
                author_jws,
            } => Response::Write(e.update(
                ctx,
                &resource_type,
                &id,
                resource,
                if_match,
                author_jws,
            )?),
            Request::Delete { resource_type, id } => {
                Response::Write(e.delete(ctx, &resource_type, &id)?)
            }
            Request::Read { resource_type, id } => {
                Response::Record(e.read(ctx, &resource_type, &id)?)
            }
            Request::Vread {
                resource_type,
                id,
                version,
            } => Response::Record(e.vread(ctx, &resource_type, &id, version)?),
            Request::History { resource_type, id } => {
                Response::Records(e.history(ctx, &resource_type, &id)?)
            }
            Request::TypeHistory {
                resource_type,
                count,
                offset,
            } => Response::Page(e.type_history(ctx, &resource_type, count, offset)?),
            Request::Search(q) => Response::Page(e.search(ctx, &q)?),
            Request::Transaction(entries) => Response::Writes(e.transaction(ctx, entries)?),
            Request::Match {
                patient,
                min_score,
                count,
            } => {
                let found = e.store.match_patients(&patient, min_score, count)?;
                let found = e.store.redact_matches(ctx, found)?;
                let records: Vec<Record> = found.iter().map(|m| m.record.clone()).collect();
                let pending = e.audit_disclosure(
                    ctx,
                    Interaction::Operation,
                    Some("Patient/$match".into()),
                    &records,
                )?;
                Response::Matches(pending, found)
            }
            Request::LinkPatients {
                source,
                target,
                merge,
            } => Response::Writes(e.link_patients(ctx, &source, &target, merge)?),
            Request::Everything(id) => Response::Records(e.everything(ctx, &id)?),
            Request::AuditEntry(i) => Response::Entry(e.store.audit_entry_for(ctx, i)?),
            Request::InclusionProof(i, n) => Response::Proof(e.store.audit_inclusion_proof(i, n)?),
            Request::ConsistencyProof(o, n) => {
                Response::Proof(e.store.audit_consistency_proof(o, n)?)
            }
            #[cfg(test)]
            Request::Panic => panic!(
                "fault injection: {} handler panicked",
                Registry::name(self.component)
            ),
        })
    }
}

impl Actor for Registry {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(
            registry = Registry::name(self.component),
            "registry actor started"
        );
    }
}

impl Handler<Call> for Registry {
    type Result = ();

    fn handle(&mut self, call: Call, ctx: &mut Self::Context) -> Self::Result {
        let Call { op, reply, queued } = call;
        drop(queued);
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.handle_op(op))) {
            Ok(Ok(resp)) => forward(resp, reply),
            Ok(Err(e)) => {
                let _ = reply.send(Err(e));
            }
            Err(_) => {
                self.panicked(ctx);
                let _ = reply.send(Err(self.unavailable()));
            }
        }
    }
}

impl Handler<Drain> for Registry {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (batch, more) = self.lane.take(LANE_BATCH);
        if more {
            // Another thread of the pool can take the next batch meanwhile.
            ctx.address().do_send(Drain);
        }
        if batch.is_empty() {
            return;
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        // The batch stays in the registries' backlog until it has been handed to the
        // writer: a batch being prepared is work the writer can wait for (see
        // `writer::WAIT_BACKLOG`), as the calls waiting in a mailbox are.
        let mut backlog = Vec::with_capacity(batch.len());
        for LaneCall {
            item,
            reply,
            queued,
        } in batch
        {
            backlog.push(queued);
            replies.push(reply);
            items.push(item);
        }
        let engine = &self.engine;
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if items.iter().any(|i| i.resource.get(TEST_PANIC).is_some()) {
                panic!("fault injection: a batch of creates panicked");
            }
            let results = engine.create_many(items);
            drop(backlog);
            results
        })) {
            Ok(results) => {
                // Both have the batch's length; a reply without a result would be dropped,
                // which its caller sees as `Unavailable`.
                for (result, reply) in results.into_iter().zip(replies) {
                    match result {
                        Ok(p) => forward(Response::Write(p), reply),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            Err(_) => {
                self.panicked(ctx);
                for reply in replies {
                    let _ = reply.send(Err(self.unavailable()));
                }
            }
        }
    }
}

/// Fault injection for supervision tests: a create whose resource has this member panics
/// its batch.
#[cfg(test)]
pub(crate) const TEST_PANIC: &str = "hexaTestPanic";

#[cfg(test)]
mod tests {
    use hexa_crypto::keyfile::ApplianceSecrets;
    use hexa_crypto::keys::SigningKey;
    use hexa_crypto::seal::MasterKey;
    use serde_json::json;

    use super::*;
    use crate::handle::StoreHandle;
    use crate::store::StoreConfig;

    fn handle(dir: &std::path::Path) -> StoreHandle {
        handle_with(StoreConfig::new(dir, "node", "fac"))
    }

    fn handle_with(config: StoreConfig) -> StoreHandle {
        let secrets = ApplianceSecrets {
            node_key: SigningKey::from_seed(&[7; 32]),
            master_key: MasterKey::from_bytes([8; 32]),
        };
        StoreHandle::start(config, secrets, 2).unwrap()
    }

    /// Kills the client registry mid-load: the in-flight request that crashed it gets a
    /// typed error, every other request (queued behind it, or to other registries)
    /// succeeds, and the restarted actor serves again.
    #[actix_rt::test]
    async fn a_panicking_actor_is_restarted_and_others_keep_serving() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (h2, ctx2) = (h.clone(), ctx.clone());
            tasks.push(actix_rt::spawn(async move {
                let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
                let body = if ty == "Patient" {
                    json!({"resourceType": "Patient", "name": [{"family": format!("Load{i}")}]})
                } else {
                    json!({"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/x"}})
                };
                h2.create(&ctx2, body, None).await.map(|w| (ty, w.record.id))
            }));
            if i == 100 {
                // Let the first half get going, then crash the client registry under load.
                for _ in 0..20 {
                    actix_rt::task::yield_now().await;
                }
                let crash = h.call(Component::Patient, &ctx, Request::Panic).await;
                assert!(
                    matches!(crash, Err(StoreError::Unavailable(ref n)) if n == "ClientRegistry"),
                    "{crash:?}"
                );
            }
        }
        let mut written = Vec::new();
        for t in tasks {
            written.push(t.await.unwrap().expect("request failed"));
        }
        assert_eq!(written.len(), 200);
        assert_eq!(h.restarts(), 1);
        // The restarted registry serves again, from LMDB.
        for (ty, id) in written.iter().step_by(9) {
            let r = h.read(&ctx, ty, id).await.unwrap();
            h.store().verify(&r).unwrap();
        }
        let page = h
            .search(&ctx, "Patient", &[("family".into(), "load1".into())])
            .await
            .unwrap();
        assert!(page.total >= 11, "{}", page.total);
        // A second crash while idle also recovers.
        assert!(h.call(Component::Shr, &ctx, Request::Panic).await.is_err());
        assert!(
            h.create(
                &ctx,
                json!({"resourceType": "Observation", "status": "final"}),
                None
            )
            .await
            .is_ok()
        );
        assert_eq!(h.restarts(), 2);
        // Every call, the crashing ones included, left the registries' backlog.
        assert_eq!(h.store().backlog(), 0);
    }

    /// The writer waits for a fuller group commit only while requests queue for the
    /// registries: one caller at a time never waits, hundreds at once do, and every write
    /// is acknowledged either way.
    #[actix_rt::test]
    async fn the_writer_waits_for_more_members_only_under_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path(), "node", "fac");
        // Long enough that a wait is visible in the batch sizes on a slow machine.
        config.group_commit_wait = std::time::Duration::from_millis(20);
        config.group_commit_fill = 100_000;
        let h = handle_with(config);
        let ctx = AccessContext::system("fac");
        let stats = || {
            let s = h.engine().writer.stats();
            (
                s.waits.load(Ordering::SeqCst),
                s.commits.load(Ordering::SeqCst),
                s.members.load(Ordering::SeqCst),
            )
        };
        let observation = |i: usize| {
            json!({"resourceType": "Observation", "status": "final",
                   "subject": {"reference": format!("Patient/w{}", i % 7)}})
        };
        for i in 0..30 {
            h.create(&ctx, observation(i), None).await.unwrap();
            assert_eq!(h.store().backlog(), 0);
        }
        assert_eq!(stats().0, 0, "a lone caller waited for company");

        let (waits0, commits0, members0) = stats();
        let tasks: Vec<_> = (0..600)
            .map(|i| {
                let (h, ctx, body) = (h.clone(), ctx.clone(), observation(i));
                actix_rt::spawn(async move { h.create(&ctx, body, None).await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().expect("write failed").record.id);
        }
        let (waits, commits, members) = stats();
        assert!(
            waits > waits0,
            "600 queued writes and the writer never waited"
        );
        // Each wait lets the two registry threads prepare many members: 46–75 per commit
        // here, against 1.1–1.7 with no wait (a debug build's writer outpaces them).
        let per_commit = (members - members0) as f64 / (commits - commits0) as f64;
        assert!(per_commit >= 8.0, "{per_commit:.1} members per commit");
        assert_eq!(h.store().backlog(), 0);
        for id in ids.iter().step_by(37) {
            let r = h.read(&ctx, "Observation", id).await.unwrap();
            h.store().verify(&r).unwrap();
        }
    }

    /// A call answers only once the write it made is committed: its Pending is already
    /// resolved (so the caller is woken once, by the commit).
    #[actix_rt::test]
    async fn a_call_answers_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let members = || h.engine().writer.stats().members.load(Ordering::SeqCst);
        for i in 0..20 {
            let before = members();
            let resp = h
                .call(
                    Component::Shr,
                    &ctx,
                    Request::Create {
                        resource: json!({"resourceType": "Observation", "status": "final"}),
                        author_jws: None,
                        if_none_exist: None,
                    },
                )
                .await
                .unwrap();
            assert!(members() > before, "call {i} answered before its commit");
            let Response::Write(p) = resp else {
                panic!("not a write response");
            };
            let w = p.wait().await.unwrap();
            assert!(w.created && !w.audit_indexes.is_empty());
        }
        // A failed read answers with its error, once the failure's AuditEvent is committed.
        let e = h
            .call(
                Component::Shr,
                &ctx,
                Request::Read {
                    resource_type: "Observation".into(),
                    id: "missing".into(),
                },
            )
            .await;
        let e = match e {
            Ok(Response::Record(p)) => p.wait().await.map(|_| ()),
            other => other.map(|_| ()),
        };
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
    }

    /// Every registry thread carries its component's name (also after a restart).
    #[actix_rt::test]
    async fn registry_threads_are_named_after_their_component() {
        fn names() -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        }
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let observe = || {
            h.create(
                &ctx,
                json!({"resourceType": "Observation", "status": "final"}),
                None,
            )
        };
        observe().await.unwrap();
        assert!(h.call(Component::Shr, &ctx, Request::Panic).await.is_err());
        observe().await.unwrap();
        let names = names();
        for c in Component::ALL {
            let want = format!("hexa-{}", c.name());
            assert!(names.contains(&want), "no thread named {want}: {names:?}");
        }
    }

    /// Every task's answer, in order; fails the test if one has none within a minute (a
    /// write left in a lane would wait forever).
    async fn answers_within_a_minute<T>(tasks: Vec<actix_rt::task::JoinHandle<T>>) -> Vec<T> {
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
        .await
        .expect("a write in the lane got no answer")
    }

    /// Creates sent together are prepared in batches from the lane, and each still gets
    /// its own answer: a refused create its own error and AuditEvent, the others their
    /// records, signed as one by one.
    #[actix_rt::test]
    async fn a_batch_of_creates_answers_each_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let audit_before = h.store().audit_size().unwrap();
        let lane_before = h.lane_counts();
        let n = 300;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (h, ctx) = (h.clone(), ctx.clone());
                actix_rt::spawn(async move {
                    let body = if i % 7 == 3 {
                        json!({"resourceType": "Observation", "status": "final", "meta": "not an object"})
                    } else {
                        json!({"resourceType": "Observation", "status": "final",
                               "code": {"text": format!("batch {i}")}})
                    };
                    h.create(&ctx, body, None).await
                })
            })
            .collect();
        let answers = answers_within_a_minute(tasks).await;
        let mut created = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(w) if i % 7 != 3 => {
                    assert!(w.created);
                    assert_eq!(
                        w.record.resource["code"]["text"],
                        json!(format!("batch {i}"))
                    );
                    created.push(w.record);
                }
                Err(StoreError::Invalid(m)) if i % 7 == 3 => {
                    assert!(m.contains("meta"), "{m}")
                }
                other => panic!("create {i}: {other:?}"),
            }
        }
        let (batches, creates) = {
            let after = h.lane_counts();
            (after.0 - lane_before.0, after.1 - lane_before.1)
        };
        assert_eq!(creates, n as u64, "every plain create takes the lane");
        assert!(
            batches < creates,
            "no batch held two creates: {batches} batches"
        );
        // Each create, refused or not, appended one AuditEvent.
        assert_eq!(h.store().audit_size().unwrap() - audit_before, n as u64);
        // Each record verifies, and is what a read returns.
        for r in &created {
            h.store().verify(r).unwrap();
            let read = h.read(&ctx, "Observation", &r.id).await.unwrap();
            assert_eq!(read.jws, r.jws);
            assert_eq!(read.canonical, r.canonical);
        }
        assert_eq!(h.store().backlog(), 0);
    }

    /// Concurrent updates, each with its own outcome: an If-Match that holds, a stale one
    /// (a conflict), one retried after losing to another update of the same resource, a
    /// refused one, and an update that creates. They are calls, not lane writes.
    #[actix_rt::test]
    async fn concurrent_updates_answer_each_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let mut ids = Vec::new();
        for i in 0..40 {
            let w = h
                .create(
                    &ctx,
                    json!({"resourceType": "Observation", "status": "preliminary",
                           "code": {"text": format!("u{i}")}}),
                    None,
                )
                .await
                .unwrap();
            ids.push(w.record.id);
        }
        let lane_before = h.lane_counts();
        let body = |id: &str, status: &str| json!({"resourceType": "Observation", "id": id, "status": status});
        let mut tasks = Vec::new();
        let spawn_update = |id: String, resource: Value, if_match: Option<u64>| {
            let (h, ctx) = (h.clone(), ctx.clone());
            actix_rt::spawn(async move {
                h.update(&ctx, "Observation", &id, resource, if_match, None)
                    .await
            })
        };
        for (i, id) in ids.iter().enumerate() {
            if (10..20).contains(&i) {
                // Two updates without If-Match race for one resource: the one that loses
                // retries, and both succeed.
                for status in ["final", "amended"] {
                    tasks.push(("retry", i, spawn_update(id.clone(), body(id, status), None)));
                }
                continue;
            }
            tasks.push((
                "match",
                i,
                spawn_update(id.clone(), body(id, "final"), Some(1)),
            ));
            if i < 10 {
                tasks.push((
                    "stale",
                    i,
                    spawn_update(id.clone(), body(id, "final"), Some(7)),
                ));
            }
        }
        tasks.push((
            "refused",
            0,
            spawn_update(ids[0].clone(), body("other-id", "final"), None),
        ));
        tasks.push((
            "new",
            0,
            spawn_update(
                "client-chosen-1".into(),
                body("client-chosen-1", "final"),
                None,
            ),
        ));
        for (kind, i, t) in tasks {
            let r = tokio::time::timeout(std::time::Duration::from_secs(60), t)
                .await
                .expect("an update got no answer")
                .unwrap();
            match (kind, r) {
                ("match" | "retry", Ok(w)) => {
                    assert!(!w.created, "{kind} {i}");
                    assert!(w.record.version >= 2, "{kind} {i}");
                    h.store().verify(&w.record).unwrap();
                }
                ("stale", Err(StoreError::Conflict { expected: 7, .. })) => {}
                ("refused", Err(StoreError::Invalid(m))) => assert!(m.contains("id"), "{m}"),
                ("new", Ok(w)) => {
                    assert!(w.created);
                    assert_eq!(w.record.version, 1);
                    h.store().verify(&w.record).unwrap();
                }
                (kind, other) => panic!("{kind} {i}: {other:?}"),
            }
        }
        for (i, id) in ids.iter().enumerate() {
            let r = h.read(&ctx, "Observation", id).await.unwrap();
            let want = if (10..20).contains(&i) { 3 } else { 2 };
            assert_eq!(r.version, want, "Observation {i}");
            h.store().verify(&r).unwrap();
        }
        assert_eq!(h.lane_counts(), lane_before, "an update took the lane");
        assert_eq!(h.store().backlog(), 0);
    }

    /// A panic while a batch is prepared answers every create of that batch with
    /// `Unavailable` (none hangs), restarts the actor, and the lane keeps serving.
    #[actix_rt::test]
    async fn a_panicking_batch_answers_every_create_and_the_lane_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let ctx = AccessContext::system("fac");
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (h, ctx) = (h.clone(), ctx.clone());
                actix_rt::spawn(async move {
                    let mut body = json!({"resourceType": "Observation", "status": "final"});
                    if i == 20 {
                        body[TEST_PANIC] = json!(true);
                    }
                    h.create(&ctx, body, None).await
                })
            })
            .collect();
        let all = answers_within_a_minute(tasks).await;
        let unavailable = all
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Unavailable(n)) if n == "SharedHealthRecord"))
            .count();
        assert!(
            matches!(&all[20], Err(StoreError::Unavailable(_))),
            "{:?}",
            all[20]
        );
        assert!((1..=LANE_BATCH).contains(&unavailable), "{unavailable}");
        assert_eq!(
            all.iter().filter(|r| r.is_ok()).count(),
            64 - unavailable,
            "{all:?}"
        );
        assert_eq!(h.restarts(), 1);
        for _ in 0..3 {
            let w = h
                .create(
                    &ctx,
                    json!({"resourceType": "Observation", "status": "final"}),
                    None,
                )
                .await
                .unwrap();
            h.store().verify(&w.record).unwrap();
        }
        assert_eq!(h.store().backlog(), 0);
    }

    /// Once the system has stopped and the pools' threads are gone, a create is answered
    /// `Unavailable` instead of waiting in a lane nothing drains.
    #[test]
    fn a_create_after_the_pools_stop_is_unavailable_not_left_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let h = {
            let sys = actix_rt::System::new();
            sys.block_on(async { handle(dir.path()) })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = AccessContext::system("fac");
        for _ in 0..3 {
            let r = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    h.create(
                        &ctx,
                        json!({"resourceType": "Observation", "status": "final"}),
                        None,
                    ),
                )
                .await
            });
            match r {
                Ok(Err(StoreError::Unavailable(_))) => {}
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
    }
}
