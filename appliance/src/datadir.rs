//! The data directory: configuration, the appliance's secrets, and (later) the store.
//!
//! Layout:
//! - `hexa.toml`: the effective configuration (written once by `init`);
//! - `keys/` (mode 0700) with `appliance.key` (mode 0600): node signing key and master
//!   sealing key, optionally wrapped under a passphrase (Argon2id + XChaCha20-Poly1305);
//! - `store/`: the LMDB environment.
//!
//! The passphrase, when used, comes from the `HEXA_KEY_PASSPHRASE` environment variable
//! and is never logged.

use crate::config::{Config, ConfigError};
use hexa_crypto::keyfile::{ApplianceSecrets, KeyFileError};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable holding the key-file passphrase.
pub const PASSPHRASE_ENV: &str = "HEXA_KEY_PASSPHRASE";

/// Errors opening or initialising a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Filesystem trouble, with the path concerned.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory is already initialised.
    #[error("{0} is already initialised (hexa.toml and keys exist); refusing to overwrite keys")]
    AlreadyInitialised(String),
    /// The directory is not initialised.
    #[error(
        "{0} is not initialised: run `hexa init --data-dir {0}` (or `hexa serve`, which initialises on first start)"
    )]
    NotInitialised(String),
    /// The key file is readable by others.
    #[error("{0} is readable by group or others (mode {1:o}); run `chmod 600 {0}`")]
    KeyFilePermissions(String, u32),
    /// The key file could not be opened.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: String,
        /// What went wrong (wrong passphrase, damaged file...).
        source: KeyFileError,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (nothing is touched yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `hexa.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("hexa.toml")
    }
    /// `keys/appliance.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("keys").join("appliance.key")
    }
    /// `store/`, the LMDB environment.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store")
    }
    /// Whether `init` has run here.
    pub fn is_initialised(&self) -> bool {
        self.config_path().exists() && self.key_path().exists()
    }

    /// Creates the directory, writes `config` and fresh secrets. Refuses to overwrite.
    pub fn init(
        &self,
        config: &Config,
        passphrase: Option<&[u8]>,
    ) -> Result<ApplianceSecrets, DataDirError> {
        if self.config_path().exists() || self.key_path().exists() {
            return Err(DataDirError::AlreadyInitialised(
                self.root.display().to_string(),
            ));
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: "(init options)".into(),
            message,
        })?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.root)
            .map_err(io(&self.root))?;
        let keys = self.root.join("keys");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(io(&keys))?;
        let secrets = ApplianceSecrets::generate().map_err(|source| DataDirError::KeyFile {
            path: self.key_path().display().to_string(),
            source,
        })?;
        let bytes = secrets
            .to_file_bytes(passphrase)
            .map_err(|source| DataDirError::KeyFile {
                path: self.key_path().display().to_string(),
                source,
            })?;
        write_new(&self.key_path(), &bytes, 0o600)?;
        // The config goes last: its presence marks a complete initialisation.
        write_new(&self.config_path(), config.to_toml().as_bytes(), 0o640)?;
        Ok(secrets)
    }

    /// Reads the configuration and unlocks the secrets.
    pub fn open(
        &self,
        passphrase: Option<&[u8]>,
    ) -> Result<(Config, ApplianceSecrets), DataDirError> {
        if !self.is_initialised() {
            return Err(DataDirError::NotInitialised(
                self.root.display().to_string(),
            ));
        }
        let config = Config::load(&self.config_path())?;
        let key_path = self.key_path();
        let meta = fs::metadata(&key_path).map_err(io(&key_path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DataDirError::KeyFilePermissions(
                key_path.display().to_string(),
                mode,
            ));
        }
        let bytes = fs::read(&key_path).map_err(io(&key_path))?;
        let secrets = ApplianceSecrets::from_file_bytes(&bytes, passphrase).map_err(|source| {
            DataDirError::KeyFile {
                path: key_path.display().to_string(),
                source,
            }
        })?;
        Ok((config, secrets))
    }
}

/// Writes a new file with `mode`, durably (fsync of the file and its directory).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    // The umask may have narrowed the mode further, never widened it; make it exact.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// The passphrase from [`PASSPHRASE_ENV`], if set and non-empty.
pub fn passphrase_from_env() -> Option<Vec<u8>> {
    std::env::var_os(PASSPHRASE_ENV)
        .map(|v| v.into_encoded_bytes())
        .filter(|v| !v.is_empty())
}
