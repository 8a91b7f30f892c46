//! hexa-appliance: the `hexa` binary's library half. It composes the other crates and
//! holds no domain logic: configuration ([`config`]), the data directory with the
//! appliance's keys ([`datadir`]), the consent readers ([`devices`]), the HTTP server
//! ([`http`], [`sim_api`]), client authentication ([`auth`]), the FHIR R4 API ([`fhir`]),
//! the audit log over HTTP ([`audit_api`]), auditors' exports and their offline
//! verification ([`export`], [`verify`]), the consent ceremonies ([`consent`]) and the
//! front-desk page ([`desk`]), integrator key files ([`clientkeys`]), rate limits
//! ([`ratelimit`]), systemd readiness and watchdog notification ([`sdnotify`]), the store
//! service
//! ([`StoreService`]) and start-up ([`start`]).

pub mod audit_api;
pub mod auth;
pub mod clientkeys;
pub mod config;
pub mod consent;
pub mod datadir;
pub mod desk;
pub mod devices;
pub mod export;
pub mod fhir;
pub mod http;
pub mod ratelimit;
pub mod sdnotify;
pub mod sim_api;
pub mod verify;

use hexa_actors::handle::StoreHandle;
use hexa_actors::store::StoreConfig;
use hexa_crypto::keyfile::ApplianceSecrets;
use std::sync::Arc;

/// Registry actors per store component.
const STORE_THREADS: usize = 2;

/// Everything a started appliance holds; dropping it releases the data directory.
pub struct Appliance {
    /// The effective configuration.
    pub config: config::Config,
    /// Shared state of the HTTP server.
    pub http: Arc<http::AppState>,
    /// Key ID (RFC 7638 thumbprint) of the node signing key; also the appliance's ID.
    pub node_kid: String,
    /// The open store (its registry actors run on their own actix system thread).
    pub store: StoreService,
    /// Client authentication (registry of clients, token issuing and checking).
    pub auth: Arc<auth::Authenticator>,
}

/// The store and the actix system thread its registry actors run on. Dropping it stops
/// the actors, joins the thread, shuts the group-commit writer down after it committed
/// everything queued (later calls through other handles fail with `WriterStopped`, 503)
/// and closes the LMDB environment once no other handle holds it (at most 10 s).
pub struct StoreService {
    /// Taken on drop so the store can be closed once every handle is gone.
    handle: Option<StoreHandle>,
    /// The HTTP state that shares this store: while a server still holds it, dropping
    /// does not wait for the environment to close (it closes when the server lets go).
    users: std::sync::Weak<http::AppState>,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The exclusive lock on `<data dir>/store.lock`, held while the service lives: one
    /// process at a time owns a store (its writer keeps the Merkle frontier in memory).
    _lock: std::fs::File,
}

/// Takes the exclusive, non-blocking lock of the data directory `dir`'s store (creating
/// the directory and the lock file if needed). The kernel releases it when the process dies, so a crash
/// never leaves a stale lock.
fn lock_store_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("store.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "the store in {} is in use by another hexa process (is `hexa serve` running? stop it first)",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

impl StoreService {
    /// Opens the store of the data directory rooted at `config.data_dir` and starts its
    /// registry actors on a dedicated actix system thread.
    pub fn start(config: StoreConfig, secrets: ApplianceSecrets) -> anyhow::Result<Self> {
        let lock = lock_store_dir(&config.data_dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hexa-store".into())
            .spawn(move || {
                let sys = actix::System::new();
                let started = sys.block_on(async move {
                    let r = StoreHandle::start(config, secrets, STORE_THREADS);
                    let ok = r.is_ok();
                    let _ = tx.send(r.map(|h| (h, actix::System::current())));
                    ok
                });
                if started {
                    let _ = sys.run();
                }
            })?;
        let (handle, system) = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the store thread failed to start"))??;
        Ok(StoreService {
            handle: Some(handle),
            users: std::sync::Weak::new(),
            system,
            thread: Some(thread),
            _lock: lock,
        })
    }

    /// A handle on the store (cheap to clone).
    pub fn handle(&self) -> &StoreHandle {
        self.handle.as_ref().expect("present until drop")
    }
}

impl Drop for StoreService {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The registry actors' threads end once their system stopped; `close` drains the
        // writer and waits for the last reference to the LMDB environment to go, so the
        // same data directory can be opened again in this process.
        if let Some(h) = self.handle.take() {
            let engine = h.engine().clone();
            drop(h);
            let wait = if self.users.strong_count() > 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_secs(10)
            };
            if let Err(e) = engine.close(wait) {
                tracing::debug!(error = %e, "the store closes when its last user goes");
            }
        }
    }
}

/// Opens (initialising on first start, with `defaults`) the data directory and builds
/// what the server needs: the store, client authentication and the `/fhir` API (which is
/// never mounted without authentication: [`fhir::FhirApi`] needs an [`fhir::Authorizer`]).
pub fn start(
    dir: &datadir::DataDir,
    defaults: &config::Config,
    passphrase: Option<&[u8]>,
) -> anyhow::Result<Appliance> {
    if !dir.is_initialised() {
        dir.init(defaults, passphrase)?;
        tracing::info!(data_dir = %dir.root().display(), "initialised a new data directory");
    }
    let (config, secrets) = dir.open(passphrase)?;
    let public = secrets.node_key.public();
    let node_kid = public.kid();
    let jwks = hexa_crypto::keys::jwks(&[public]);
    // The store keeps its LMDB environment in `DataDir::store_path()` (`<root>/store`).
    let mut store = StoreService::start(
        StoreConfig::new(dir.root(), &node_kid, &config.facility.id),
        secrets,
    )?;
    debug_assert_eq!(dir.store_path(), dir.root().join("store"));
    let devices = devices::Devices::start(&config.devices)?;
    let http = Arc::new(http::AppState::new(
        jwks,
        config.facility.id.clone(),
        &config.server,
        devices,
    ));
    http.set_store(store.handle().clone());
    store.users = Arc::downgrade(&http);
    let auth = Arc::new(
        auth::Authenticator::open(dir.root(), &format!("urn:hexa:appliance:{node_kid}"))
            .map_err(|e| anyhow::anyhow!("cannot open the client registry: {e}"))?,
    );
    let ceremonies = Arc::new(
        consent::Ceremonies::new(
            store.handle().clone(),
            http.device_actor(),
            &node_kid,
            &config.facility.id,
            config.consent.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot start the consent ceremonies: {e}"))?,
    );
    http.set_ceremonies(ceremonies.clone());
    http.mount_fhir(
        fhir::FhirApi::new(store.handle().clone(), auth.clone()).with_ceremonies(ceremonies),
    );
    // Ready once the keys, the readers and the store are open.
    http.set_ready(true);
    Ok(Appliance {
        config,
        http,
        node_kid,
        store,
        auth,
    })
}
