//! RFC 6962 / certificate-transparency reference vectors, tamper tests and property tests
//! that the slice, `SubtreeSource` and `Frontier` versions agree.

use std::collections::HashMap;

use hexa_crypto::merkle::*;
use proptest::prelude::*;

/// The standard 8-input test set of the certificate-transparency reference tests.
fn ct_inputs() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0x00],
        vec![0x10],
        vec![0x20, 0x21],
        vec![0x30, 0x31],
        vec![0x40, 0x41, 0x42, 0x43],
        vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        (0x60..=0x6f).collect(),
    ]
}

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn hs(v: &[&str]) -> Vec<Hash> {
    v.iter().map(|s| h(s)).collect()
}

fn ct_leaves() -> Vec<Hash> {
    ct_inputs().iter().map(|d| leaf_hash(d)).collect()
}

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (0, 1, vec![]),
        (
            0,
            8,
            hs(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            5,
            8,
            hs(&[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
        (
            2,
            3,
            hs(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        ),
        (
            1,
            5,
            hs(&[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
    ]
}

fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            hs(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            6,
            8,
            hs(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
        (
            2,
            5,
            hs(&[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
    ]
}

/// An in-memory subtree store filled from `Frontier::append`'s reports.
#[derive(Default)]
struct MapSource {
    nodes: HashMap<(u32, u64), Hash>,
    reads: usize,
}

impl SubtreeSource for MapSource {
    type Error = String;
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, String> {
        self.reads += 1;
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or_else(|| format!("missing subtree ({level}, {index})"))
    }
}

fn build(leaves: &[Hash]) -> (Frontier, MapSource) {
    let mut f = Frontier::new();
    let mut src = MapSource::default();
    for l in leaves {
        for (level, idx, hash) in f.append(*l) {
            assert!(
                src.nodes.insert((level, idx), hash).is_none(),
                "subtree reported twice"
            );
        }
    }
    (f, src)
}

#[test]
fn ct_roots() {
    let leaves = ct_leaves();
    assert_eq!(empty_root(), h(ROOTS[0]));
    let (mut f, mut src) = (Frontier::new(), MapSource::default());
    assert_eq!(f.root(), h(ROOTS[0]));
    for n in 0..=8 {
        assert_eq!(root(&leaves[..n]), h(ROOTS[n]), "slice root size {n}");
        assert_eq!(
            root_from(&mut src, n as u64).unwrap(),
            h(ROOTS[n]),
            "stored root {n}"
        );
        assert_eq!(f.root(), h(ROOTS[n]), "frontier root {n}");
        if n < 8 {
            for (level, idx, hash) in f.append(leaves[n]) {
                src.nodes.insert((level, idx), hash);
            }
        }
    }
}

#[test]
fn ct_inclusion_vectors() {
    let leaves = ct_leaves();
    let (_, mut src) = build(&leaves);
    for (index, size, want) in inclusion_vectors() {
        let sub = &leaves[..size as usize];
        assert_eq!(
            inclusion_proof(sub, index).unwrap(),
            want,
            "PATH({index}, {size})"
        );
        assert_eq!(inclusion_proof_from(&mut src, index, size).unwrap(), want);
        verify_inclusion(
            &leaves[index as usize],
            index,
            size,
            &want,
            &h(ROOTS[size as usize]),
        )
        .unwrap();
    }
}

#[test]
fn ct_consistency_vectors() {
    let leaves = ct_leaves();
    let (_, mut src) = build(&leaves);
    for (old, new, want) in consistency_vectors() {
        assert_eq!(
            consistency_proof(&leaves[..new as usize], old).unwrap(),
            want
        );
        assert_eq!(consistency_proof_from(&mut src, old, new).unwrap(), want);
        verify_consistency(
            old,
            new,
            &h(ROOTS[old as usize]),
            &h(ROOTS[new as usize]),
            &want,
        )
        .unwrap();
    }
}

#[test]
fn tampered_proofs_rejected() {
    let leaves = ct_leaves();
    let r8 = h(ROOTS[8]);
    let (_, _, proof) = inclusion_vectors().swap_remove(2); // (5, 8)
    for i in 0..proof.len() {
        for bit in [0usize, 77, 255] {
            let mut bad = proof.clone();
            bad[i][bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                verify_inclusion(&leaves[5], 5, 8, &bad, &r8),
                Err(ProofError::RootMismatch)
            );
        }
    }
    let mut leaf = leaves[5];
    leaf[0] ^= 1;
    assert!(verify_inclusion(&leaf, 5, 8, &proof, &r8).is_err());
    assert!(verify_inclusion(&leaves[5], 4, 8, &proof, &r8).is_err());
    assert!(verify_inclusion(&leaves[5], 8, 8, &proof, &r8).is_err());
    assert!(verify_inclusion(&leaves[5], 5, 8, &proof[..2], &r8).is_err());
    let mut long = proof.clone();
    long.push(r8);
    assert!(verify_inclusion(&leaves[5], 5, 8, &long, &r8).is_err());
    let mut root = r8;
    root[31] ^= 0x80;
    assert!(verify_inclusion(&leaves[5], 5, 8, &proof, &root).is_err());

    let (_, _, cproof) = consistency_vectors().swap_remove(2); // (6, 8)
    let r6 = h(ROOTS[6]);
    for i in 0..cproof.len() {
        let mut bad = cproof.clone();
        bad[i][13] ^= 0x10;
        assert!(verify_consistency(6, 8, &r6, &r8, &bad).is_err());
    }
    let mut bad_old = r6;
    bad_old[0] ^= 1;
    assert!(verify_consistency(6, 8, &bad_old, &r8, &cproof).is_err());
    assert!(verify_consistency(5, 8, &r6, &r8, &cproof).is_err());
    assert!(verify_consistency(6, 8, &r6, &r8, &cproof[..2]).is_err());
    assert!(verify_consistency(8, 6, &r8, &r6, &[]).is_err());
    assert!(verify_consistency(8, 8, &r8, &r8, &[]).is_ok());
    assert!(verify_consistency(8, 8, &r6, &r8, &[]).is_err());
    assert!(verify_consistency(0, 8, &empty_root(), &r8, &[]).is_ok());
}

#[test]
fn argument_errors() {
    let leaves = ct_leaves();
    assert!(matches!(
        inclusion_proof(&leaves, 8),
        Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
    ));
    assert!(consistency_proof(&leaves, 9).is_err());
    let (_, mut src) = build(&leaves);
    assert!(matches!(
        inclusion_proof_from(&mut src, 8, 8),
        Err(SourceError::Proof(_))
    ));
    // Asking for a size beyond what the store holds surfaces the store's error.
    assert!(matches!(
        inclusion_proof_from(&mut src, 0, 9),
        Err(SourceError::Source(_))
    ));
}

#[test]
fn stored_proofs_read_few_subtrees() {
    let leaves: Vec<Hash> = (0..100_000u32)
        .map(|i| leaf_hash(&i.to_be_bytes()))
        .collect();
    let (f, mut src) = build(&leaves);
    assert_eq!(f.root(), root(&leaves));
    src.reads = 0;
    let p = inclusion_proof_from(&mut src, 77_777, 100_000).unwrap();
    assert!(src.reads <= 17 * 17, "reads {}", src.reads);
    verify_inclusion(&leaves[77_777], 77_777, 100_000, &p, &f.root()).unwrap();
}

fn leaves_of(n: usize, salt: u8) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&[salt, (i >> 8) as u8, i as u8]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn inclusion_agrees_and_verifies(n in 1usize..300, salt: u8, pick: usize) {
        let leaves = leaves_of(n, salt);
        let (f, mut src) = build(&leaves);
        let r = root(&leaves);
        prop_assert_eq!(f.root(), r);
        prop_assert_eq!(root_from(&mut src, n as u64).unwrap(), r);
        let idx = (pick % n) as u64;
        let p = inclusion_proof(&leaves, idx).unwrap();
        prop_assert_eq!(&inclusion_proof_from(&mut src, idx, n as u64).unwrap(), &p);
        prop_assert!(verify_inclusion(&leaves[idx as usize], idx, n as u64, &p, &r).is_ok());
        if n > 1 {
            let other = (idx + 1) % n as u64;
            prop_assert!(verify_inclusion(&leaves[idx as usize], other, n as u64, &p, &r).is_err());
        }
    }

    #[test]
    fn consistency_agrees_and_verifies(n in 1usize..300, salt: u8, pick: usize) {
        let leaves = leaves_of(n, salt);
        let (_, mut src) = build(&leaves);
        let old = (pick % (n + 1)) as u64;
        let p = consistency_proof(&leaves, old).unwrap();
        prop_assert_eq!(&consistency_proof_from(&mut src, old, n as u64).unwrap(), &p);
        let old_root = root(&leaves[..old as usize]);
        let new_root = root(&leaves);
        prop_assert!(verify_consistency(old, n as u64, &old_root, &new_root, &p).is_ok());
        // Stored root of every prefix agrees with the slice root.
        prop_assert_eq!(root_from(&mut src, old).unwrap(), old_root);
        if !p.is_empty() {
            let mut bad = p.clone();
            bad[0][0] ^= 1;
            prop_assert!(verify_consistency(old, n as u64, &old_root, &new_root, &bad).is_err());
        }
    }
}
