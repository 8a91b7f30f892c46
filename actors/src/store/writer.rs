//! The group-commit writer: ONE thread owns every LMDB write transaction.
//!
//! Registry actors send it [`Member`]s (prepared versions with their audit drafts, or
//! audit drafts alone for reads and searches) over a channel. The writer drains what is
//! queued (at most `max_batch`), applies every member in one `RwTxn` — a member that fails
//! its own checks (version conflict, conditional-create ambiguity) is rejected alone and
//! leaves only a failure AuditEvent, never partial writes — persists the audit frontier,
//! signs a checkpoint when due, commits (one fsync for the whole group) and only then
//! acknowledges each member. A full map aborts the batch, grows the map and re-applies it.
//!
//! Under load the writer waits a little before applying: when the batch it drained is
//! below `StoreConfig::group_commit_fill` and at least [`WAIT_BACKLOG`] requests are
//! queued for the registries, it sleeps `StoreConfig::group_commit_wait` once and drains
//! again. A commit costs its pages at each database's right edge and two syncs whatever
//! its size, so fuller commits leave more of the CPU to the registries. Without a backlog
//! (few callers, most of them in this batch already) it never waits.
//!
//! Within a batch the members' puts and deletes are *staged* ([`Staged`]) and applied after
//! the version checks in (database, key) order, so the batch walks each B-tree left to
//! right; the audit log (ever-growing keys) is appended with `MDB_APPEND`. Only the
//! current-version pointers are written at once, because later members' checks read them;
//! a conditional create flushes the stage before its search.
//!
//! AuditEvents' search index terms are filed later, from the log ([`super::audit_index`]):
//! when the queue is empty and at least `StoreConfig::audit_index_idle_run` wait, the writer
//! commits up to `IDLE_CHUNK` of them at a time, and
//! when the unindexed tail exceeds `StoreConfig::audit_index_lag` a group commit also files
//! the excess.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;

use heed::types::Bytes;
use heed::{PutFlags, RwTxn};
use tokio::sync::oneshot;

use super::ack::{self, AckReceiver, AckSender};
use super::audit::{AuditAppender, AuditDraft, PreparedAudit, prepare_audit};
use super::audit_index::{AuditIndexer, IDLE_CHUNK};
use super::error::{StoreError, StoreResult};
use super::search::SearchQuery;
use super::{Db, PreparedWrite, Record, Store, put_prepared, time};

/// One unit of work of a group commit.
#[derive(Debug)]
pub(crate) enum Member {
    /// Versions written all or nothing (one create/update/delete, or a FHIR transaction),
    /// with their AuditEvents (prepared for success; the drafts are re-rendered in the
    /// writer only when the member fails or a conditional create finds a match).
    /// `conditional`: if-none-exist criteria of a create.
    Versions {
        versions: Vec<PreparedWrite>,
        audits: Vec<AuditDraft>,
        prepared_audits: Vec<PreparedAudit>,
        conditional: Option<SearchQuery>,
    },
    /// AuditEvents alone (reads, searches).
    Audit(Vec<PreparedAudit>),
}

/// What a committed member produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The member's versions and audit entries are durable.
    Written {
        /// Log indexes of its AuditEvents.
        audit_indexes: Vec<u64>,
    },
    /// A conditional create matched exactly this existing resource; nothing was written
    /// except the AuditEvent.
    Existing {
        /// The matching resource.
        record: Box<Record>,
        /// Log indexes of its AuditEvents.
        audit_indexes: Vec<u64>,
    },
}

impl Outcome {
    /// Audit log indexes written for this member.
    pub fn audit_indexes(&self) -> &[u64] {
        match self {
            Outcome::Written { audit_indexes } | Outcome::Existing { audit_indexes, .. } => {
                audit_indexes
            }
        }
    }
}

// Jobs move through the channel once; boxing the large variant would cost an allocation
// per write for no gain.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    Member(Member, AckSender<StoreResult<Outcome>>),
    Checkpoint(oneshot::Sender<StoreResult<Option<String>>>),
    Shutdown,
}

/// Statistics of the writer (for benches and metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Commits done.
    pub commits: std::sync::atomic::AtomicU64,
    /// Members applied.
    pub members: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent applying (puts, audit) before commit.
    pub apply_nanos: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent in commit (fsync).
    pub commit_nanos: std::sync::atomic::AtomicU64,
    /// AuditEvents whose search index terms were filed (deferred indexing).
    pub audit_indexed: std::sync::atomic::AtomicU64,
    /// Idle-time indexing commits done.
    pub index_commits: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent in idle-time indexing commits (apply and commit).
    pub index_nanos: std::sync::atomic::AtomicU64,
    /// Postings filed from the index journal into `shr.index` ([`super::journal`]).
    pub journal_filed: std::sync::atomic::AtomicU64,
    /// Nanoseconds group commits spent filing them (their puts and the journal's clearing;
    /// part of `apply_nanos`).
    pub journal_nanos: std::sync::atomic::AtomicU64,
    /// Group commits for which the writer waited for more members
    /// (`StoreConfig::group_commit_wait`).
    pub waits: std::sync::atomic::AtomicU64,
    /// The writer thread's nice value once it started (`i32::MIN` before, or where it
    /// cannot be read).
    pub nice: std::sync::atomic::AtomicI32,
}

/// Handle to the writer thread. Dropping every handle stops the thread after it drained
/// the queue.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Job>,
    stats: Arc<WriterStats>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// Capacity of the writer queue (back-pressure beyond it).
const QUEUE: usize = 65_536;

impl Writer {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<Store>) -> StoreResult<Writer> {
        let (appender, indexer) = store.with_read(|txn| {
            let appender = AuditAppender::load(&store, txn)?;
            let indexer = AuditIndexer::load(&store, txn, appender.frontier.size())?;
            Ok((appender, indexer))
        })?;
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(WriterStats {
            nice: std::sync::atomic::AtomicI32::new(i32::MIN),
            ..WriterStats::default()
        });
        let st = stats.clone();
        let nice = store.config.writer_nice;
        let thread = std::thread::Builder::new()
            .name("hexa-store-writer".into())
            .spawn(move || {
                let now = set_thread_nice(nice);
                st.nice.store(now, std::sync::atomic::Ordering::Relaxed);
                run(store, rx, appender, indexer, st)
            })?;
        Ok(Writer {
            tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Writer statistics.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    fn send(&self, job: Job) -> StoreResult<()> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => {
                self.tx.send(job).map_err(|_| StoreError::WriterStopped)
            }
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterStopped),
        }
    }

    /// Queues a member; the receiver resolves after its group commit.
    pub(crate) fn submit(&self, m: Member) -> StoreResult<AckReceiver<StoreResult<Outcome>>> {
        let (tx, rx) = ack::channel();
        self.send(Job::Member(m, tx))?;
        Ok(rx)
    }

    /// Forces a checkpoint (if the log grew since the last one); resolves to the latest note.
    pub(crate) fn checkpoint(&self) -> StoreResult<oneshot::Receiver<StoreResult<Option<String>>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Checkpoint(tx))?;
        Ok(rx)
    }

    /// Stops the writer after everything queued before this call was committed, and waits
    /// for its thread. Later submissions through other handles fail with `WriterStopped`.
    pub fn shutdown(&self) {
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = self.tx.send(Job::Shutdown);
            let _ = h.join();
        }
    }
}

/// Asks for nice value `nice` for the calling thread (Linux nice values are per thread) and
/// returns the thread's nice value afterwards. 0 asks for nothing. A refusal (no
/// `CAP_SYS_NICE`, `RLIMIT_NICE` too low, a seccomp filter) is logged and not an error:
/// the writer then runs at the default priority, only slower under load.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_thread_nice(nice: i32) -> i32 {
    // SAFETY: gettid, setpriority and getpriority take and return plain integers; they
    // touch no memory of ours. `who` = this thread's id selects only this thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if nice != 0 && libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "store writer: priority not raised (needs CAP_SYS_NICE or RLIMIT_NICE, e.g. \
                 LimitNICE= in the unit); it runs at the default priority"
            );
        }
        // getpriority may return -1 as a value: clear errno first and check it after.
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            i32::MIN
        } else {
            now
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_thread_nice(_nice: i32) -> i32 {
    i32::MIN
}

fn run(
    store: Arc<Store>,
    rx: Receiver<Job>,
    mut appender: AuditAppender,
    mut indexer: AuditIndexer,
    stats: Arc<WriterStats>,
) {
    let max = store.config.max_batch.max(1);
    // Freeing a batch's buffers is real work; a janitor thread does it off the commit path.
    let (janitor, garbage) = std::sync::mpsc::channel::<Vec<Member>>();
    let janitor_thread = std::thread::Builder::new()
        .name("hexa-store-janitor".into())
        .spawn(move || while garbage.recv().is_ok() {})
        .ok();
    let mut stop = false;
    // Idle-time indexing stops after a failure until the next group commit succeeds.
    let mut index_ok = true;
    let idle_run = store.config.audit_index_idle_run;
    while !stop {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty)
                if idle_run > 0 && index_ok && indexer.tail() as u64 >= idle_run =>
            {
                // Nothing queued: file a chunk of the audit tail, then look again.
                let t0 = std::time::Instant::now();
                match index_idle(&store, &mut indexer) {
                    Ok(n) => {
                        use std::sync::atomic::Ordering::Relaxed;
                        stats.audit_indexed.fetch_add(n as u64, Relaxed);
                        stats.index_commits.fetch_add(1, Relaxed);
                        stats
                            .index_nanos
                            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit indexing failed");
                        index_ok = false;
                    }
                }
                continue;
            }
            Err(TryRecvError::Empty) => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Err(TryRecvError::Disconnected) => break,
        };
        let mut jobs = Vec::new();
        let mut next = Some(job);
        let mut waited = false;
        loop {
            while let Some(j) = next.take() {
                if matches!(j, Job::Shutdown) {
                    stop = true;
                    break;
                }
                jobs.push(j);
                if jobs.len() < max {
                    next = rx.try_recv().ok();
                }
            }
            // Under load, wait once for the members the registries are preparing (see
            // `StoreConfig::group_commit_wait`). Sleeping rather than blocking on the
            // queue: a blocked receiver would be woken by every member that arrives.
            if stop || waited || !should_wait(&store, jobs.len()) {
                break;
            }
            waited = true;
            std::thread::sleep(store.config.group_commit_wait);
            stats
                .waits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        if !jobs.is_empty() {
            let (done, ok) = process(&store, &mut appender, &mut indexer, jobs, &stats);
            index_ok |= ok;
            if janitor_thread.is_some() {
                let _ = janitor.send(done);
            }
        }
    }
    drop(janitor);
    if let Some(t) = janitor_thread {
        let _ = t.join();
    }
}

/// Fewest requests queued for the registries (`Store::backlog`) at which the writer waits
/// for a fuller group commit: fewer means the callers are few and mostly in this batch
/// already, so waiting would only delay them.
pub const WAIT_BACKLOG: usize = 8;

/// Whether the writer, having drained `n` members, waits for more before committing:
/// waiting is on, the batch is below its fill and the registries have a backlog.
fn should_wait(store: &Store, n: usize) -> bool {
    let c = &store.config;
    !c.group_commit_wait.is_zero()
        && n < c.group_commit_fill.min(c.max_batch)
        && store.backlog() >= WAIT_BACKLOG
}

enum Res {
    Member(StoreResult<Outcome>),
    Checkpoint,
}

/// Files the oldest tail entries (at most [`IDLE_CHUNK`]) in their own commit; returns how
/// many.
fn index_idle(store: &Store, indexer: &mut AuditIndexer) -> StoreResult<usize> {
    let n = indexer.tail().min(IDLE_CHUNK);
    let mut attempt = 0;
    loop {
        if let Err(e) = store.grow_if_needed(n * 2048 + (1 << 20)) {
            tracing::error!(error = %e, "map growth failed");
        }
        let res = (|| -> StoreResult<()> {
            let mut wtxn = store.env.write_txn()?;
            let mut staged = Staged::default();
            indexer.stage(store, &mut wtxn, &mut staged, n)?;
            staged.flush(&mut wtxn)?;
            wtxn.commit()?;
            Ok(())
        })();
        match res {
            Ok(()) => break,
            Err(StoreError::MapFull) if attempt < 4 => {
                attempt += 1;
                store.grow_after_full()?;
            }
            Err(e) => return Err(e),
        }
    }
    indexer.filed(n, Vec::new());
    Ok(n)
}

/// Applies and commits one batch, replies, and returns the members for freeing and whether
/// the commit succeeded.
fn process(
    store: &Store,
    appender: &mut AuditAppender,
    indexer: &mut AuditIndexer,
    jobs: Vec<Job>,
    stats: &WriterStats,
) -> (Vec<Member>, bool) {
    let mut done = Vec::with_capacity(jobs.len());
    use std::sync::atomic::Ordering::Relaxed;
    let bytes: usize = jobs
        .iter()
        .map(|j| match j {
            Job::Member(Member::Versions { versions, .. }, _) => versions
                .iter()
                .map(|p| p.value.len() * 2 + p.prov_sealed.len() + p.add_index.len() * 96 + 2048)
                .sum(),
            _ => 2048,
        })
        .sum();
    let mut result = Err(StoreError::MapFull);
    for _attempt in 0..16 {
        if let Err(e) = store.grow_if_needed(bytes * 2 + (1 << 20)) {
            tracing::error!(error = %e, "map growth failed");
        }
        let saved = appender.clone();
        let t0 = std::time::Instant::now();
        result = apply(store, appender, indexer, &jobs, stats, t0);
        match &result {
            Err(StoreError::MapFull) => {
                *appender = saved;
                if let Err(e) = store.grow_after_full() {
                    tracing::error!(error = %e, "map growth failed");
                    break;
                }
            }
            Err(_) => {
                *appender = saved;
                break;
            }
            Ok((_, filed)) => {
                stats.commits.fetch_add(1, Relaxed);
                stats.members.fetch_add(jobs.len() as u64, Relaxed);
                stats.audit_indexed.fetch_add(*filed as u64, Relaxed);
                indexer.filed(*filed, std::mem::take(&mut appender.fresh));
                break;
            }
        }
    }
    let ok = result.is_ok();
    match result {
        Ok((results, _)) => {
            let latest = results
                .iter()
                .any(|r| matches!(r, Res::Checkpoint))
                .then(|| store.latest_checkpoint());
            for (job, res) in jobs.into_iter().zip(results) {
                match (job, res) {
                    (Job::Member(m, tx), Res::Member(r)) => {
                        tx.send(r);
                        done.push(m);
                    }
                    (Job::Checkpoint(tx), _) => {
                        let _ = tx.send(latest.clone().unwrap_or(Ok(None)));
                    }
                    (Job::Member(_, tx), Res::Checkpoint) => {
                        tx.send(Err(StoreError::Storage("writer bookkeeping".into())));
                    }
                    (Job::Shutdown, _) => {}
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed");
            for job in jobs {
                match job {
                    Job::Member(_, tx) => {
                        tx.send(Err(e.clone()));
                    }
                    Job::Checkpoint(tx) => {
                        let _ = tx.send(Err(e.clone()));
                    }
                    Job::Shutdown => {}
                }
            }
        }
    }
    (done, ok)
}

/// Applies one batch in one transaction and commits it; returns the members' results and
/// how many audit tail entries it filed.
fn apply<'a>(
    store: &Store,
    appender: &mut AuditAppender,
    indexer: &'a AuditIndexer,
    jobs: &'a [Job],
    stats: &WriterStats,
    t0: std::time::Instant,
) -> StoreResult<(Vec<Res>, usize)> {
    let wtxn = store.env.write_txn()?;
    let txn = wtxn.id() as u64;
    let res = apply_in(store, appender, indexer, jobs, stats, t0, wtxn);
    if res.is_err() {
        // Nothing of this transaction committed: neither may its index journal changes.
        store.journal.undo(txn);
    }
    res
}

/// The largest journal record buffer the writer keeps for the next commit (a transaction
/// Bundle of thousands of resources may need more once; that buffer is then freed).
const JOURNAL_RECORD_KEPT: usize = 4 << 20;

thread_local! {
    /// The writer thread's buffer for a commit's index journal record, kept with its
    /// capacity from one commit to the next: a record of 100 KiB or more, built up from
    /// empty for every commit, had the writer copying into freshly grown memory (3 % of all
    /// samples in a Patient-create profile, on the copy of each posting's key).
    static JOURNAL_RECORD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`apply`] in its write transaction `wtxn`.
fn apply_in<'a>(
    store: &Store,
    appender: &mut AuditAppender,
    indexer: &'a AuditIndexer,
    jobs: &'a [Job],
    stats: &WriterStats,
    t0: std::time::Instant,
    mut wtxn: RwTxn,
) -> StoreResult<(Vec<Res>, usize)> {
    use std::sync::atomic::Ordering::Relaxed;
    let txn = wtxn.id() as u64;
    let mut staged = Staged {
        journal: JOURNAL_RECORD.take(),
        ..Staged::default()
    };
    let mut results = Vec::with_capacity(jobs.len());
    let mut force_ckpt = false;
    for job in jobs {
        match job {
            Job::Member(m, _) => results.push(Res::Member(apply_member(
                store,
                &mut wtxn,
                &mut staged,
                appender,
                m,
            )?)),
            Job::Checkpoint(_) => {
                force_ckpt = true;
                results.push(Res::Checkpoint);
            }
            Job::Shutdown => results.push(Res::Checkpoint),
        }
    }
    // Audit tail beyond the lag: file the excess in this commit.
    let filed = indexer.forced(appender.frontier.size(), store.config.audit_index_lag);
    indexer.stage(store, &mut wtxn, &mut staged, filed)?;
    staged.flush(&mut wtxn)?;
    if staged.stamps > 0 {
        store
            .meta
            .put(&mut wtxn, super::META_STAMPS, &staged.stamps.to_be_bytes())?;
    }
    journal_commit(store, &mut wtxn, &staged, stats)?;
    appender.persist(store, &mut wtxn)?;
    appender.maybe_checkpoint(store, &mut wtxn, time::now_millis(), force_ckpt)?;
    let t1 = std::time::Instant::now();
    wtxn.commit()?;
    store.journal.committed(txn);
    let mut record = std::mem::take(&mut staged.journal);
    if record.capacity() <= JOURNAL_RECORD_KEPT {
        record.clear();
        JOURNAL_RECORD.set(record);
    }
    stats
        .apply_nanos
        .fetch_add((t1 - t0).as_nanos() as u64, Relaxed);
    stats
        .commit_nanos
        .fetch_add(t1.elapsed().as_nanos() as u64, Relaxed);
    Ok((results, filed))
}

/// Appends this commit's index journal record and, once the view holds
/// `index_journal_lag` entries (live postings and removed ones), files the live postings
/// into their components' indexes (in key order), at most `index_filing_chunk` of them per
/// commit; the commit that files the last chunk deletes the journal's records the filing
/// covered (see [`super::journal`]).
fn journal_commit(
    store: &Store,
    wtxn: &mut RwTxn,
    staged: &Staged,
    stats: &WriterStats,
) -> StoreResult<()> {
    let txn = wtxn.id() as u64;
    if !staged.journal.is_empty() {
        store.journal_db.put_with_flags(
            wtxn,
            PutFlags::APPEND,
            &txn.to_be_bytes(),
            &staged.journal,
        )?;
    }
    let journal = &store.journal;
    if !journal.filing() {
        let pending = journal.pending();
        if pending == 0 || pending < store.config.index_journal_lag {
            return Ok(());
        }
        journal.begin_filing(txn);
    }
    let t0 = std::time::Instant::now();
    let Some((keys, last, start)) = journal.next_chunk(txn, store.config.index_filing_chunk) else {
        return Ok(());
    };
    // Keys start with their resource type, and each type has one component: sorted keys
    // come in runs of one type, each put through one cursor.
    let type_of = |k: &[u8]| -> usize { k.iter().position(|b| *b == 0).unwrap_or(k.len()) };
    let mut rest = &keys[..];
    while let Some(first) = rest.first() {
        let ty = &first[..type_of(first)];
        let run = rest.iter().take_while(|k| &k[..type_of(k)] == ty).count();
        let name = std::str::from_utf8(ty).unwrap_or_default();
        let c = super::route::component_for(name)?;
        if !super::journal::journaled(c) {
            return Err(StoreError::Storage(format!(
                "shr.journal: a posting of {name}, which is not journaled"
            )));
        }
        put_run(
            store.dbs(c).index,
            wtxn,
            rest[..run]
                .iter()
                .map(|k| (k.as_slice(), &[][..], PutFlags::empty())),
        )?;
        rest = &rest[run..];
    }
    if last {
        // The records of the transactions up to `start` hold what the filing covered.
        let through = start.to_be_bytes();
        let range = (
            std::ops::Bound::Unbounded,
            std::ops::Bound::Included(&through[..]),
        );
        store.journal_db.delete_range(wtxn, &range)?;
    }
    use std::sync::atomic::Ordering::Relaxed;
    stats.journal_filed.fetch_add(keys.len() as u64, Relaxed);
    stats
        .journal_nanos
        .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    Ok(())
}

/// Applies one member. Outer error: fatal for the batch; inner: this member is rejected.
/// Its puts are staged; a conditional member first flushes what is staged, as its search
/// must see the earlier members of the batch.
fn apply_member<'a>(
    store: &Store,
    wtxn: &mut RwTxn,
    staged: &mut Staged<'a>,
    appender: &mut AuditAppender,
    m: &'a Member,
) -> StoreResult<StoreResult<Outcome>> {
    match m {
        Member::Audit(events) => {
            let mut idx = Vec::new();
            for ev in events {
                idx.push(appender.append(store, staged, ev)?);
            }
            Ok(Ok(Outcome::Written { audit_indexes: idx }))
        }
        Member::Versions {
            versions,
            audits,
            prepared_audits,
            conditional,
        } => {
            if conditional.is_some() && staged.len() > 0 {
                staged.flush(wtxn)?;
            }
            match check(store, wtxn, versions, conditional.as_ref())? {
                Check::Fail(e) => {
                    let msg = e.to_string();
                    for d in audits {
                        appender.append_owned(
                            store,
                            staged,
                            prepare_audit(store, d, Some(&msg))?,
                        )?;
                    }
                    Ok(Err(e))
                }
                Check::Existing(record) => {
                    let mut idx = Vec::new();
                    for d in audits {
                        let mut d = d.clone();
                        d.entities.clear();
                        d.patients.clear();
                        d.touch(&record);
                        idx.push(appender.append_owned(
                            store,
                            staged,
                            prepare_audit(store, &d, None)?,
                        )?);
                    }
                    Ok(Ok(Outcome::Existing {
                        record,
                        audit_indexes: idx,
                    }))
                }
                Check::Ok => {
                    for p in versions {
                        put_prepared(store, wtxn, staged, p)?;
                    }
                    let mut idx = Vec::new();
                    for ev in prepared_audits {
                        idx.push(appender.append(store, staged, ev)?);
                    }
                    Ok(Ok(Outcome::Written { audit_indexes: idx }))
                }
            }
        }
    }
}

enum Check {
    Ok,
    Existing(Box<Record>),
    Fail(StoreError),
}

fn check(
    store: &Store,
    wtxn: &RwTxn,
    versions: &[PreparedWrite],
    conditional: Option<&SearchQuery>,
) -> StoreResult<Check> {
    let mut seen = HashSet::new();
    for p in versions {
        let r = p;
        if !seen.insert((r.resource_type.as_str(), r.id.as_str())) {
            return Ok(Check::Fail(StoreError::Invalid(format!(
                "{}/{} appears more than once in the transaction",
                r.resource_type, r.id
            ))));
        }
        let current = store
            .current_in(wtxn, &r.resource_type, &r.id)?
            .map(|c| c.version)
            .unwrap_or(0);
        if current != p.base {
            return Ok(Check::Fail(StoreError::Conflict {
                resource_type: r.resource_type.clone(),
                id: r.id.clone(),
                expected: p.base,
                current,
            }));
        }
    }
    if let Some(q) = conditional {
        let page = store.search_in(wtxn, q)?;
        match page.total {
            0 => {}
            1 => {
                if let Some(r) = page.items.into_iter().next() {
                    return Ok(Check::Existing(Box::new(r)));
                }
            }
            n => return Ok(Check::Fail(StoreError::MultipleMatches(n))),
        }
    }
    Ok(Check::Ok)
}

/// What a staged operation does to its key.
#[derive(Debug)]
pub(crate) enum StagedOp<'a> {
    /// Put (overwrite) a value.
    Put(Cow<'a, [u8]>),
    /// Put a value whose key is greater than every key of its database (`MDB_APPEND`).
    Append(Cow<'a, [u8]>),
    /// Delete the key (absent keys are not an error).
    Delete,
}

/// The puts and deletes of a group commit, staged so they can be applied in key order per
/// database: sorted keys walk each B-tree left to right, so consecutive operations share
/// the cursor path and the pages they dirty instead of jumping between random pages.
/// Operations on an equal key keep their submission order (the sort breaks ties by
/// submission index), so a delete and a re-put of one index key by two members of a batch
/// resolve as if applied one by one.
#[derive(Default)]
pub(crate) struct Staged<'a> {
    ops: Vec<(u8, Db, Cow<'a, [u8]>, StagedOp<'a>)>,
    /// This commit's record of the index journal (see [`super::journal`]).
    pub(crate) journal: Vec<u8>,
    /// The greatest version stamp staged ([`super::META_STAMPS`]), 0 if none.
    pub(crate) stamps: u64,
}

impl<'a> Staged<'a> {
    /// Stages `op` on `key` of `db`; `slot` orders databases (any stable number per db).
    pub(crate) fn push(&mut self, slot: u8, db: Db, key: Cow<'a, [u8]>, op: StagedOp<'a>) {
        self.ops.push((slot, db, key, op));
    }

    /// Number of staged operations.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// Applies every staged operation in (database, key) order and empties the stage.
    ///
    /// The sort runs over small `(slot, key, submission index)` triples instead of the
    /// operations themselves, and is unstable: the index makes every triple distinct, so the
    /// order is the one a stable sort of the operations would give. (A stable sort of the
    /// operations cost the writer about 1 µs more per create; see benches/README.)
    pub(crate) fn flush(&mut self, wtxn: &mut RwTxn) -> StoreResult<()> {
        let applied = apply_in_key_order(&self.ops, wtxn);
        self.ops.clear();
        applied
    }
}

/// Applies `ops` in (slot, key, submission) order. The puts of one database between two
/// deletes go through one cursor ([`put_run`]).
fn apply_in_key_order(
    ops: &[(u8, Db, Cow<'_, [u8]>, StagedOp<'_>)],
    wtxn: &mut RwTxn,
) -> StoreResult<()> {
    let mut order: Vec<(u8, &[u8], u32)> = ops
        .iter()
        .enumerate()
        .map(|(i, (slot, _, key, _))| (*slot, key.as_ref(), i as u32))
        .collect();
    order.sort_unstable();
    let mut rest = &order[..];
    while let Some(&(slot, key, i)) = rest.first() {
        let (_, db, _, op) = &ops[i as usize];
        let puts = rest
            .iter()
            .take_while(|(s, _, j)| *s == slot && !matches!(ops[*j as usize].3, StagedOp::Delete))
            .count();
        if puts == 0 {
            db.delete(wtxn, key)?;
            rest = &rest[1..];
            continue;
        }
        debug_assert!(!matches!(op, StagedOp::Delete));
        put_run(
            *db,
            wtxn,
            rest[..puts]
                .iter()
                .map(|&(_, key, j)| match &ops[j as usize].3 {
                    StagedOp::Put(v) => (key, v.as_ref(), PutFlags::empty()),
                    StagedOp::Append(v) => (key, v.as_ref(), PutFlags::APPEND),
                    StagedOp::Delete => unreachable!("a run holds no delete"),
                }),
        )?;
        rest = &rest[puts..];
    }
    Ok(())
}

/// Puts `(key, value, flags)` into `db`, keys in ascending order, through one cursor.
///
/// `mdb_put` opens a cursor for each put, so every put walks the B-tree from its root.
/// `mdb_cursor_put` on a cursor that already points at a leaf first compares the key with
/// that leaf's first and last keys, and searches only that leaf when it falls between
/// them; sorted keys mostly land on the leaf of the put before them. Otherwise the two
/// calls do the same (no `MDB_CURRENT`: an existing key's value is replaced).
#[allow(unsafe_code)]
pub(crate) fn put_run<'k>(
    db: Db,
    wtxn: &mut RwTxn,
    ops: impl IntoIterator<Item = (&'k [u8], &'k [u8], PutFlags)>,
) -> StoreResult<()> {
    let mut cursor = db.iter_mut(wtxn)?;
    for (key, value, flags) in ops {
        // SAFETY: heed marks cursor puts unsafe because a key or value borrowed from the
        // database would dangle once the put changes its pages. `key` and `value` are the
        // writer's own buffers, and nothing read through this cursor outlives the put.
        unsafe { cursor.put_current_with_options::<Bytes>(flags, key, value)? };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use heed::types::Bytes;
    use heed::{CommitOrAbort, Database};
    use proptest::prelude::*;

    use super::{Staged, StagedOp};
    use crate::store::Db;

    /// One staged operation: (database, key, value to put or `None` to delete).
    type Op = (u8, u8, Option<u8>);

    /// Databases `a` and `b` of `env`.
    fn two_databases(env: &heed::Env<heed::WithoutTls>) -> [Db; 2] {
        let wtxn = env.write_txn().unwrap();
        env.create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let a: Database<'_, Bytes, Bytes> = opener.create_database(wtxn, Some("a"))?;
            let b: Database<'_, Bytes, Bytes> = opener.create_database(wtxn, Some("b"))?;
            Ok(CommitOrAbort::<_, ()>::Commit([a, b]))
        })
        .unwrap()
        .commit()
        .unwrap()
    }

    /// Stages `ops` (as the members of a batch would) in one transaction and returns what
    /// each database holds after the flush.
    fn flushed(ops: &[Op]) -> [BTreeMap<Vec<u8>, Vec<u8>>; 2] {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::open_env(dir.path(), 1 << 20).unwrap();
        let dbs = two_databases(&env);
        let mut wtxn = env.write_txn().unwrap();
        let mut staged = Staged::default();
        for &(db, key, value) in ops {
            // Slots in reverse database order: the flush must order by slot, not by push.
            let slot = 10 - db;
            let op = match value {
                Some(v) => StagedOp::Put(Cow::Owned(vec![v])),
                None => StagedOp::Delete,
            };
            staged.push(slot, dbs[db as usize], Cow::Owned(vec![b'k', key]), op);
        }
        assert_eq!(staged.len(), ops.len());
        staged.flush(&mut wtxn).unwrap();
        assert_eq!(staged.len(), 0, "the flush empties the stage");
        wtxn.commit().unwrap();
        let rtxn = env.read_txn().unwrap();
        dbs.map(|db| {
            db.iter(&rtxn)
                .unwrap()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect()
        })
    }

    /// Applies `ops` one by one, in submission order.
    fn in_order(ops: &[Op]) -> [BTreeMap<Vec<u8>, Vec<u8>>; 2] {
        let mut out = [BTreeMap::new(), BTreeMap::new()];
        for &(db, key, value) in ops {
            let k = vec![b'k', key];
            match value {
                Some(v) => out[db as usize].insert(k, vec![v]),
                None => out[db as usize].remove(&k),
            };
        }
        out
    }

    /// A delete and a re-put of one key within a batch end as the last one submitted.
    #[test]
    fn equal_keys_resolve_in_submission_order() {
        let ops = [
            (0, 1, Some(1)),
            (0, 1, None),
            (1, 2, None),
            (0, 1, Some(2)),
            (1, 2, Some(7)),
        ];
        assert_eq!(flushed(&ops), in_order(&ops));
        assert_eq!(flushed(&ops)[0].get(&b"k\x01"[..]), Some(&vec![2]));
        let ops = [(0, 1, Some(1)), (0, 1, Some(3)), (0, 1, None)];
        assert!(flushed(&ops)[0].is_empty());
    }

    /// Operations on databases of many pages, already holding keys: the flush's cursor
    /// runs move between leaves (and split them), and the result is what applying every
    /// operation in submission order gives. Keys are 12–60 bytes and values up to 300, so
    /// a few thousand of them fill hundreds of pages.
    #[test]
    fn a_flush_over_many_pages_equals_submission_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::open_env(dir.path(), 1 << 28).unwrap();
        let dbs = two_databases(&env);
        let mut model = [BTreeMap::new(), BTreeMap::new()];
        for round in 0..12 {
            let mut ops = Vec::new();
            for _ in 0..1500 {
                let db = next(2) as usize;
                let key: Vec<u8> = format!("{:012}", next(4000))
                    .into_bytes()
                    .into_iter()
                    .chain(std::iter::repeat_n(b'x', next(48) as usize))
                    .collect();
                let value = (next(5) > 0).then(|| vec![round as u8; next(300) as usize]);
                ops.push((db, key, value));
            }
            let mut wtxn = env.write_txn().unwrap();
            let mut staged = Staged::default();
            for (db, key, value) in &ops {
                let op = match value {
                    Some(v) => StagedOp::Put(Cow::Borrowed(&v[..])),
                    None => StagedOp::Delete,
                };
                staged.push(*db as u8, dbs[*db], Cow::Borrowed(&key[..]), op);
                match value {
                    Some(v) => model[*db].insert(key.clone(), v.clone()),
                    None => model[*db].remove(key),
                };
            }
            staged.flush(&mut wtxn).unwrap();
            wtxn.commit().unwrap();
            let rtxn = env.read_txn().unwrap();
            for (db, want) in dbs.iter().zip(&model) {
                let got: BTreeMap<Vec<u8>, Vec<u8>> = db
                    .iter(&rtxn)
                    .unwrap()
                    .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                    .collect();
                assert_eq!(&got, want, "round {round}");
            }
        }
        let rtxn = env.read_txn().unwrap();
        let stat = dbs[0].stat(&rtxn).unwrap();
        assert!(stat.leaf_pages > 50, "{stat:?}: the test needs many leaves");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A flush in key order leaves the databases as applying every operation in
        /// submission order would.
        #[test]
        fn flush_equals_submission_order(
            ops in proptest::collection::vec((0u8..2, 0u8..6, proptest::option::of(any::<u8>())), 0..60)
        ) {
            prop_assert_eq!(flushed(&ops), in_order(&ops));
        }
    }
}
