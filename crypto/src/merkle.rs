//! RFC 6962 / RFC 9162 Merkle tree maths for the audit log.
//!
//! Leaf hash `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`, the empty
//! tree's root `SHA-256("")`. Two families of functions compute the same results:
//! - slice versions (`root`, `inclusion_proof`, `consistency_proof`) over all leaf hashes, the
//!   direct transcription of RFC 9162 §2.1, used as the reference;
//! - storage versions (`root_from`, `inclusion_proof_from`, `consistency_proof_from`) that read
//!   only O(log² n) hashes of completed perfect subtrees from a [`SubtreeSource`], for a log of
//!   millions of entries; [`Frontier`] appends leaves in O(log n) and reports the completed
//!   subtrees to store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Errors from proof generation and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} out of range for tree size {size}")]
    IndexOutOfRange {
        /// The requested index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old size is larger than the new size (or zero where a proof needs a non-empty tree).
    #[error("invalid tree sizes: old {old}, new {new}")]
    InvalidSizes {
        /// The old (smaller) tree size.
        old: u64,
        /// The new (larger) tree size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has wrong length")]
    WrongLength,
    /// The proof does not lead to the expected root.
    #[error("proof does not match the root")]
    RootMismatch,
}

/// Error of the storage-backed functions: the source failed, or the request was invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError<E> {
    /// The subtree source failed.
    #[error("subtree source failed: {0:?}")]
    Source(E),
    /// Invalid arguments (index or sizes).
    #[error(transparent)]
    Proof(#[from] ProofError),
}

/// RFC 6962 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 interior node hash: `SHA-256(0x01 || l || r)`.
pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly less than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH over leaf hashes (RFC 9162 §2.1.1).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Inclusion proof `PATH(index, leaves)` (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(leaves, index as usize, &mut out);
    Ok(out)
}

fn path(d: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n as u64) as usize;
    if m < k {
        path(&d[..k], m, out);
        out.push(root(&d[k..]));
    } else {
        path(&d[k..], m - k, out);
        out.push(root(&d[..k]));
    }
}

/// Consistency proof `PROOF(old_size, leaves)` (RFC 9162 §2.1.4.1). Empty for `old_size` 0 or
/// equal to the current size.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let new = leaves.len() as u64;
    if old_size > new {
        return Err(ProofError::InvalidSizes { old: old_size, new });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new {
        subproof(old_size as usize, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], b: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !b {
            out.push(root(d));
        }
        return;
    }
    let k = split_point(n as u64) as usize;
    if m <= k {
        subproof(m, &d[..k], b, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if subtle::ConstantTimeEq::ct_eq(&r[..], &root[..]).into() {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::InvalidSizes {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty tree; RFC 9162 defines no proof for it.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if old_size.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = proof[0];
    let mut sr = proof[0];
    for c in &proof[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// A store of completed perfect subtree hashes: level `L`, index `i` covers leaves
/// `[i << L, (i + 1) << L)`; level 0 holds the leaf hashes themselves.
pub trait SubtreeSource {
    /// The store's error.
    type Error;
    /// Returns the hash of the perfect subtree at (`level`, `index`).
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// MTH of leaves `[start, end)`, where `[start, end)` is a range the RFC recursion produces
/// (`start` is a multiple of the largest power of two not above `end - start`).
fn range_root<S: SubtreeSource>(src: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return src.subtree(level, start >> level);
    }
    let k = split_point(n);
    let l = range_root(src, start, start + k)?;
    let r = range_root(src, start + k, end)?;
    Ok(node_hash(&l, &r))
}

/// Root of the first `size` leaves, from stored subtrees (at most log₂ n reads).
pub fn root_from<S: SubtreeSource>(src: &mut S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_root(src, 0, size)
}

/// Inclusion proof for `index` in the tree of `size` leaves, from stored subtrees.
pub fn inclusion_proof_from<S: SubtreeSource>(
    src: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, SourceError<S::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size }.into());
    }
    let mut out = Vec::new();
    path_from(src, index, 0, size, &mut out).map_err(SourceError::Source)?;
    Ok(out)
}

fn path_from<S: SubtreeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path_from(src, m, start, start + k, out)?;
        out.push(range_root(src, start + k, end)?);
    } else {
        path_from(src, m - k, start + k, end, out)?;
        out.push(range_root(src, start, start + k)?);
    }
    Ok(())
}

/// Consistency proof from `old` to `new` leaves, from stored subtrees.
pub fn consistency_proof_from<S: SubtreeSource>(
    src: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, SourceError<S::Error>> {
    if old > new {
        return Err(ProofError::InvalidSizes { old, new }.into());
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof_from(src, old, 0, new, true, &mut out).map_err(SourceError::Source)?;
    }
    Ok(out)
}

fn subproof_from<S: SubtreeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !b {
            out.push(range_root(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof_from(src, m, start, start + k, b, out)?;
        out.push(range_root(src, start + k, end)?);
    } else {
        subproof_from(src, m - k, start + k, end, false, out)?;
        out.push(range_root(src, start, start + k)?);
    }
    Ok(())
}

/// The compact range of a log (one hash per set bit of its size): appends in O(log n).
/// Serializable so the store can persist it next to the subtree hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FrontierRepr", into = "FrontierRepr")]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first.
    hashes: Vec<Hash>,
}

#[derive(Serialize, Deserialize)]
struct FrontierRepr {
    size: u64,
    hashes: Vec<Hash>,
}

impl From<Frontier> for FrontierRepr {
    fn from(f: Frontier) -> Self {
        Self {
            size: f.size,
            hashes: f.hashes,
        }
    }
}

impl TryFrom<FrontierRepr> for Frontier {
    type Error = String;
    fn try_from(r: FrontierRepr) -> Result<Self, String> {
        if r.hashes.len() != r.size.count_ones() as usize {
            return Err(format!(
                "frontier of size {} needs {} hashes, found {}",
                r.size,
                r.size.count_ones(),
                r.hashes.len()
            ));
        }
        Ok(Self {
            size: r.size,
            hashes: r.hashes,
        })
    }
}

impl Frontier {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees making up the tree, leftmost (largest) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The current tree root.
    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, h| node_hash(h, &acc))
    }

    /// Appends one leaf hash; returns the perfect subtrees completed by it as
    /// `(level, index, hash)`, level 0 (the leaf itself) first.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut done = vec![(0u32, self.size, leaf)];
        let mut h = leaf;
        let mut level = 0u32;
        let mut idx = self.size;
        while idx & 1 == 1 {
            // The popcount invariant guarantees a left sibling for every set low bit.
            let Some(left) = self.hashes.pop() else { break };
            h = node_hash(&left, &h);
            level += 1;
            idx >>= 1;
            done.push((level, idx, h));
        }
        self.hashes.push(h);
        self.size += 1;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(1 << 40), 1 << 39);
    }

    #[test]
    fn frontier_serde_validates() {
        let mut f = Frontier::new();
        for i in 0..5u8 {
            f.append(leaf_hash(&[i]));
        }
        let j = serde_json::to_string(&f).unwrap();
        let back: Frontier = serde_json::from_str(&j).unwrap();
        assert_eq!(back, f);
        let bad = j.replace("\"size\":5", "\"size\":7");
        assert!(serde_json::from_str::<Frontier>(&bad).is_err());
    }
}
