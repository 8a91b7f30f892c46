//! The store: one LMDB environment (heed) per data directory, sealed and signed versioned
//! records, blind search indexes, Provenance and the Merkle audit log.
//!
//! Reads ([`Store::read`], [`Store::search`], ...) are synchronous and run on the registry
//! actors' threads. Writes are *prepared* on those threads (canonicalise, sign, seal, blind
//! index: the CPU work, in parallel) and then applied by the single group-commit writer
//! ([`writer`]), which checks versions, writes and appends the AuditEvents in one LMDB
//! transaction per batch. AuditEvents' search terms are filed later, in sorted runs, by the
//! same writer ([`audit_index`]); AuditEvent searches scan the unfiled tail, so they stay
//! exact.

pub(crate) mod ack;
pub mod audit;
pub mod audit_index;
pub(crate) mod bases;
pub mod compress;
pub mod consent;
pub mod engine;
pub mod error;
pub mod format;
pub(crate) mod journal;
pub mod params;
pub mod pmatch;
pub mod policy;
pub mod route;
pub mod search;
pub mod time;
pub(crate) mod upgrade;
pub mod writer;

#[cfg(test)]
mod audit_canon_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, CompactionOption, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls,
};
use hexa_crypto::keyfile::ApplianceSecrets;
use hexa_crypto::keys::{PublicKey, SigningKey};
use hexa_crypto::seal::{Aad, BlindIndexKey, SealKey};
use hexa_crypto::{jcs, jws};
use serde_json::{Value, json};

pub use audit::AccessContext;
use bases::BaseFacts;
pub use error::{StoreError, StoreResult};
use format::{Current, Envelope, FORMAT_VERSION, VersionHead};
pub use route::{Component, component_for};

/// Raw LMDB database of byte keys and values.
pub type Db = Database<'static, Bytes, Bytes>;

/// Default [`StoreConfig::writer_nice`].
pub const DEFAULT_WRITER_NICE: i32 = -10;

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Appliance data directory; the environment lives in `<data_dir>/store/`.
    pub data_dir: PathBuf,
    /// Initial LMDB map size in bytes (grown automatically; rounded to pages).
    pub initial_map_size: usize,
    /// Most members the writer applies in one group commit.
    pub max_batch: usize,
    /// Publish a checkpoint every this many audit entries...
    pub checkpoint_every: u64,
    /// ... or when this many milliseconds passed since the last one and the log grew.
    pub checkpoint_interval_ms: u64,
    /// Most AuditEvents whose search index terms may wait for the writer's idle time
    /// ([`audit_index`]); beyond it group commits file the excess. 0 files them in the
    /// group commit that follows the one that logged them.
    pub audit_index_lag: u64,
    /// When the writer's queue is empty and at least this many AuditEvents wait for their
    /// index terms, it files them (runs of up to 1024 events per commit). Smaller runs make
    /// AuditEvent searches seek more; 0 never files at idle time (only beyond the lag).
    pub audit_index_idle_run: u64,
    /// Most entries the index journal's view ([`journal`]) holds before a group commit
    /// files its live postings into their indexes: new postings of the shared health
    /// record and of the client registry, and those removed again since the last filing
    /// (each about 80 bytes of memory on a posting list it shares, 300 on one of its own,
    /// as most of a Patient's are).
    /// 0 files them in the commit that made them.
    pub index_journal_lag: usize,
    /// Most postings one group commit files from the index journal (unless it added more
    /// than half as many): a filing of more is spread over several commits, so none holds
    /// the writer, and every request waiting for it, for long. The puts cost the writer
    /// about 0.5 µs per clinical posting and 0.9 µs per Patient posting; the commit syncs a
    /// page per posting at worst.
    pub index_filing_chunk: usize,
    /// Nice value the group-commit writer thread asks for (Linux; 0 leaves it alone).
    /// Every request waits for the writer (writes for their commit, reads for their
    /// AuditEvent), and it is the one serial stage: on two cores it lost about a third of
    /// its time waiting for a CPU behind the registry threads. Raising its priority needs
    /// `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it (the unit sets `LimitNICE=`);
    /// without either the writer logs a warning and runs at the default priority.
    pub writer_nice: i32,
    /// How long the writer waits for more members before a group commit, when the batch
    /// it drained is below [`StoreConfig::group_commit_fill`] and at least
    /// [`writer::WAIT_BACKLOG`] requests are queued for the registries (the registries
    /// are saturated, so more members are coming). Zero never waits. Each commit writes
    /// its databases' right-edge and branch pages and syncs twice whatever its size, so
    /// under load fuller commits leave more CPU to the registries; with no backlog a
    /// request never waits.
    pub group_commit_wait: std::time::Duration,
    /// The batch size from which the writer commits without waiting.
    pub group_commit_fill: usize,
    /// Most bytes of memory the facts of recently written versions may hold
    /// ([`bases`]: their index terms, source and kind, which the next version of the same
    /// resource needs, about 0.5 KB for an Observation and 1.5 KB for a Patient). 0 keeps
    /// none: every update then opens and parses the version it replaces.
    pub base_cache_bytes: usize,
    /// This appliance's id (the `Device` that signs and records).
    pub appliance_id: String,
    /// The facility this appliance serves (names the audit-log origin).
    pub facility_id: String,
}

impl StoreConfig {
    /// Defaults for a data directory: 64 MiB initial map, batches of up to 4096 members,
    /// checkpoints every 1000 entries or 60 s, audit index lag of 16 384 events, index
    /// journal lag of 262 144 entries filed 8 192 per commit, writer at nice -10, waiting
    /// up to 1 ms under load for a batch of 128, 32 MiB for the facts of recent versions.
    pub fn new(data_dir: impl Into<PathBuf>, appliance_id: &str, facility_id: &str) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            initial_map_size: 64 << 20,
            max_batch: 4096,
            checkpoint_every: 1000,
            checkpoint_interval_ms: 60_000,
            audit_index_lag: 16_384,
            audit_index_idle_run: audit_index::IDLE_CHUNK as u64,
            index_journal_lag: 262_144,
            index_filing_chunk: 8_192,
            writer_nice: DEFAULT_WRITER_NICE,
            group_commit_wait: std::time::Duration::from_millis(1),
            group_commit_fill: 128,
            base_cache_bytes: 32 << 20,
            appliance_id: appliance_id.to_string(),
            facility_id: facility_id.to_string(),
        }
    }
}

/// The databases of one component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ComponentDbs {
    pub versions: Db,
    pub current: Db,
    pub index: Db,
}

/// A stored version as returned to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// FHIR resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version number.
    pub version: u64,
    /// Commit time, unix millis.
    pub last_updated: u64,
    /// True for a deletion version.
    pub deleted: bool,
    /// The resource (with `meta.versionId` / `meta.lastUpdated`).
    pub resource: Value,
    /// The exact canonical bytes that were signed.
    pub canonical: Vec<u8>,
    /// The appliance's detached JWS over `canonical` (empty for AuditEvent/Provenance, which
    /// the Merkle log and their own signature element cover).
    pub jws: String,
    /// The author's detached JWS, if one was given.
    pub author_jws: Option<String>,
}

impl Record {
    fn from_envelope(env: Envelope) -> StoreResult<Self> {
        let resource: Value = serde_json::from_slice(&env.canonical)
            .map_err(|e| StoreError::Invalid(format!("stored JSON: {e}")))?;
        Ok(Self::from_parts(env, resource))
    }

    /// A record of `env` whose `resource` is already the parse of `env.canonical`.
    fn from_parts(env: Envelope, resource: Value) -> Self {
        Record {
            resource_type: env.resource_type,
            id: env.id,
            version: env.version_id,
            last_updated: env.last_updated,
            deleted: env.deleted,
            resource,
            canonical: env.canonical,
            jws: env.jws,
            author_jws: env.author_jws,
        }
    }

    /// `Type/id/_history/version`.
    pub fn versioned_reference(&self) -> String {
        format!(
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )
    }
}

/// Search results: the total number of matches and one page of them.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// Total matches of the query; when not [`SearchPage::exact`], the matches found before
    /// the search stopped (the page and one past it).
    pub total: usize,
    /// The requested page.
    pub items: Vec<Record>,
    /// Whether `total` counts every match: false only when a `_total=none` search stopped
    /// early.
    pub exact: bool,
}

/// The store: LMDB environment, keys and databases. Shared (`Arc<Store>`) between the
/// registry actors and the writer thread.
pub struct Store {
    pub(crate) env: Env<WithoutTls>,
    pub(crate) comps: [ComponentDbs; 8],
    pub(crate) audit_log: Db,
    pub(crate) audit_tree: Db,
    pub(crate) audit_checkpoints: Db,
    pub(crate) audit_provenance: Db,
    pub(crate) audit_provids: Db,
    /// AuditEvent id (UUID) -> log index.
    pub(crate) audit_ids: Db,
    pub(crate) meta: Db,
    /// `shr.journal`: the journaled components' postings not yet in their index
    /// ([`journal`]).
    pub(crate) journal_db: Db,
    /// The in-memory view of `shr.journal` searches and matches read.
    pub(crate) journal: journal::Journal,
    /// Held shared by every transaction, exclusively by map resizing (no txn may be open
    /// while the map is resized).
    pub(crate) gate: RwLock<()>,
    /// Requests queued for a registry thread and not yet taken by one ([`Queued`]): the
    /// writer's sign that more members are on their way (see
    /// [`StoreConfig::group_commit_wait`]).
    pub(crate) backlog: AtomicUsize,
    pub(crate) node_key: SigningKey,
    pub(crate) node_public: PublicKey,
    pub(crate) seal_versions: Vec<SealKey>,
    pub(crate) seal_log: SealKey,
    pub(crate) seal_provenance: SealKey,
    pub(crate) blind: Vec<BlindIndexKey>,
    /// Facts of recently written versions, for the versions that replace them.
    pub(crate) bases: bases::BaseCache,
    /// The last version stamp issued ([`Store::next_stamp`]).
    pub(crate) stamps: AtomicU64,
    pub(crate) config: StoreConfig,
    pub(crate) origin: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.env.path())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// One request in [`Store::backlog`], counted until this is dropped.
pub(crate) struct Queued(Arc<Store>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.backlog.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

/// Name of the `versions` database of a component.
pub(crate) fn versions_db_name(c: Component) -> String {
    format!("{}.versions", c.name())
}

const META_FORMAT: &[u8] = b"format";
const META_KEYCHECK: &[u8] = b"keycheck";
pub(crate) const META_FRONTIER: &[u8] = b"frontier";
pub(crate) const META_LAST_CKPT: &[u8] = b"last-checkpoint";
/// The greatest version stamp a commit has written (u64 BE): stamps issued after a restart
/// start above it, whatever the clock says.
pub(crate) const META_STAMPS: &[u8] = b"stamps";
/// Present while [`upgrade`] rewrites the directory (which is already marked with the new
/// format, so that an older binary refuses it meanwhile).
const META_UPGRADING: &[u8] = b"upgrading";
const MAX_DBS: u32 = 40;

/// Opens an LMDB environment directory.
#[allow(unsafe_code)]
fn open_env(dir: &Path, map_size: usize) -> StoreResult<Env<WithoutTls>> {
    let page = page_size();
    let map_size = map_size.div_ceil(page).max(16) * page;
    // SAFETY: heed's `open` is unsafe because the memory map must not be modified behind
    // LMDB's back. The store directory is private to this process's store: it is only ever
    // opened through this function, LMDB's own lock file coordinates processes, and no code
    // of ours truncates or writes the data file except via LMDB.
    //
    // Read transactions do not use thread-local storage (MDB_NOTLS): with it, LMDB frees a
    // thread's reader slot from a pthread key destructor when the thread exits, writing
    // into the lock file's mapping; a registry thread exiting while the last handle closes
    // the environment (and unmaps that file) then wrote to unmapped memory (a SIGSEGV seen
    // once in the tests). Without TLS a slot belongs to its transaction and is released
    // when the transaction ends.
    let env = unsafe {
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(map_size)
            .max_dbs(MAX_DBS)
            .max_readers(512)
            .open(dir)?
    };
    Ok(env)
}

/// The OS page size LMDB map sizes must be a multiple of.
fn page_size() -> usize {
    4096
}

impl Store {
    /// Opens (creating if needed) the store of `config.data_dir` with the appliance secrets.
    ///
    /// Clears stale reader slots, creates the databases, records the format version on a
    /// fresh directory, refuses newer formats and refuses a master key that does not match
    /// the one the directory was created with.
    pub fn open(config: StoreConfig, secrets: ApplianceSecrets) -> StoreResult<Store> {
        let dir = config.data_dir.join("store");
        std::fs::create_dir_all(&dir)?;
        let env = open_env(&dir, config.initial_map_size)?;
        let stale = env.clear_stale_readers()?;
        if stale > 0 {
            tracing::warn!(stale, "cleared stale LMDB reader slots");
        }
        // Create (or open) every named database in one committed transaction.
        let mut names: Vec<String> = Vec::new();
        for c in Component::ALL {
            names.push(versions_db_name(c));
            names.push(format!("{}.current", c.name()));
            names.push(format!("{}.index", c.name()));
        }
        for n in [
            "audit.log",
            "audit.tree",
            "audit.checkpoints",
            "audit.provenance",
            "audit.provids",
            "meta",
            "audit.ids",
            "shr.journal",
        ] {
            names.push(n.to_string());
        }
        let wtxn = env.write_txn()?;
        let dbs: Vec<Db> = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let mut v = Vec::with_capacity(names.len());
                for n in &names {
                    v.push(opener.create_database::<Bytes, Bytes>(wtxn, Some(n))?);
                }
                let arr: [Database<'_, Bytes, Bytes>; 32] = v
                    .try_into()
                    .map_err(|_| heed::Error::Io(std::io::Error::other("database table size")))?;
                Ok(CommitOrAbort::<_, ()>::Commit(arr))
            })?
            .commit()
            .map(Vec::from)
            .ok_or_else(|| StoreError::Storage("database creation aborted".into()))?;
        let comps: [ComponentDbs; 8] = std::array::from_fn(|i| ComponentDbs {
            versions: dbs[3 * i],
            current: dbs[3 * i + 1],
            index: dbs[3 * i + 2],
        });
        let [
            audit_log,
            audit_tree,
            audit_checkpoints,
            audit_provenance,
            audit_provids,
            meta,
            audit_ids,
            journal_db,
        ] = [
            dbs[24], dbs[25], dbs[26], dbs[27], dbs[28], dbs[29], dbs[30], dbs[31],
        ];
        let mut wtxn = env.write_txn()?;
        let mut upgrade_from = None;

        let master = &secrets.master_key;
        let seal_meta = master.sealing_key("meta");
        let keycheck_aad = Aad {
            database: "meta",
            key: META_KEYCHECK,
            version: 0,
        };
        match meta.get(&wtxn, META_FORMAT)? {
            None => {
                meta.put(&mut wtxn, META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
                let check = seal_meta
                    .seal(b"hexa store key check", &keycheck_aad)
                    .map_err(|e| StoreError::Crypto(e.to_string()))?;
                meta.put(&mut wtxn, META_KEYCHECK, &check)?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.try_into()
                        .map_err(|_| StoreError::Storage("meta.format is malformed".into()))?,
                );
                if found > FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found < FORMAT_VERSION || meta.get(&wtxn, META_UPGRADING)?.is_some() {
                    upgrade_from = Some(found);
                }
                let check = meta
                    .get(&wtxn, META_KEYCHECK)?
                    .ok_or_else(|| StoreError::Storage("meta.keycheck missing".into()))?;
                seal_meta.open(check, &keycheck_aad).map_err(|_| {
                    StoreError::Crypto(
                        "the master key does not match this data directory (wrong key file?)"
                            .into(),
                    )
                })?;
            }
        }
        // Replay the index journal (see [`journal`]): what the indexes do not hold yet.
        let journal = journal::Journal::default();
        for item in journal_db.iter(&wtxn)? {
            journal.replay(item?.1)?;
        }
        journal.replayed();
        let stamps = meta
            .get(&wtxn, META_STAMPS)?
            .map(|b| {
                <[u8; 8]>::try_from(b)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Storage("meta.stamps is malformed".into()))
            })
            .transpose()?
            .unwrap_or(0);
        wtxn.commit()?;

        let origin = format!("hexa.{}/audit", config.facility_id);
        let store = Store {
            seal_versions: Component::ALL
                .iter()
                .map(|c| master.sealing_key(&versions_db_name(*c)))
                .collect(),
            blind: Component::ALL
                .iter()
                .map(|c| master.blind_index_key(&format!("{}.index", c.name())))
                .collect(),
            seal_log: master.sealing_key("audit.log"),
            seal_provenance: master.sealing_key("audit.provenance"),

            node_public: secrets.node_key.public(),
            node_key: SigningKey::from_seed(secrets.node_key.seed()),
            env,
            comps,
            audit_log,
            audit_tree,
            audit_checkpoints,
            audit_provenance,
            audit_provids,
            audit_ids,
            meta,
            journal_db,
            journal,
            gate: RwLock::new(()),
            backlog: AtomicUsize::new(0),
            bases: bases::BaseCache::new(config.base_cache_bytes),
            stamps: AtomicU64::new(stamps),
            config,
            origin,
        };
        if let Some(found) = upgrade_from {
            // Format 1 is format 2 with every audit entry filed (no watermark), format 2 is
            // format 3 with every Provenance stored as JSON (which format 3 still reads),
            // format 3 is format 4 with an empty index journal, format 4 is format 5 with
            // no Patient posting in the journal, and format 5 is format 6 with its versions
            // keyed by resource: those are rewritten ([`upgrade`]), then the directory is
            // marked 6 (before the rewrite, with a note that it is under way, which the
            // rewrite's end removes), so an older binary, which would not look at the
            // unfiled tail, read a compact Provenance, search the journal, file a Patient
            // posting from it into the right index or find a version by its stamp, refuses
            // it from now on, and an interrupted rewrite resumes at the next open.
            let mut wtxn = store.env.write_txn()?;
            store
                .meta
                .put(&mut wtxn, META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
            store
                .meta
                .put(&mut wtxn, META_UPGRADING, &found.to_be_bytes())?;
            wtxn.commit()?;
            upgrade::versions_by_stamp(&store)?;
            let mut wtxn = store.env.write_txn()?;
            store.meta.delete(&mut wtxn, META_UPGRADING)?;
            wtxn.commit()?;
            tracing::info!(from = found, to = FORMAT_VERSION, "store format upgraded");
        }
        Ok(store)
    }

    /// A new version stamp: greater than every stamp issued before, in this process or
    /// (through [`META_STAMPS`]) before a restart, and at least the current unix
    /// millisecond shifted left by 16 bits, so that stamps follow time and a version's key
    /// (`{type}/{stamp}`) goes to the right edge of its type's keys.
    pub(crate) fn next_stamp(&self) -> u64 {
        let now = time::now_millis() << 16;
        let mut last = self.stamps.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.stamps.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Requests queued for a registry thread that none has taken yet.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Counts one request into the backlog until the returned guard is dropped (when a
    /// registry thread takes the request, or when it is dropped unserved).
    pub(crate) fn queued(self: &Arc<Self>) -> Queued {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        Queued(self.clone())
    }

    /// The appliance node public key that signs every version and checkpoint.
    pub fn node_public(&self) -> &PublicKey {
        &self.node_public
    }

    /// Origin line of the audit log's checkpoints (`hexa.<facility>/audit`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Current LMDB map size in bytes.
    pub fn map_size(&self) -> usize {
        // mdb_env_info reads the meta pages inside the map: not while a resize remaps it.
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.env.info().map_size
    }

    /// Runs `f` with a read transaction, holding the resize gate.
    pub(crate) fn with_read<T>(&self, f: impl FnOnce(&RoTxn) -> StoreResult<T>) -> StoreResult<T> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        // Pinned before the snapshot opens (see [`journal`]).
        let _pin = self.journal.pin();
        let rtxn = self.env.read_txn()?;
        f(&rtxn)
    }

    /// Grows the map if more than 80 % of it is in use. Called by the writer between
    /// batches; returns whether it resized.
    pub(crate) fn grow_if_needed(&self, min_free: usize) -> StoreResult<bool> {
        let info = self.env.info();
        let page = self.env.unnamed_database_stat().page_size as usize;
        let used = (info.last_page_number + 1) * page;
        if used * 10 > info.map_size * 8 || info.map_size - used.min(info.map_size) < min_free {
            let target = (info.map_size * 2).max((used + min_free) * 2);
            self.resize(target)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Doubles the map (after a `MDB_MAP_FULL`).
    pub(crate) fn grow_after_full(&self) -> StoreResult<()> {
        self.resize(self.env.info().map_size * 2)
    }

    /// Resizes the memory map.
    #[allow(unsafe_code)]
    fn resize(&self, new_size: usize) -> StoreResult<()> {
        let page = page_size();
        let new_size = new_size.div_ceil(page) * page;
        let _exclusive = self.gate.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: LMDB allows mdb_env_set_mapsize only while this process has no active
        // transaction. Every read transaction of the store is opened through `with_read`,
        // which holds `gate` shared for the transaction's whole life, and the only write
        // transactions are the writer thread's, which calls this function between batches
        // (its transaction is committed or aborted), and, before the writer starts, the
        // format upgrade's ([`upgrade`]), which calls it between its own transactions.
        // Holding `gate` exclusively therefore guarantees no transaction is open.
        unsafe { self.env.resize(new_size)? };
        tracing::info!(new_size, "grew the LMDB map");
        Ok(())
    }

    /// Online backup: a compacting copy of the environment into `<dest>/store/data.mdb`, so
    /// that `dest` can be opened as a data directory (restore).
    pub fn backup_to(&self, dest: &Path) -> StoreResult<PathBuf> {
        let dir = dest.join("store");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("data.mdb");
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let file = self.env.copy_to_path(&path, CompactionOption::Enabled)?;
        file.sync_all()?;
        Ok(path)
    }

    // ----- versions -----

    pub(crate) fn dbs(&self, c: Component) -> &ComponentDbs {
        &self.comps[c.index()]
    }

    fn open_envelope(
        &self,
        c: Component,
        key: &[u8],
        version: u64,
        sealed: &[u8],
    ) -> StoreResult<Envelope> {
        let database = versions_db_name(c);
        let plain = self.seal_versions[c.index()]
            .open(
                sealed,
                &Aad {
                    database: &database,
                    key,
                    version,
                },
            )
            .map_err(|e| StoreError::Corrupt {
                database: database.clone(),
                key: format::printable_key(key),
                reason: e.to_string(),
            })?;
        Envelope::from_bytes(&plain).map_err(|reason| StoreError::Corrupt {
            database,
            key: format::printable_key(key),
            reason,
        })
    }

    pub(crate) fn current_in(
        &self,
        txn: &RoTxn,
        ty: &str,
        id: &str,
    ) -> StoreResult<Option<Current>> {
        let c = component_for(ty)?;
        let v = self.dbs(c).current.get(txn, &format::current_key(ty, id))?;
        match v {
            None => Ok(None),
            Some(b) => Current::from_bytes(b)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    database: format!("{}.current", c.name()),
                    key: format!("{ty}/{id}"),
                    reason: "bad current pointer".into(),
                }),
        }
    }

    /// Version `version` of `ty/id`, `None` if it was never written.
    pub(crate) fn version_in(
        &self,
        txn: &RoTxn,
        ty: &str,
        id: &str,
        version: u64,
    ) -> StoreResult<Option<Record>> {
        let c = component_for(ty)?;
        let Some(cur) = self.current_in(txn, ty, id)? else {
            return Ok(None);
        };
        let Some(stamp) = self.stamp_of(txn, c, ty, &cur, version)? else {
            return Ok(None);
        };
        let key = format::stamp_key(ty, stamp);
        let value = self.stored_version(txn, c, &key)?;
        self.open_version(c, &key, ty, id, version, value).map(Some)
    }

    /// The stamp of version `version` of the resource `ty/..` whose current pointer is
    /// `cur` (`None` if `version` is 0 or later than the current one), found by
    /// [`Store::walk`]ing back to it.
    pub(crate) fn stamp_of(
        &self,
        txn: &RoTxn,
        c: Component,
        ty: &str,
        cur: &Current,
        version: u64,
    ) -> StoreResult<Option<u64>> {
        if version == 0 || version > cur.version {
            return Ok(None);
        }
        self.walk(txn, c, ty, cur, version + 1, |_, _, _, _| Ok(()))
            .map(Some)
    }

    /// Walks back through the versions of the resource `ty/..` whose current pointer is
    /// `cur`, from the current version down to version `to` (at least 1), calling `f` with
    /// each one's version, stamp, key and stored value, newest first. Each stored head must
    /// be the version the walk expects (else corruption); a head naming no stored value is
    /// corruption too. Returns the stamp the last head names: that of version `to - 1`,
    /// or 0 after version 1.
    fn walk<'t>(
        &self,
        txn: &'t RoTxn,
        c: Component,
        ty: &str,
        cur: &Current,
        to: u64,
        mut f: impl FnMut(u64, u64, &[u8], &'t [u8]) -> StoreResult<()>,
    ) -> StoreResult<u64> {
        let mut stamp = cur.stamp;
        for version in (to..=cur.version).rev() {
            let key = format::stamp_key(ty, stamp);
            let value = self.stored_version(txn, c, &key)?;
            let head = self.head_of(c, &key, value)?;
            if head.version != version {
                return Err(self.corrupt_version(c, &key, "not the version before"));
            }
            f(version, stamp, &key, value)?;
            stamp = head.prev;
        }
        Ok(stamp)
    }

    /// [`Store::walk`] over every version, down to version 1, whose head must name no
    /// version before it.
    fn walk_all<'t>(
        &self,
        txn: &'t RoTxn,
        c: Component,
        ty: &str,
        cur: &Current,
        f: impl FnMut(u64, u64, &[u8], &'t [u8]) -> StoreResult<()>,
    ) -> StoreResult<()> {
        if self.walk(txn, c, ty, cur, 1, f)? != 0 {
            return Err(self.corrupt_version(
                c,
                &format::stamp_key(ty, cur.stamp),
                "version 1 names a version before it",
            ));
        }
        Ok(())
    }

    /// The value stored under a version key (a missing one is corruption: something named
    /// it).
    fn stored_version<'t>(
        &self,
        txn: &'t RoTxn,
        c: Component,
        key: &[u8],
    ) -> StoreResult<&'t [u8]> {
        self.dbs(c)
            .versions
            .get(txn, key)?
            .ok_or_else(|| self.corrupt_version(c, key, "a version it names is missing"))
    }

    fn head_of(&self, c: Component, key: &[u8], value: &[u8]) -> StoreResult<VersionHead> {
        VersionHead::split(value)
            .map(|(h, _)| h)
            .ok_or_else(|| self.corrupt_version(c, key, "value shorter than its head"))
    }

    fn corrupt_version(&self, c: Component, key: &[u8], reason: &str) -> StoreError {
        StoreError::Corrupt {
            database: versions_db_name(c),
            key: format::printable_key(key),
            reason: reason.into(),
        }
    }

    /// The record stored as `value` under `key`, which must be `ty/id` at `version`.
    fn open_version(
        &self,
        c: Component,
        key: &[u8],
        ty: &str,
        id: &str,
        version: u64,
        value: &[u8],
    ) -> StoreResult<Record> {
        let r = self.open_stored(c, key, value)?;
        if r.resource_type != ty || r.id != id || r.version != version {
            return Err(self.corrupt_version(c, key, "envelope does not match its key"));
        }
        Ok(r)
    }

    /// The record stored as `value` under the version key `key` (its type checked against
    /// the key's, its version against the head's, which the seal binds).
    pub(crate) fn open_stored(
        &self,
        c: Component,
        key: &[u8],
        value: &[u8],
    ) -> StoreResult<Record> {
        let Some((head, sealed)) = VersionHead::split(value) else {
            return Err(self.corrupt_version(c, key, "value shorter than its head"));
        };
        let env = self.open_envelope(c, key, head.version, sealed)?;
        let key_type = format::parse_stamp_key(key).map(|(t, _)| t);
        if key_type != Some(env.resource_type.as_str()) || env.version_id != head.version {
            return Err(self.corrupt_version(c, key, "envelope does not match its key"));
        }
        Record::from_envelope(env)
    }

    /// What a new version of `ty/id` needs from the version `cur` points to ([`bases`]):
    /// kept facts if the stored sealed value is the one they were derived from, else
    /// derived from the opened version (and kept).
    pub(crate) fn base_facts_in(
        &self,
        txn: &RoTxn,
        ty: &str,
        id: &str,
        cur: &Current,
    ) -> StoreResult<Arc<BaseFacts>> {
        let c = component_for(ty)?;
        let key = format::stamp_key(ty, cur.stamp);
        let value = self.stored_version(txn, c, &key)?;
        let sealed_id = VersionHead::split(value).and_then(|(_, s)| bases::SealedId::of(s));
        if let Some(facts) = sealed_id.and_then(|s| self.bases.get(&key, &s)) {
            return Ok(facts);
        }
        let old = self.open_version(c, &key, ty, id, cur.version, value)?;
        let facts = Arc::new(self.facts_of(c, ty, id, &old.resource, old.deleted));
        if let Some(s) = sealed_id {
            self.bases.put(key, s, facts.clone());
        }
        Ok(facts)
    }

    /// The facts of a version of `ty/id` whose resource is `resource`.
    fn facts_of(
        &self,
        c: Component,
        ty: &str,
        id: &str,
        resource: &Value,
        deleted: bool,
    ) -> BaseFacts {
        BaseFacts {
            source: resource["meta"]["source"].as_str().map(str::to_string),
            enrolment_device: ty == "Device" && policy::is_enrolment_device(resource),
            patients: audit::patients_of(ty, id, resource),
            blinds: if deleted {
                Vec::new()
            } else {
                self.index_blinds(c, ty, resource)
            },
        }
    }

    /// The current version of a live resource within `txn` (NotFound / Gone otherwise).
    pub(crate) fn read_in(&self, txn: &RoTxn, ty: &str, id: &str) -> StoreResult<Record> {
        if component_for(ty)? == Component::Audit {
            return self.read_audit_resource(txn, ty, id);
        }
        let not_found = || StoreError::NotFound {
            resource_type: ty.into(),
            id: id.into(),
        };
        let cur = self.current_in(txn, ty, id)?.ok_or_else(not_found)?;
        if cur.deleted {
            return Err(StoreError::Gone {
                resource_type: ty.into(),
                id: id.into(),
                version: cur.version,
            });
        }
        self.current_version_in(txn, ty, id, &cur)
    }

    /// The version `cur` points to.
    pub(crate) fn current_version_in(
        &self,
        txn: &RoTxn,
        ty: &str,
        id: &str,
        cur: &Current,
    ) -> StoreResult<Record> {
        let c = component_for(ty)?;
        let key = format::stamp_key(ty, cur.stamp);
        let value = self.stored_version(txn, c, &key)?;
        self.open_version(c, &key, ty, id, cur.version, value)
    }

    /// Reads the current version of `ty/id`.
    pub fn read(&self, ty: &str, id: &str) -> StoreResult<Record> {
        self.with_read(|txn| self.read_in(txn, ty, id))
    }

    /// Reads version `version` of `ty/id` (deletion versions are returned with `deleted`).
    pub fn vread(&self, ty: &str, id: &str, version: u64) -> StoreResult<Record> {
        self.with_read(|txn| {
            if component_for(ty)? == Component::Audit {
                let r = self.read_audit_resource(txn, ty, id)?;
                return if version == r.version {
                    Ok(r)
                } else {
                    Err(StoreError::VersionNotFound {
                        resource_type: ty.into(),
                        id: id.into(),
                        version,
                    })
                };
            }
            self.version_in(txn, ty, id, version)?
                .ok_or_else(|| StoreError::VersionNotFound {
                    resource_type: ty.into(),
                    id: id.into(),
                    version,
                })
        })
    }

    /// Every version of `ty/id`, newest first.
    pub fn history(&self, ty: &str, id: &str) -> StoreResult<Vec<Record>> {
        self.with_read(|txn| self.history_in(txn, ty, id))
    }

    /// [`Store::history`] within `txn`: from the current version back, each version's head
    /// naming the one before, down to version 1.
    pub(crate) fn history_in(&self, txn: &RoTxn, ty: &str, id: &str) -> StoreResult<Vec<Record>> {
        let c = component_for(ty)?;
        let cur = self
            .current_in(txn, ty, id)?
            .ok_or_else(|| StoreError::NotFound {
                resource_type: ty.into(),
                id: id.into(),
            })?;
        let mut out = Vec::with_capacity(cur.version.min(64) as usize);
        self.walk_all(txn, c, ty, &cur, |version, _, key, value| {
            out.push(self.open_version(c, key, ty, id, version, value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The stamps of every version of `ty/id` whose current pointer is `cur`, newest first.
    pub(crate) fn stamps_in(
        &self,
        txn: &RoTxn,
        c: Component,
        ty: &str,
        cur: &Current,
    ) -> StoreResult<Vec<u64>> {
        let mut out = Vec::with_capacity(cur.version.min(64) as usize);
        self.walk_all(txn, c, ty, cur, |_, stamp, _, _| {
            out.push(stamp);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every version of every resource of `ty`, newest first, paged.
    pub fn type_history(&self, ty: &str, count: usize, offset: usize) -> StoreResult<SearchPage> {
        let c = component_for(ty)?;
        self.with_read(|txn| {
            let mut prefix = ty.as_bytes().to_vec();
            prefix.push(b'/');
            let mut all = Vec::new();
            for item in self.dbs(c).versions.prefix_iter(txn, &prefix)? {
                let (k, value) = item?;
                if format::parse_stamp_key(k).is_some_and(|(t, _)| t == ty) {
                    all.push(self.open_stored(c, k, value)?);
                }
            }
            all.sort_by(|a, b| {
                b.last_updated
                    .cmp(&a.last_updated)
                    .then(b.version.cmp(&a.version))
            });
            let total = all.len();
            Ok(SearchPage {
                total,
                items: all.into_iter().skip(offset).take(count).collect(),
                exact: true,
            })
        })
    }

    /// Verifies the appliance signature of a record (JWS over its canonical bytes).
    pub fn verify(&self, r: &Record) -> StoreResult<()> {
        jws::verify_detached(&r.jws, &r.canonical, &self.node_public)
            .map(|_| ())
            .map_err(|e| StoreError::BadSignature(format!("{}: {e}", r.versioned_reference())))
    }

    // ----- write preparation (runs on actor threads) -----

    /// Builds a version ready for the writer: meta set, canonicalised, signed, sealed,
    /// index keys computed (and the base version's keys to remove), Provenance sealed.
    pub(crate) fn prepare_version(&self, txn: &RoTxn, spec: VersionSpec) -> StoreResult<Prepared> {
        self.sign_version(self.prepare_unsigned(txn, spec)?)
    }

    /// Signs one version ([`jws::sign_detached`]) and finishes it.
    pub(crate) fn sign_version(&self, unsigned: Unsigned) -> StoreResult<Prepared> {
        let signature = jws::sign_detached(&self.node_key, &unsigned.env.canonical);
        self.finish_version(unsigned, signature)
    }

    /// Signs each version with one batch of signatures ([`jws::sign_detached_many`]: the
    /// same JWS as one by one) and finishes it ([`Store::finish_version`]).
    pub(crate) fn sign_versions(
        &self,
        unsigned: Vec<Unsigned>,
    ) -> impl Iterator<Item = StoreResult<Prepared>> + '_ {
        let payloads: Vec<&[u8]> = unsigned
            .iter()
            .map(|u| u.env.canonical.as_slice())
            .collect();
        let signatures = jws::sign_detached_many(&self.node_key, &payloads);
        unsigned
            .into_iter()
            .zip(signatures)
            .map(|(u, signature)| self.finish_version(u, signature))
    }

    /// [`Store::prepare_version`] up to the signature: everything a version needs but its
    /// JWS and the seal of its envelope (which holds the JWS).
    pub(crate) fn prepare_unsigned(&self, txn: &RoTxn, spec: VersionSpec) -> StoreResult<Unsigned> {
        let ty = spec.resource_type.as_str();
        let c = component_for(ty)?;
        route::validate_id(&spec.id)?;
        let version = spec.base.map_or(0, |b| b.version) + 1;
        // The version this one replaces: the write policy looks at who wrote it, and its
        // index keys are the ones this version's replace.
        let (base, prev) = match &spec.base {
            None => (None, 0),
            Some(b) => (Some(self.base_facts_in(txn, ty, &spec.id, b)?), b.stamp),
        };
        self.authorize_write(
            spec.system,
            &spec.source,
            ty,
            &spec.id,
            base.as_deref(),
            &spec.resource,
        )?;
        let mut resource = spec.resource;
        {
            let obj = resource
                .as_object_mut()
                .ok_or_else(|| StoreError::Invalid("a resource must be a JSON object".into()))?;
            obj.insert("resourceType".into(), json!(ty));
            obj.insert("id".into(), json!(spec.id));
            let meta = obj.entry("meta").or_insert_with(|| json!({}));
            let meta = meta
                .as_object_mut()
                .ok_or_else(|| StoreError::Invalid("meta must be an object".into()))?;
            meta.insert("versionId".into(), json!(version.to_string()));
            meta.insert("lastUpdated".into(), json!(time::instant(spec.now)));
            meta.insert("source".into(), json!(policy::source_of(&spec.source)));
        }
        let canonical =
            jcs::canonicalize(&resource).map_err(|e| StoreError::Invalid(e.to_string()))?;

        // From here on the resource is the one every later read parses from the canonical
        // bytes (sorted members, numbers as JCS writes them), rewritten in place instead of
        // parsed: index terms of this version and of the next one's base then come from
        // equal values, and the returned record equals a read of it.
        if !jcs::reparsed_in_place(&mut resource).map_err(|e| StoreError::Invalid(e.to_string()))? {
            resource = serde_json::from_slice(&canonical)
                .map_err(|e| StoreError::Invalid(format!("canonical JSON: {e}")))?;
        }

        // Index keys: new terms minus old terms, old minus new (both sorted, and so are
        // the keys they make).
        let facts = Arc::new(self.facts_of(c, ty, &spec.id, &resource, spec.deleted));
        let old_blinds: &[[u8; 32]] = base.as_ref().map_or(&[], |b| &b.blinds);
        let keys_of = |from: &[[u8; 32]], minus: &[[u8; 32]]| -> Vec<Vec<u8>> {
            from.iter()
                .filter(|b| minus.binary_search(b).is_err())
                .map(|b| format::index_key(ty, b, &spec.id))
                .collect()
        };
        let remove_index = keys_of(old_blinds, &facts.blinds);
        let add_index = keys_of(&facts.blinds, old_blinds);

        let stamp = self.next_stamp();
        let key = format::stamp_key(ty, stamp);
        let prov_id = new_id()?;
        let prov_plain = format::StoredProvenance {
            format: FORMAT_VERSION,
            id: prov_id.clone(),
            custodian: self.config.appliance_id.clone(),
            author: spec.author,
        }
        .to_bytes()?;
        let prov_sealed = self
            .seal_provenance
            .seal(
                &prov_plain,
                &Aad {
                    database: "audit.provenance",
                    key: &key,
                    version,
                },
            )
            .map_err(|e| StoreError::Crypto(e.to_string()))?;
        Ok(Unsigned {
            env: Envelope {
                format: FORMAT_VERSION,
                resource_type: ty.to_string(),
                id: spec.id,
                version_id: version,
                last_updated: spec.now,
                deleted: spec.deleted,
                canonical,
                jws: String::new(),
                author_jws: spec.author_jws,
            },
            resource,
            facts,
            component: c,
            key,
            stamp,
            prev,
            add_index,
            remove_index,
            prov_sealed,
            prov_id,
            replaced_patients: base.map(|b| b.patients.clone()).unwrap_or_default(),
        })
    }

    /// The rest of [`Store::prepare_version`]: the appliance's JWS over the canonical
    /// bytes goes into the envelope, which is sealed under its database, key and version.
    pub(crate) fn finish_version(
        &self,
        mut u: Unsigned,
        signature: String,
    ) -> StoreResult<Prepared> {
        u.env.jws = signature;
        let (c, version) = (u.component, u.env.version_id);
        let sealed = self.seal_versions[c.index()]
            .seal(
                &u.env.to_bytes()?,
                &Aad {
                    database: &versions_db_name(c),
                    key: &u.key,
                    version,
                },
            )
            .map_err(|e| StoreError::Crypto(e.to_string()))?;
        let value = VersionHead {
            version,
            prev: u.prev,
        }
        .value(&sealed);
        let patients = u.facts.patients.clone();
        // A first version is not kept: most resources are never updated, and keeping
        // every create's facts cost creates more than it saved updates. Its first update
        // derives them from the stored version, and keeps them.
        if version > 1
            && let Some(s) = bases::SealedId::of(&sealed)
        {
            self.bases.put(u.key.clone(), s, u.facts);
        }
        Ok(Prepared {
            write: PreparedWrite {
                resource_type: u.env.resource_type.clone(),
                id: u.env.id.clone(),
                component: c,
                base: version - 1,
                current: Current {
                    version,
                    last_updated: u.env.last_updated,
                    deleted: u.env.deleted,
                    stamp: u.stamp,
                },
                key: u.key,
                value,
                add_index: u.add_index,
                remove_index: u.remove_index,
                prov_sealed: u.prov_sealed,
                prov_id: u.prov_id,
            },
            record: Record::from_parts(u.env, u.resource),
            patients,
            replaced_patients: u.replaced_patients,
        })
    }

    /// The blind terms of a resource's index keys, sorted and distinct (so in the order of
    /// its keys, `type 0x00 blind id`).
    pub(crate) fn index_blinds(&self, c: Component, ty: &str, resource: &Value) -> Vec<[u8; 32]> {
        let blind = &self.blind[c.index()];
        let mut blinds = Vec::with_capacity(24);
        let mut add = |field: &str, term: &str| blinds.push(blind.index(field, term.as_bytes()));
        params::each_term(ty, resource, |field, term| add(field, &term));
        if ty == "Patient" {
            for (field, term) in pmatch::match_terms(resource) {
                add(&field, &term);
            }
        }
        if let Some((field, term)) = policy::source_term(ty, resource) {
            add(&field, &term);
        }
        blinds.sort_unstable();
        blinds.dedup();
        blinds
    }

    /// The blind index of a (field, term) pair.
    pub(crate) fn blind(&self, c: Component, field: &str, term: &str) -> [u8; 32] {
        self.blind[c.index()].index(field, term.as_bytes())
    }
}

/// What a caller wants written as the next version of one resource.
#[derive(Debug, Clone)]
pub(crate) struct VersionSpec {
    pub resource_type: String,
    pub id: String,
    /// The current pointer of the version the new one replaces, as read in the
    /// transaction the new one is prepared in (`None`: the resource must not exist yet).
    pub base: Option<Current>,
    pub resource: Value,
    pub deleted: bool,
    pub author_jws: Option<String>,
    /// Reference of the author (`Practitioner/..`) named in the Provenance.
    pub author: Option<String>,
    pub now: u64,
    /// Facility writing the version (stamped as `meta.source`).
    pub source: String,
    /// Written by the appliance's own context (may write Consents and enrolment Devices).
    pub system: bool,
}

/// A version prepared up to its signature ([`Store::prepare_unsigned`]); the envelope's
/// `jws` is empty until [`Store::finish_version`].
pub(crate) struct Unsigned {
    pub env: Envelope,
    /// The resource as read back from `env.canonical`.
    pub resource: Value,
    /// What the version after this one will need from it ([`bases`]).
    pub facts: Arc<BaseFacts>,
    pub component: Component,
    /// The version's key in `<component>.versions`: [`format::stamp_key`] of `stamp`.
    pub key: Vec<u8>,
    pub stamp: u64,
    /// The stamp of the version it replaces (0 for a first version).
    pub prev: u64,
    pub add_index: Vec<Vec<u8>>,
    pub remove_index: Vec<Vec<u8>>,
    pub prov_sealed: Vec<u8>,
    pub prov_id: String,
    /// The patients of the version this one replaces ([`BaseFacts::patients`]).
    pub replaced_patients: Vec<String>,
}

/// A version prepared on a registry thread: what the writer needs, and the record the
/// caller gets back after the commit.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub write: PreparedWrite,
    pub record: Record,
    /// The patients `record` belongs to ([`BaseFacts::patients`]).
    pub patients: Vec<String>,
    /// The patients of the version it replaces.
    pub replaced_patients: Vec<String>,
}

/// The writer's part of a prepared version: only bytes to check and put (kept small, as
/// the writer thread also frees it).
#[derive(Debug, Clone)]
pub(crate) struct PreparedWrite {
    pub resource_type: String,
    pub id: String,
    pub component: Component,
    pub base: u64,
    pub current: Current,
    pub key: Vec<u8>,
    /// [`VersionHead`], then the sealed envelope.
    pub value: Vec<u8>,
    pub add_index: Vec<Vec<u8>>,
    pub remove_index: Vec<Vec<u8>>,
    pub prov_sealed: Vec<u8>,
    pub prov_id: String,
}

/// Staging slots ordering the databases of a group commit (see [`writer::Staged`]).
pub(crate) mod slot {
    /// `audit.provenance`.
    pub const PROVENANCE: u8 = 24;
    /// `audit.provids`.
    pub const PROVIDS: u8 = 25;
    /// `audit.tree`.
    pub const TREE: u8 = 26;
    /// `audit.log`.
    pub const LOG: u8 = 27;
    /// `audit.ids`.
    pub const IDS: u8 = 28;
    /// `<component>.versions`.
    pub fn versions(c: super::Component) -> u8 {
        c.index() as u8 * 3
    }
    /// `<component>.index`.
    pub fn index(c: super::Component) -> u8 {
        c.index() as u8 * 3 + 2
    }
}

/// Writes a prepared version (after its checks passed): the current pointer at once (the
/// version checks of later members of the batch read it), everything else staged for the
/// sorted flush of the group commit.
pub(crate) fn put_prepared<'a>(
    store: &Store,
    wtxn: &mut RwTxn,
    staged: &mut writer::Staged<'a>,
    p: &'a PreparedWrite,
) -> StoreResult<()> {
    use std::borrow::Cow::Borrowed;
    use writer::StagedOp::{Delete, Put};
    let dbs = store.dbs(p.component);
    let ck = format::current_key(&p.resource_type, &p.id);
    dbs.current.put(wtxn, &ck, &p.current.to_bytes())?;
    let (vs, is) = (slot::versions(p.component), slot::index(p.component));
    staged.push(vs, dbs.versions, Borrowed(&p.key), Put(Borrowed(&p.value)));
    staged.stamps = staged.stamps.max(p.current.stamp);
    for k in &p.remove_index {
        staged.push(is, dbs.index, Borrowed(k), Delete);
    }
    if journal::journaled(p.component) {
        // New postings go to the index journal; a removed one that is still there is
        // removed from it too (and from the index, where it may be already).
        let txn = wtxn.id() as u64;
        for k in &p.remove_index {
            if store.journal.delete(txn, k) {
                journal::record_delete(&mut staged.journal, k);
            }
        }
        for k in &p.add_index {
            store.journal.put(txn, k);
            journal::record_put(&mut staged.journal, k);
        }
    } else {
        for k in &p.add_index {
            staged.push(is, dbs.index, Borrowed(k), Put(Borrowed(&[])));
        }
    }
    staged.push(
        slot::PROVENANCE,
        store.audit_provenance,
        Borrowed(&p.key),
        Put(Borrowed(&p.prov_sealed)),
    );
    staged.push(
        slot::PROVIDS,
        store.audit_provids,
        Borrowed(p.prov_id.as_bytes()),
        Put(Borrowed(&p.key)),
    );
    Ok(())
}

/// A fresh resource id: a UUIDv7 (48-bit unix-millisecond timestamp, then 74 random bits)
/// in text form. Time-ordered ids make the store's id-keyed databases grow at their right
/// edge instead of dirtying a random B-tree page per insert (the creation time it reveals
/// is also in `meta.lastUpdated`).
pub fn new_id() -> StoreResult<String> {
    let mut b = [0u8; 16];
    hexa_crypto::pooled_random(&mut b[6..])
        .map_err(|e| StoreError::Crypto(format!("OS RNG: {e}")))?;
    b[..6].copy_from_slice(&time::now_millis().to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(HEX[(x >> 4) as usize] as char);
        id.push(HEX[(x & 0xf) as usize] as char);
    }
    Ok(id)
}
