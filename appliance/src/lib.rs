//! hexa-appliance: the `hexa` binary's library half. It composes the other crates and
//! holds no domain logic: configuration ([`config`]), the data directory with the
//! appliance's keys ([`datadir`]), the consent readers ([`devices`]), the HTTP server
//! ([`http`], [`sim_api`]), and start-up ([`start`]).

pub mod config;
pub mod datadir;
pub mod devices;
pub mod http;
pub mod sim_api;

use std::sync::Arc;

/// Everything a started appliance holds; dropping it releases the data directory.
pub struct Appliance {
    /// The effective configuration.
    pub config: config::Config,
    /// Shared state of the HTTP server.
    pub http: Arc<http::AppState>,
    /// Key ID (RFC 7638 thumbprint) of the node signing key; also the appliance's ID.
    pub node_kid: String,
}

/// Opens (initialising on first start, with `defaults`) the data directory and builds
/// what the server needs.
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
    let devices = devices::Devices::start(&config.devices)?;
    let http = Arc::new(http::AppState::new(
        jwks,
        config.facility.id.clone(),
        &config.server,
        devices,
    ));
    // Everything `serve` exposes so far is open: the keys and the readers. The store
    // joins this check when it is wired in.
    http.set_ready(true);
    Ok(Appliance {
        config,
        http,
        node_kid,
    })
}
