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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
