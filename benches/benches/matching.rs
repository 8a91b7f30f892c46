//! Patient matching benches: `score()` and `blocking_keys()` latency, and one `$match`
//! (blocking lookup + scoring of every candidate) over in-memory registries of 100 000
//! and 1 000 000 synthetic patients, which is what the client registry does over LMDB.
//!
//! Registries are generated once, outside the measured loops (deterministic seed).
//! Run: `cargo bench -p hexa-benches --bench matching`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hexa_actors::matching::synth::{SynthRng, duplicate, population};
use hexa_actors::matching::{DEFAULT_THRESHOLD, Demographics, MemoryIndex, blocking_keys, score};

const SEED: u64 = 0x4845_5841;

fn queries(people: &[hexa_actors::matching::synth::SynthPerson], n: usize) -> Vec<Demographics> {
    let mut rng = SynthRng::new(SEED ^ 0xBE4C);
    (0..n)
        .map(|_| duplicate(&people[rng.below(people.len())], &mut rng).demographics())
        .collect()
}

fn bench_pairwise(c: &mut Criterion) {
    let people = population(SEED, 2_000);
    let qs = queries(&people, 1_000);
    let originals: Vec<Demographics> = people.iter().map(|p| p.demographics()).collect();
    let mut g = c.benchmark_group("matching");
    let mut i = 0usize;
    g.bench_function("score/duplicate_pair", |b| {
        let pairs: Vec<(Demographics, Demographics)> = {
            let mut rng = SynthRng::new(1);
            people
                .iter()
                .take(1_000)
                .map(|p| (p.demographics(), duplicate(p, &mut rng).demographics()))
                .collect()
        };
        b.iter(|| {
            i = (i + 1) % pairs.len();
            black_box(score(black_box(&pairs[i].0), black_box(&pairs[i].1)))
        })
    });
    g.bench_function("score/unrelated_pair", |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(score(
                black_box(&qs[i]),
                black_box(&originals[(i * 7 + 3) % originals.len()]),
            ))
        })
    });
    g.bench_function("blocking_keys", |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(blocking_keys(black_box(&qs[i])))
        })
    });
    g.bench_function("demographics_from_fhir", |b| {
        let json: Vec<serde_json::Value> = people.iter().take(1_000).map(|p| p.to_fhir()).collect();
        b.iter(|| {
            i = (i + 1) % json.len();
            black_box(Demographics::from_patient(black_box(&json[i])))
        })
    });
    g.finish();
}

fn bench_search(c: &mut Criterion) {
    for n in [100_000usize, 1_000_000] {
        let t = Instant::now();
        let people = population(SEED, n);
        let mut index = MemoryIndex::new();
        for p in &people {
            index.insert(p.demographics());
        }
        let qs = queries(&people, 2_000);
        drop(people);
        let (keys, largest) = index.block_stats();
        let mean_candidates =
            qs.iter().map(|q| index.candidates(q).len()).sum::<usize>() as f64 / qs.len() as f64;
        println!(
            "registry {n}: built in {:.1} s, {keys} blocking keys, largest block {largest}, \
             {mean_candidates:.0} candidates per query on average",
            t.elapsed().as_secs_f64()
        );
        let mut g = c.benchmark_group("matching");
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(6));
        let mut i = 0usize;
        g.bench_function(format!("search/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % qs.len();
                black_box(index.search(black_box(&qs[i]), DEFAULT_THRESHOLD))
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_pairwise, bench_search
}
criterion_main!(benches);
