//! `hexa`: the appliance binary. Parses the command line and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hexa_appliance::{config::Config, datadir::DataDir};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// inclusion proofs, a fresh checkpoint, the roster and a signed manifest. Run it while
    /// `serve` is stopped (or on a restored backup): it appends the export's AuditEvent.
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
    /// Register (or replace) a client with its public keys and maximum scopes.
    Add {
        /// Client ID (the `iss`/`sub` of its assertions).
        #[arg(long)]
        id: String,
        /// The facility (Organization id) the client acts for.
        #[arg(long)]
        facility: String,
        /// File holding the client's public JWK Set (or a single public JWK).
        #[arg(long)]
        jwks: PathBuf,
        /// The most it may be granted, e.g. "system/Patient.cruds system/Observation.rs".
        #[arg(long)]
        scopes: String,
    },
    /// List registered clients.
    List,
    /// Remove a client.
    Remove {
        /// Client ID.
        #[arg(long)]
        id: String,
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
                    id,
                    facility,
                    jwks,
                    scopes,
                } => {
                    let text = std::fs::read_to_string(&jwks)
                        .with_context(|| format!("cannot read {}", jwks.display()))?;
                    let jwks: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", jwks.display()))?;
                    auth.register_client(hexa_appliance::auth::ClientRegistration {
                        client_id: id.clone(),
                        facility_id: facility,
                        jwks,
                        scopes,
                    })?;
                    println!("registered client {id}; restart `hexa serve` to apply");
                }
                ClientCommand::List => {
                    for c in auth.clients() {
                        println!("{}\t{}\t{}", c.client_id, c.facility_id, c.scopes);
                    }
                }
                ClientCommand::Remove { id } => {
                    if auth.revoke_client(&id)? {
                        println!("removed client {id}; restart `hexa serve` to apply");
                    } else {
                        anyhow::bail!("no client {id}");
                    }
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
            let roster = hexa_appliance::export::installed_roster(dir.root())?;
            let node_key = hexa_crypto::keys::SigningKey::from_seed(secrets.node_key.seed());
            let kid = node_key.kid();
            let store = hexa_appliance::StoreService::start(
                hexa_actors::store::StoreConfig::new(dir.root(), &kid, &cfg.facility.id),
                secrets,
            )?;
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
