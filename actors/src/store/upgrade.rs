//! Rewrites a directory of format 5 or older, whose versions are keyed by resource
//! (`{type}/{id}/{version}`), to format 6's stamp keys (see [`super::format`]).
//!
//! Resources are rewritten a batch per write transaction. For each resource whose current
//! pointer still has format 5's 17 bytes, every version is opened under its old key and
//! sealed again under a new stamp key (the seal binds the key), headed by its version and
//! the stamp of the version before it; its Provenance moves with it the same way, and
//! `audit.provids` names the new key; the old keys are deleted and the pointer gets the
//! latest version's stamp. A resource is rewritten whole in one transaction, so an upgrade
//! that is interrupted resumes (at the next open, which `meta`'s `upgrading` note tells to)
//! with the resources still pointing the old way.
//!
//! What the versions say does not change: each envelope, with its signatures, is the bytes
//! format 5 stored (and its `format` field still says which format wrote it).

use std::ops::Bound;

use heed::{PutFlags, RwTxn};
use hexa_crypto::seal::Aad;
use serde_json::Value;

use super::error::{StoreError, StoreResult};
use super::format::{self, Current, Envelope, StoredProvenance, VersionHead};
use super::{Component, META_STAMPS, Store, versions_db_name};

/// Resources rewritten per write transaction.
const BATCH: usize = 256;

/// For tests of an interrupted upgrade: (resources per batch, batches after which the
/// upgrade stops with an error, as if the process had been killed there).
#[cfg(test)]
pub(crate) static INTERRUPT: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);

fn batch_size() -> usize {
    #[cfg(test)]
    if let Some((size, _)) = *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) {
        return size;
    }
    BATCH
}

/// Rewrites every resource still keyed the format-5 way; returns how many it rewrote.
pub(crate) fn versions_by_stamp(store: &Store) -> StoreResult<u64> {
    let mut rewritten = 0u64;
    #[cfg(test)]
    let mut batches = 0;
    for c in Component::ALL {
        let mut after: Option<Vec<u8>> = None;
        loop {
            // The map grows as the writer's does: ahead of a batch, and again (the batch
            // retried) if it still filled.
            store.grow_if_needed(64 << 20)?;
            let mut attempt = 0;
            let (done, last) = loop {
                match rewrite_batch(store, c, after.as_deref()) {
                    Err(StoreError::MapFull) if attempt < 8 => {
                        attempt += 1;
                        store.grow_after_full()?;
                    }
                    other => break other?,
                }
            };
            if done == 0 {
                break;
            }
            after = last;
            rewritten += done as u64;
            #[cfg(test)]
            {
                batches += 1;
                if let Some((_, stop)) = *INTERRUPT.lock().unwrap_or_else(|e| e.into_inner())
                    && batches == stop
                {
                    return Err(StoreError::Storage("upgrade interrupted (test)".into()));
                }
            }
            if rewritten.is_multiple_of(64 * BATCH as u64) {
                tracing::info!(rewritten, "store upgrade: resources rewritten so far");
            }
        }
    }
    // Anything left under a format-5 key belongs to no resource's history.
    let rtxn = store.env.read_txn()?;
    for c in Component::ALL {
        for item in store.dbs(c).versions.iter(&rtxn)? {
            let (k, _) = item?;
            if format::parse_stamp_key(k).is_none() {
                return Err(StoreError::Corrupt {
                    database: versions_db_name(c),
                    key: format::printable_key(k),
                    reason: "a version no current pointer leads to was left by the upgrade".into(),
                });
            }
        }
    }
    if rewritten > 0 {
        tracing::info!(rewritten, "store upgrade: versions keyed by stamp");
    }
    Ok(rewritten)
}

/// Rewrites the next [`BATCH`] resources of `c` still keyed the format-5 way after the
/// current key `after`, in one transaction; returns how many, and the last current key it
/// looked at.
fn rewrite_batch(
    store: &Store,
    c: Component,
    after: Option<&[u8]>,
) -> StoreResult<(usize, Option<Vec<u8>>)> {
    let mut wtxn = store.env.write_txn()?;
    let (batch, last) = {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let batch = batch_size();
        let mut out = Vec::with_capacity(batch);
        let mut last = None;
        for item in store
            .dbs(c)
            .current
            .range(&wtxn, &(lower, Bound::Unbounded))?
        {
            let (k, v) = item?;
            last = Some(k.to_vec());
            if let Some(legacy) = format::legacy_current(v) {
                out.push((k.to_vec(), legacy));
                if out.len() == batch {
                    break;
                }
            }
        }
        (out, last)
    };
    if batch.is_empty() {
        return Ok((0, last));
    }
    let mut top = 0;
    for (ck, (version, last_updated, deleted)) in &batch {
        let stamp = rewrite_resource(store, &mut wtxn, c, ck, *version)?;
        top = top.max(stamp);
        let cur = Current {
            version: *version,
            last_updated: *last_updated,
            deleted: *deleted,
            stamp,
        };
        store.dbs(c).current.put(&mut wtxn, ck, &cur.to_bytes())?;
    }
    store.meta.put(&mut wtxn, META_STAMPS, &top.to_be_bytes())?;
    wtxn.commit()?;
    Ok((batch.len(), last))
}

/// Rewrites versions 1..=`version` of the resource whose current key is `ck`; returns the
/// stamp of the last one.
fn rewrite_resource(
    store: &Store,
    wtxn: &mut RwTxn,
    c: Component,
    ck: &[u8],
    version: u64,
) -> StoreResult<u64> {
    let database = versions_db_name(c);
    let corrupt = |key: &[u8], reason: String| StoreError::Corrupt {
        database: database.clone(),
        key: format::printable_key(key),
        reason,
    };
    let text = std::str::from_utf8(ck).map_err(|e| corrupt(ck, e.to_string()))?;
    let (ty, id) = text
        .split_once('/')
        .ok_or_else(|| corrupt(ck, "a current key without `/`".into()))?;
    let seal = &store.seal_versions[c.index()];
    let dbs = store.dbs(c);
    let mut prev = 0;
    for v in 1..=version {
        let old = format::legacy_version_key(ty, id, v);
        let sealed = dbs
            .versions
            .get(wtxn, &old)?
            .ok_or_else(|| corrupt(&old, "a version of the resource is missing".into()))?;
        let plain = seal
            .open(
                sealed,
                &Aad {
                    database: &database,
                    key: &old,
                    version: v,
                },
            )
            .map_err(|e| corrupt(&old, e.to_string()))?;
        let env = Envelope::from_bytes(&plain).map_err(|e| corrupt(&old, e))?;
        if env.resource_type != ty || env.id != id || env.version_id != v {
            return Err(corrupt(&old, "envelope does not match its key".into()));
        }
        let stamp = store.next_stamp();
        let key = format::stamp_key(ty, stamp);
        let resealed = seal
            .seal(
                &plain,
                &Aad {
                    database: &database,
                    key: &key,
                    version: v,
                },
            )
            .map_err(|e| StoreError::Crypto(e.to_string()))?;
        let value = VersionHead { version: v, prev }.value(&resealed);
        dbs.versions
            .put_with_flags(wtxn, PutFlags::NO_OVERWRITE, &key, &value)?;
        dbs.versions.delete(wtxn, &old)?;
        move_provenance(store, wtxn, &old, &key, v)?;
        prev = stamp;
    }
    Ok(prev)
}

/// Moves the Provenance of a version from its format-5 key `old` to its stamp key `key`.
fn move_provenance(
    store: &Store,
    wtxn: &mut RwTxn,
    old: &[u8],
    key: &[u8],
    version: u64,
) -> StoreResult<()> {
    let corrupt = |reason: String| StoreError::Corrupt {
        database: "audit.provenance".into(),
        key: format::printable_key(old),
        reason,
    };
    let Some(sealed) = store.audit_provenance.get(wtxn, old)? else {
        return Ok(());
    };
    let aad = |key| Aad {
        database: "audit.provenance",
        key,
        version,
    };
    let plain = store
        .seal_provenance
        .open(sealed, &aad(old))
        .map_err(|e| corrupt(e.to_string()))?;
    let id = if plain.first() == Some(&b'{') {
        // Format 2: the whole Provenance as JSON.
        serde_json::from_slice::<Value>(&plain)
            .map_err(|e| corrupt(e.to_string()))?
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt("a Provenance without an id".into()))?
            .to_string()
    } else {
        StoredProvenance::from_bytes(&plain).map_err(corrupt)?.id
    };
    let resealed = store
        .seal_provenance
        .seal(&plain, &aad(key))
        .map_err(|e| StoreError::Crypto(e.to_string()))?;
    store
        .audit_provenance
        .put_with_flags(wtxn, PutFlags::NO_OVERWRITE, key, &resealed)?;
    store.audit_provenance.delete(wtxn, old)?;
    store.audit_provids.put(wtxn, id.as_bytes(), key)?;
    Ok(())
}
