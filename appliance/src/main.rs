//! `hexa`: the appliance binary. Parses the command line and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hexa_appliance::{config::Config, datadir::DataDir};
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: under load the server spent about a quarter of its
/// CPU in malloc/free (benches/README.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "hexa", version, about = "hexa, the health exchange appliance")]
struct Cli {
    /// Data directory (configuration, keys, store).
    #[arg(
        long,
        global = true,
        env = "HEXA_DATA_DIR",
        default_value = "hexa-data"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Initialise a data directory: configuration, node key and master key.
    /// The key file is wrapped under HEXA_KEY_PASSPHRASE when that variable is set.
    Init {
        /// Facility ID in the national roster.
        #[arg(long)]
        facility_id: Option<String>,
        /// Facility name.
        #[arg(long)]
        facility_name: Option<String>,
        /// Address the API listens on.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The absolute URL integrators reach the appliance at (scheme, host, port; no
        /// path), when it differs from the listening address (a reverse proxy, NAT or a
        /// forwarded port). Links and the token endpoint's required `aud` are built on it.
        #[arg(long)]
        public_base_url: Option<String>,
    },
    /// Run the appliance (initialising the data directory with defaults on first start).
    Serve {
        /// Listen on this address instead of the configured one.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the appliance's public signing key (JWK) and key ID.
    Keys,
    /// Manage the integrator clients allowed to obtain tokens (SMART Backend Services).
    /// Changes take effect at the next start of `serve`.
    Client {
        #[command(subcommand)]
        action: ClientCommand,
    },
    /// Write an auditor's export of one patient's record (FHIR Bundle): every version with
    /// its signatures, consents with evidence, the AuditEvents naming the patient with
    /// inclusion proofs, a fresh checkpoint, the roster and a signed manifest. It appends the
    /// export's own AuditEvent, so it needs the store to itself: while `serve` runs it is
    /// refused (the store lock), run it with `serve` stopped or on a restored backup.
    Export {
        /// Patient id.
        #[arg(long)]
        patient: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an export offline (no data directory, no network) against the ministry root
    /// key; prints a report and exits 1 naming every failure.
    Verify {
        /// The export Bundle.
        file: PathBuf,
        /// Ministry root public key: a JWK (inline or a file) or base64url raw Ed25519 key
        /// (write `--root=KEY` when the key starts with '-').
        #[arg(long)]
        root: String,
    },
    /// Manage the ministry-signed roster of trusted facilities and node keys.
    Roster {
        #[command(subcommand)]
        action: RosterCommand,
    },
}

#[derive(Subcommand)]
enum RosterCommand {
    /// Install a signed roster (JSON: `{"roster": {...}, "signature": "<JWS>"}`) after
    /// checking the root signature and that it vouches for this appliance's node key and
    /// facility now.
    Install {
        /// The signed roster file.
        file: PathBuf,
        /// Ministry root public key: a JWK (inline or a file) or base64url raw Ed25519 key.
        #[arg(long)]
        root: String,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register (or replace) a client with its public key and maximum scopes. Without
    /// `--jwk`, generates an Ed25519 key pair and writes the private JWK to `--key-out`
    /// (mode 0600), printing its path.
    Add {
        /// Client name: its ID, the `iss`/`sub` of its assertions.
        #[arg(long, alias = "id")]
        name: String,
        /// The facility (Organization id) the client acts for.
        #[arg(long)]
        facility: String,
        /// The client's public key: a JWK, a JWK Set, or a PEM public key (Ed25519, P-256,
        /// P-384, RSA).
        #[arg(long, alias = "jwks")]
        jwk: Option<PathBuf>,
        /// Where a generated private JWK is written (default `./<name>.private.jwk`).
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// The most it may be granted, e.g. "system/Patient.cruds system/Observation.rs".
        #[arg(long, alias = "scopes")]
        scope: String,
    },
    /// List registered clients.
    List,
    /// Revoke (remove) a client.
    #[command(alias = "remove")]
    Revoke {
        /// Client name.
        #[arg(long = "name", alias = "id", value_name = "NAME")]
        flag: Option<String>,
        /// Client name (positional form: `hexa client revoke NAME`).
        name: Option<String>,
    },
    /// Print a signed client assertion for `POST /fhir/token` (RFC 7523, EdDSA) made with
    /// a private JWK written by `client add`: for curl sessions and smoke tests.
    Assertion {
        /// Client name.
        #[arg(long)]
        name: String,
        /// The private JWK file.
        #[arg(long)]
        key: PathBuf,
        /// The token endpoint URL (default: the configured public base URL, or the listen
        /// address, + `/fhir/token`).
        #[arg(long)]
        aud: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.data_dir);
    let passphrase = hexa_appliance::datadir::passphrase_from_env();
    match cli.command {
        Command::Init {
            facility_id,
            facility_name,
            listen,
            public_base_url,
        } => {
            let mut cfg = Config::defaults();
            if let Some(id) = facility_id {
                cfg.facility.id = id;
            }
            if let Some(name) = facility_name {
                cfg.facility.name = name;
            }
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(url) = public_base_url {
                cfg.server.public_base_url = Some(url);
            }
            let secrets = dir.init(&cfg, passphrase.as_deref())?;
            println!(
                "initialised {} for facility {}\nnode key id: {}",
                dir.root().display(),
                cfg.facility.id,
                secrets.node_key.kid()
            );
            Ok(())
        }
        Command::Client { action } => {
            if !dir.is_initialised() {
                anyhow::bail!(
                    "{} is not initialised: run `hexa init` first",
                    dir.root().display()
                );
            }
            // The issuer only matters for tokens, which this command never issues.
            let auth = hexa_appliance::auth::Authenticator::open(dir.root(), "urn:hexa:cli")?;
            match action {
                ClientCommand::Add {
                    name,
                    facility,
                    jwk,
                    key_out,
                    scope,
                } => {
                    let (jwks, written) = match jwk {
                        Some(path) => (hexa_appliance::clientkeys::read_public_keys(&path)?, None),
                        None => {
                            let path = key_out
                                .unwrap_or_else(|| PathBuf::from(format!("{name}.private.jwk")));
                            (
                                hexa_appliance::clientkeys::generate_private_jwk(&path)?,
                                Some(path),
                            )
                        }
                    };
                    let registered =
                        auth.register_client(hexa_appliance::auth::ClientRegistration {
                            client_id: name.clone(),
                            facility_id: facility,
                            jwks,
                            scopes: scope,
                        });
                    if let Err(e) = registered {
                        // A key file made for a refused registration is useless: remove it.
                        if let Some(p) = &written {
                            let _ = std::fs::remove_file(p);
                        }
                        return Err(e.into());
                    }
                    if let Some(p) = written {
                        println!("private key written to {} (mode 0600)", p.display());
                    }
                    println!("registered client {name}; restart `hexa serve` to apply");
                }
                ClientCommand::List => {
                    for c in auth.clients() {
                        println!("{}\t{}\t{}", c.client_id, c.facility_id, c.scopes);
                    }
                }
                ClientCommand::Revoke { flag, name } => {
                    let Some(id) = flag.or(name) else {
                        anyhow::bail!("name the client to revoke: `hexa client revoke NAME`");
                    };
                    if auth.revoke_client(&id)? {
                        println!("revoked client {id}; restart `hexa serve` to apply");
                    } else {
                        anyhow::bail!("no client {id}");
                    }
                }
                ClientCommand::Assertion { name, key, aud } => {
                    let cfg = Config::load(&dir.config_path())?;
                    let aud = aud.unwrap_or_else(|| {
                        let base = cfg
                            .server
                            .public_base_url
                            .clone()
                            .unwrap_or_else(|| format!("http://{}", cfg.server.listen));
                        format!("{base}/fhir/token")
                    });
                    let key = hexa_appliance::clientkeys::read_private_jwk(&key)?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs();
                    println!(
                        "{}",
                        hexa_appliance::clientkeys::client_assertion(&key, &name, &aud, now)?
                    );
                }
            }
            Ok(())
        }
        Command::Verify { file, root } => {
            let root = hexa_appliance::verify::parse_root_key(&root).map_err(anyhow::Error::msg)?;
            let meta = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if meta.len() > hexa_appliance::verify::MAX_EXPORT_BYTES as u64 {
                anyhow::bail!("{} is larger than an export may be", file.display());
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let report = hexa_appliance::verify::verify_export(&bundle, &root, unix_now());
            print!("{report}");
            if !report.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Roster {
            action: RosterCommand::Install { file, root },
        } => {
            let root = hexa_appliance::verify::parse_root_key(&root).map_err(anyhow::Error::msg)?;
            let (cfg, secrets) = dir.open(passphrase.as_deref())?;
            let roster = hexa_appliance::export::read_roster(&file)?;
            hexa_appliance::export::install_roster(
                dir.root(),
                &roster,
                &root,
                &secrets.node_key.public(),
                &cfg.facility.id,
                unix_now(),
            )?;
            println!(
                "installed the roster for facility {} (node key {})",
                cfg.facility.id,
                secrets.node_key.kid()
            );
            Ok(())
        }
        Command::Export { patient, out } => {
            let (cfg, secrets) = dir.open(passphrase.as_deref())?;
            let node_key = hexa_crypto::keys::SigningKey::from_seed(secrets.node_key.seed());
            let kid = node_key.kid();
            // The store first: while `serve` holds it, say so before anything else.
            let store = hexa_appliance::StoreService::start(
                hexa_actors::store::StoreConfig::new(dir.root(), &kid, &cfg.facility.id),
                secrets,
            )?;
            let roster = hexa_appliance::export::installed_roster(dir.root())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let bundle = rt.block_on(hexa_appliance::export::export_patient(
                store.handle(),
                &node_key,
                &cfg.facility.id,
                &roster,
                &patient,
            ))?;
            drop(store);
            let n = bundle["entry"].as_array().map_or(0, Vec::len);
            std::fs::write(&out, serde_json::to_vec_pretty(&bundle)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {} ({n} entries)", out.display());
            Ok(())
        }
        Command::Keys => {
            let (_, secrets) = dir.open(passphrase.as_deref())?;
            let jwk = secrets.node_key.public().to_jwk();
            println!("{}", serde_json::to_string_pretty(&jwk)?);
            Ok(())
        }
        Command::Serve { listen } => {
            let app = hexa_appliance::start(&dir, &Config::defaults(), passphrase.as_deref())?;
            let addr = listen.unwrap_or(app.config.server.listen);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                tracing::info!(
                    addr = %listener.local_addr()?,
                    facility = %app.config.facility.id,
                    node_kid = %app.node_kid,
                    "hexa serving"
                );
                // Under systemd: READY=1, then WATCHDOG=1 while /readyz answers.
                hexa_appliance::sdnotify::start(listener.local_addr()?);
                hexa_appliance::http::run(listener, app.http.clone(), shutdown_signal()).await?;
                tracing::info!("hexa stopped");
                anyhow::Ok(())
            })
        }
    }
}

/// Unix time in seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
