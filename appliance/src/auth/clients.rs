//! The client registry on disk: one JSON file per client in `<data_dir>/clients/`.
//!
//! The directory is 0700 and each file 0600; a file is written to a temporary name, synced,
//! renamed into place, and the directory synced, so a crash leaves the old or the new
//! registration, never a torn one. Files carry a `version` so the format can evolve.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use serde_json::Value;

use super::keys::{Jwk, parse_jwk};
use super::{AuthError, ClientRegistration, Scopes};

/// Current on-disk format version.
const FORMAT_VERSION: u64 = 1;
/// Most keys one client may register.
const MAX_KEYS: usize = 16;

/// A registration with its keys and scopes parsed.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) registration: ClientRegistration,
    pub(crate) keys: Vec<Jwk>,
    pub(crate) scopes: Scopes,
    /// Random per registration (and per load): tokens name it, so a client revoked and
    /// registered again under the same id does not revive the old registration's tokens.
    pub(crate) generation: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredClient {
    version: u64,
    #[serde(flatten)]
    registration: ClientRegistration,
}

/// Whether `id` is a usable client id (and so a safe file name).
pub(crate) fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Client {
    /// Validates a registration and parses its keys and scopes.
    pub(crate) fn from_registration(r: ClientRegistration) -> Result<Self, AuthError> {
        let bad = |why: String| AuthError::InvalidRegistration(why);
        if !valid_client_id(&r.client_id) {
            return Err(bad(
                "client_id must be 1-128 of A-Z a-z 0-9 . _ - and not start with a dot".into(),
            ));
        }
        if r.facility_id.is_empty()
            || r.facility_id.len() > 64
            || !r
                .facility_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        {
            return Err(bad(
                "facility_id must be a FHIR id (1-64 of A-Z a-z 0-9 . -)".into(),
            ));
        }
        let scopes = Scopes::parse(&r.scopes).map_err(|e| bad(e.to_string()))?;
        let jwks: Vec<&Value> = match r.jwks.get("keys") {
            Some(Value::Array(keys)) => keys.iter().collect(),
            Some(_) => return Err(bad("jwks \"keys\" must be an array".into())),
            None => vec![&r.jwks],
        };
        if jwks.is_empty() || jwks.len() > MAX_KEYS {
            return Err(bad(format!("between 1 and {MAX_KEYS} keys are required")));
        }
        let mut keys: Vec<Jwk> = Vec::with_capacity(jwks.len());
        for (i, v) in jwks.into_iter().enumerate() {
            let k = parse_jwk(v).map_err(|e| bad(format!("key {i}: {e}")))?;
            if keys.iter().any(|o| o.kid == k.kid) {
                return Err(bad(format!("key {i}: duplicate kid {:?}", k.kid)));
            }
            keys.push(k);
        }
        let mut g = [0u8; 8];
        getrandom::fill(&mut g).map_err(|e| AuthError::Storage(format!("OS RNG: {e}")))?;
        Ok(Client {
            registration: r,
            keys,
            scopes,
            generation: u64::from_le_bytes(g),
        })
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> AuthError {
    AuthError::Storage(format!("{what} {}: {e}", path.display()))
}

/// Creates the directory (0700) if missing.
fn ensure_dir(dir: &Path) -> Result<(), AuthError> {
    if !dir.exists() {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(dir).map_err(|e| io("creating", dir, e))?;
    }
    Ok(())
}

/// Loads every `*.json` in `dir` (creating it if missing). Any bad file is an error: a
/// registry that silently drops clients is worse than one that refuses to start.
pub(crate) fn load_all(dir: &Path) -> Result<HashMap<String, Client>, AuthError> {
    ensure_dir(dir)?;
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| io("reading", dir, e))? {
        let path = entry.map_err(|e| io("reading", dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = name.strip_suffix(".json") else {
            continue; // temporary files of an interrupted write, editor leftovers
        };
        if !valid_client_id(id) {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| io("reading", &path, e))?;
        let stored: StoredClient = serde_json::from_slice(&bytes)
            .map_err(|e| AuthError::Storage(format!("{}: {e}", path.display())))?;
        if stored.version != FORMAT_VERSION {
            return Err(AuthError::Storage(format!(
                "{}: unsupported client file version {}",
                path.display(),
                stored.version
            )));
        }
        if stored.registration.client_id != id {
            return Err(AuthError::Storage(format!(
                "{}: client_id does not match the file name",
                path.display()
            )));
        }
        let client = Client::from_registration(stored.registration)
            .map_err(|e| AuthError::Storage(format!("{}: {e}", path.display())))?;
        out.insert(id.to_owned(), client);
    }
    Ok(out)
}

/// Writes a registration atomically (temp file 0600, fsync, rename, fsync of the directory).
pub(crate) fn store(dir: &Path, r: &ClientRegistration) -> Result<(), AuthError> {
    ensure_dir(dir)?;
    let body = serde_json::to_vec_pretty(&StoredClient {
        version: FORMAT_VERSION,
        registration: r.clone(),
    })
    .map_err(|e| AuthError::Storage(e.to_string()))?;
    let path = dir.join(format!("{}.json", r.client_id));
    let tmp = dir.join(format!(".{}.json.tmp", r.client_id));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io("creating", &tmp, e))?;
    f.write_all(&body).map_err(|e| io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
    sync_dir(dir)
}

/// Deletes a client's file; returns whether it existed.
pub(crate) fn remove(dir: &Path, client_id: &str) -> Result<bool, AuthError> {
    let path = dir.join(format!("{client_id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing", &path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuthError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}
