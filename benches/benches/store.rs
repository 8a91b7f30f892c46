//! Store benchmarks: durable, signed, sealed, audited writes per second through the
//! registry actors (one writer, and many concurrent writers sharing group commits), audited
//! reads per second, search and patient-match latency, and where a write's time goes.
//!
//! `HEXA_BENCH_PATIENTS` sets the population for the read/search/match benches (default
//! 10 000); the populated store is built once and cached under the target directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hexa_actors::handle::StoreHandle;
use hexa_actors::matching::synth;
use hexa_actors::store::StoreConfig;
use hexa_actors::store::engine::TxEntry;
use hexa_actors::store::format::FORMAT_VERSION;
use hexa_actors::store::search::SearchQuery;
use hexa_benches::{ProcUsage, ThreadCpu, observation};
use hexa_crypto::keys::SigningKey;
use hexa_crypto::seal::{Aad, MasterKey};
use serde_json::{Value, json};

/// The appliance's allocator (`appliance/src/main.rs`), so the store is measured as it runs
/// there; under glibc's malloc a quarter of a write's CPU went to malloc/free.
mod common;
use common::{ctx, secrets};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes (or reads) per iteration of the concurrent benches.
const BURST: u64 = 2048;

struct Fixture {
    sys: actix_rt::SystemRunner,
    handle: StoreHandle,
    _dir: Option<tempfile::TempDir>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = fixture_at(dir.path());
    f._dir = Some(dir);
    f
}

fn fixture_at(path: &Path) -> Fixture {
    let sys = actix_rt::System::new();
    let mut cfg = StoreConfig::new(path, "bench-node", "fac");
    cfg.initial_map_size = 1 << 30;
    // `HEXA_BENCH_AUDIT_LAG`: how many AuditEvents may wait for their index terms (default:
    // the store's); 0 files them in the next group commit, as close to inline as it gets.
    if let Some(lag) = hexa_benches::env_parse("HEXA_BENCH_AUDIT_LAG") {
        cfg.audit_index_lag = lag;
    }
    // `HEXA_BENCH_JOURNAL_LAG`: how many shared-health-record postings may wait in the index
    // journal before a group commit files them (default: the store's).
    if let Some(lag) = hexa_benches::env_parse("HEXA_BENCH_JOURNAL_LAG") {
        cfg.index_journal_lag = lag;
    }
    // `HEXA_BENCH_FILING_CHUNK`: most postings one group commit files from the journal.
    if let Some(n) = hexa_benches::env_parse("HEXA_BENCH_FILING_CHUNK") {
        cfg.index_filing_chunk = n;
    }
    // `HEXA_BENCH_COMMIT_WAIT_US` and `HEXA_BENCH_COMMIT_FILL`: how long the writer waits
    // under load for more members (0: never), and the batch it commits without waiting.
    if let Some(us) = hexa_benches::env_parse("HEXA_BENCH_COMMIT_WAIT_US") {
        cfg.group_commit_wait = Duration::from_micros(us);
    }
    if let Some(n) = hexa_benches::env_parse("HEXA_BENCH_COMMIT_FILL") {
        cfg.group_commit_fill = n;
    }
    if let Some(n) = hexa_benches::env_writer_nice() {
        cfg.writer_nice = n;
    }
    let handle = sys
        .block_on(async { StoreHandle::start(cfg, secrets(), 2) })
        .expect("start store");
    Fixture {
        sys,
        handle,
        _dir: None,
    }
}

/// Version of the cached population layout (bump when the bench's data changes; 2: versions
/// carry `meta.source` and its `_source` index term).
const POPULATION_CACHE: u32 = 2;

/// Patients per FHIR transaction when loading a population.
const LOAD_TX: usize = 500;

/// A store holding the synthetic population of `n` patients (seed 11), and their ids.
///
/// The store is built once and cached under `<target>/hexa-bench-store/`, keyed by the
/// store's on-disk format version, this bench's cache version and `n`; a `ids.txt` file
/// written after the load completed marks it usable (an interrupted load is rebuilt).
/// Loading goes through the actors as FHIR transactions of [`LOAD_TX`] creates (each
/// version signed, sealed, indexed and audited like any write), two in flight.
fn population_fixture(n: usize, people: impl FnOnce() -> Vec<Value>) -> (Fixture, Vec<String>) {
    let target = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir);
    let dir = target
        .join("hexa-bench-store")
        .join(format!("f{FORMAT_VERSION}-c{POPULATION_CACHE}-p{n}-s11"));
    let marker = dir.join("ids.txt");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let ids: Vec<String> = text.lines().map(str::to_string).collect();
        if ids.len() == n {
            eprintln!("using the cached {n}-patient store in {}", dir.display());
            return (fixture_at(&dir), ids);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cache dir");
    let f = fixture_at(&dir);
    let t = Instant::now();
    let mut people = people().into_iter();
    let mut chunks = Vec::with_capacity(n.div_ceil(LOAD_TX));
    loop {
        let chunk: Vec<Value> = people.by_ref().take(LOAD_TX).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let chunks: Arc<Vec<Vec<Value>>> = Arc::new(chunks);
    let out = Arc::new(std::sync::Mutex::new(vec![Vec::new(); chunks.len()]));
    let (ch, o) = (chunks.clone(), out.clone());
    let loaded = Arc::new(AtomicU64::new(0));
    let ld = loaded.clone();
    run_concurrent(&f, chunks.len() as u64, 2, move |h, i| {
        let (ch, o, ld) = (ch.clone(), o.clone(), ld.clone());
        async move {
            let entries = ch[i as usize]
                .iter()
                .map(|p| TxEntry::Create {
                    resource: p.clone(),
                    full_url: None,
                })
                .collect();
            let res = h.transaction(&ctx(), entries).await.expect("load tx");
            let ids: Vec<String> = res.into_iter().map(|w| w.record.id).collect();
            let done = ld.fetch_add(ids.len() as u64, Ordering::Relaxed) + ids.len() as u64;
            if done % 100_000 < LOAD_TX as u64 {
                eprintln!("  loaded {done} patients");
            }
            o.lock().expect("ids")[i as usize] = ids;
        }
    });
    let ids: Vec<String> = out.lock().expect("ids").concat();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded {n} patients in {secs:.1} s ({:.0}/s), map {} MiB",
        n as f64 / secs,
        f.handle.store().map_size() >> 20
    );
    std::fs::write(&marker, ids.join("\n")).expect("write ids");
    (f, ids)
}

/// Runs `n` operations keeping `concurrency` in flight at all times (a sliding window:
/// `concurrency` client tasks each take the next operation number as soon as their last
/// one completed, so the writer's queue never drains between waves).
fn run_concurrent<F, Fut>(f: &Fixture, n: u64, concurrency: u64, op: F) -> Duration
where
    F: Fn(StoreHandle, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    f.sys.block_on(async {
        let start = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..concurrency.min(n).max(1))
            .map(|_| {
                let (h, next, op) = (f.handle.clone(), next.clone(), op.clone());
                actix_rt::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        op(h.clone(), i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

/// Snapshot of the writer's counters: (commits, members, apply ns, commit ns, audit events
/// filed in the index, idle filing commits, idle filing ns, postings filed from the index
/// journal, ns spent filing them, commits that waited for more members, batches of creates
/// the registries took from their lanes and the creates in them), and of the process's CPU
/// time and bytes written.
fn writer_counters(f: &Fixture) -> ([u64; 12], ProcUsage, ThreadCpu) {
    let st = f.handle.engine().writer.stats();
    let (lane_batches, lane_writes) = f.handle.lane_counts();
    let w = [
        st.commits.load(Ordering::Relaxed),
        st.members.load(Ordering::Relaxed),
        st.apply_nanos.load(Ordering::Relaxed),
        st.commit_nanos.load(Ordering::Relaxed),
        st.audit_indexed.load(Ordering::Relaxed),
        st.index_commits.load(Ordering::Relaxed),
        st.index_nanos.load(Ordering::Relaxed),
        st.journal_filed.load(Ordering::Relaxed),
        st.journal_nanos.load(Ordering::Relaxed),
        st.waits.load(Ordering::Relaxed),
        lane_batches,
        lane_writes,
    ];
    (w, ProcUsage::now(), ThreadCpu::now())
}

/// Prints what the writer did between two snapshots (where a group commit's time goes).
/// Also prints the whole process's CPU time and bytes written per member (the bench's own
/// driver included).
fn report_writer(
    label: &str,
    before: ([u64; 12], ProcUsage, ThreadCpu),
    after: ([u64; 12], ProcUsage, ThreadCpu),
    wall: Duration,
) {
    let [
        commits,
        members,
        apply,
        commit,
        filed,
        idle_commits,
        idle,
        jfiled,
        jnanos,
        waits,
        lane_batches,
        lane_writes,
    ] = std::array::from_fn(|i| after.0[i].saturating_sub(before.0[i]));
    if members == 0 {
        return; // filtered out
    }
    let (c, m) = (commits.max(1) as f64, members.max(1) as f64);
    let (cpu, kib) = after.1.per_op_since(&before.1, members);
    eprintln!(
        "writer[{label}]: {members} members in {commits} commits ({:.1}/commit, {waits} waited), apply {:.1} µs/member, \
         commit {:.2} ms/commit, writer busy {:.0} % of {:.1} s; audit filed {filed} \
         ({idle_commits} idle commits, {:.0} ms); journal filed {jfiled} postings in {:.0} ms; \
         process CPU {cpu:.0} µs/member, {kib:.1} KiB written/member; \
         registries took {lane_writes} creates from their lanes in {lane_batches} batches ({:.1}/batch)",
        m / c,
        apply as f64 / 1e3 / m,
        commit as f64 / 1e6 / c,
        (apply + commit + idle) as f64 / 1e9 / wall.as_secs_f64().max(1e-9) * 100.0,
        wall.as_secs_f64(),
        idle as f64 / 1e6,
        jnanos as f64 / 1e6,
        lane_writes as f64 / lane_batches.max(1) as f64
    );
    eprintln!(
        "writer[{label}]: CPU µs/member by thread: {}",
        after.2.report_since(&before.2, members)
    );
}

/// Length of the windows [`windows_of`] reports.
const WINDOW: Duration = Duration::from_secs(10);

/// Runs `body` while a thread samples the writer's member count and the bytes the process
/// wrote every [`WINDOW`] of wall time, and returns each whole window's rate (members per
/// second) and bytes written per member: what a long run sustains once the store has grown,
/// where the criterion figure is the mean of the whole run. The windows cover wall time,
/// warm-up and criterion's pauses between samples included (those pauses are
/// milliseconds).
fn windows_of(f: &Fixture, body: impl FnOnce()) -> Vec<(f64, f64)> {
    let stats = f.handle.engine().writer.stats();
    let done = std::sync::Mutex::new(false);
    let wake = std::sync::Condvar::new();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut rates = Vec::new();
            let mut last = stats.members.load(Ordering::Relaxed);
            let mut written = ProcUsage::now().written;
            let mut deadline = Instant::now() + WINDOW;
            let mut stop = done.lock().expect("sampler lock");
            loop {
                let now = Instant::now();
                if now >= deadline {
                    let (members, w) = (
                        stats.members.load(Ordering::Relaxed),
                        ProcUsage::now().written,
                    );
                    let n = (members - last) as f64;
                    rates.push((
                        n / WINDOW.as_secs_f64(),
                        w.saturating_sub(written) as f64 / n.max(1.0),
                    ));
                    (last, written) = (members, w);
                    deadline += WINDOW;
                    continue;
                }
                if *stop {
                    return rates;
                }
                stop = wake
                    .wait_timeout(stop, deadline - now)
                    .expect("sampler wait")
                    .0;
            }
        });
        body();
        *done.lock().expect("sampler lock") = true;
        wake.notify_all();
        sampler.join().expect("sampler")
    })
}

/// Prints the window rates of [`windows_of`] in thousands per second (with the KiB written
/// per member in each), and the mean rate of the last three (the last 30 seconds) when the
/// run had at least five windows.
fn report_windows(label: &str, windows: &[(f64, f64)]) {
    if windows.is_empty() {
        return;
    }
    let list: Vec<String> = windows
        .iter()
        .map(|(r, b)| format!("{:.1} ({:.1})", r / 1e3, b / 1024.0))
        .collect();
    let rates: Vec<f64> = windows.iter().map(|w| w.0).collect();
    let tail = if rates.len() >= 5 {
        let last = &rates[rates.len() - 3..];
        format!(
            "; last 30 s {:.1} k/s",
            last.iter().sum::<f64>() / last.len() as f64 / 1e3
        )
    } else {
        String::new()
    };
    eprintln!(
        "writer[{label}]: k members/s (KiB written/member) by {} s window: {}{tail}",
        WINDOW.as_secs(),
        list.join(" ")
    );
}

fn writes(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("store_write");
    g.sample_size(10);
    // In-flight levels: each sample runs whole rounds of BURST writes (one write for the
    // single writer) with `conc` kept in flight; throughput is per write.
    for conc in [1u64, 16, 128, 512, 2048] {
        let per = if conc == 1 { 1 } else { BURST };
        g.throughput(Throughput::Elements(per));
        let (before, t) = (writer_counters(&f), Instant::now());
        let name = if conc == 1 {
            "observation_single_writer".to_string()
        } else {
            format!("observation_{conc}_concurrent")
        };
        let rates = windows_of(&f, || {
            g.bench_function(&name, |b| {
                b.iter_custom(|n| {
                    run_concurrent(&f, n * per, conc, |h, i| async move {
                        h.create(&ctx(), observation(i), None)
                            .await
                            .expect("create");
                    })
                })
            });
        });
        report_writer(&name, before, writer_counters(&f), t.elapsed());
        report_windows(&name, &rates);
    }
    // The same creates without the registry actors: two tokio worker threads (as many as
    // the registry's threads) prepare each create by calling the engine directly and await
    // its commit, 512 in flight. The difference to `observation_512_concurrent` is what
    // the actors' messaging costs.
    g.throughput(Throughput::Elements(BURST));
    let engine_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let (before, t) = (writer_counters(&f), Instant::now());
    g.bench_function("observation_512_engine", |b| {
        b.iter_custom(|n| {
            let total = n * BURST;
            let next = Arc::new(AtomicU64::new(0));
            engine_rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..512)
                    .map(|_| {
                        let (h, next) = (f.handle.clone(), next.clone());
                        tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                if i >= total {
                                    break;
                                }
                                let pending = h
                                    .engine()
                                    .create(&ctx(), observation(i), None, None)
                                    .expect("create");
                                pending.wait().await.expect("commit");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed()
            })
        })
    });
    report_writer(
        "observation_512_engine",
        before,
        writer_counters(&f),
        t.elapsed(),
    );
    // Updates that move an Observation between two statuses: each one removes a posting
    // from a list that holds one per Observation of that status (and adds one to the
    // other), the case of every update or delete that drops a common term. 20 000
    // Observations are created on the case's first call (Criterion's warm-up).
    let pool: std::cell::OnceCell<Arc<Vec<String>>> = std::cell::OnceCell::new();
    let make_pool = || {
        Arc::new(f.sys.block_on(async {
            let mut ids = Vec::with_capacity(20_000);
            for start in (0..20_000u64).step_by(512) {
                let tasks: Vec<_> = (start..(start + 512).min(20_000))
                    .map(|i| {
                        let h = f.handle.clone();
                        actix_rt::spawn(async move { h.create(&ctx(), observation(i), None).await })
                    })
                    .collect();
                for t in tasks {
                    ids.push(t.await.expect("task").expect("create").record.id);
                }
            }
            ids
        }))
    };
    let round = Arc::new(AtomicU64::new(0));
    // The writer's counters once the pool exists, so that its creates are not reported.
    let after_pool = std::cell::Cell::new(None);
    let windows = windows_of(&f, || {
        g.bench_function("observation_update_512_concurrent", |b| {
            b.iter_custom(|n| {
                let pool = pool.get_or_init(|| {
                    let pool = make_pool();
                    after_pool.set(Some((writer_counters(&f), Instant::now())));
                    pool
                });
                let (pool, round) = (pool.clone(), round.clone());
                let base = round.fetch_add(n * BURST, Ordering::Relaxed);
                run_concurrent(&f, n * BURST, 512, move |h, i| {
                    let i = base + i;
                    let len = pool.len() as u64;
                    let id = pool[(i % len) as usize].clone();
                    let mut o = observation(i % len);
                    o["id"] = json!(id);
                    o["status"] = json!(if (i / len).is_multiple_of(2) {
                        "amended"
                    } else {
                        "final"
                    });
                    async move {
                        h.update(&ctx(), "Observation", &id, o, None, None)
                            .await
                            .expect("update");
                    }
                })
            })
        });
    });
    if let Some((before, t)) = after_pool.take() {
        report_writer(
            "observation_update_512_concurrent",
            before,
            writer_counters(&f),
            t.elapsed(),
        );
        report_windows("observation_update_512_concurrent", &windows);
    }
    let people = Arc::new(
        synth::population(7, 20_000)
            .into_iter()
            .map(|p| p.to_fhir())
            .collect::<Vec<_>>(),
    );
    let (before, t) = (writer_counters(&f), Instant::now());
    g.bench_function("patient_512_concurrent", |b| {
        b.iter_custom(|n| {
            let ppl = people.clone();
            run_concurrent(&f, n * BURST, 512, move |h, i| {
                let p = ppl[i as usize % ppl.len()].clone();
                async move {
                    h.create(&ctx(), p, None).await.expect("create");
                }
            })
        })
    });
    report_writer(
        "patient_512_concurrent",
        before,
        writer_counters(&f),
        t.elapsed(),
    );
    g.finish();
}

fn reads_search_match(c: &mut Criterion) {
    let n: usize = hexa_benches::env_parse("HEXA_BENCH_PATIENTS").unwrap_or(10_000);
    let persons = synth::population(11, n);
    // FHIR Patients only while loading: at a million they would hold gigabytes that the
    // store's pages need (the queries below keep what they use, then `persons` goes too).
    let (f, ids) = population_fixture(n, || persons.iter().map(|p| p.to_fhir()).collect());
    let ids = Arc::new(ids);
    let idents: Arc<Vec<(String, String)>> = Arc::new(
        persons
            .iter()
            .filter_map(|p| {
                let p = p.to_fhir();
                let idf = &p["identifier"][0];
                let (sys, value) = (idf["system"].as_str()?, idf["value"].as_str()?);
                Some(("identifier".to_string(), format!("{sys}|{value}")))
            })
            .collect(),
    );
    let family = persons[n / 2].to_fhir()["name"][0]["family"]
        .as_str()
        .unwrap_or("a")
        .to_lowercase();
    let prefix: String = family.chars().take(4).collect();
    let birth = persons[n / 3].to_fhir()["birthDate"]
        .as_str()
        .unwrap_or("1990")
        .to_string();
    let identifier = {
        let idf = &persons[n / 4].to_fhir()["identifier"][0];
        format!(
            "{}|{}",
            idf["system"].as_str().unwrap_or(""),
            idf["value"].as_str().unwrap_or("")
        )
    };
    let mut rng = synth::SynthRng::new(5);
    let queries: Vec<Value> = persons
        .iter()
        .step_by((n / 200).max(1))
        .map(|p| synth::duplicate(p, &mut rng).to_fhir())
        .collect();
    drop(persons);

    let mut g = c.benchmark_group(format!("store_read_{n}"));
    g.sample_size(10);
    for conc in [1u64, 256] {
        let ids = ids.clone();
        let per = if conc == 1 { 1 } else { BURST };
        g.throughput(Throughput::Elements(per));
        let name = format!("audited_read_{conc}_concurrent");
        let (before, t) = (writer_counters(&f), Instant::now());
        g.bench_function(&name, |b| {
            b.iter_custom(|k| {
                let ids = ids.clone();
                run_concurrent(&f, k * per, conc, move |h, i| {
                    let id = ids[(i as usize * 7919) % ids.len()].clone();
                    async move {
                        h.read(&ctx(), "Patient", &id).await.expect("read");
                    }
                })
            })
        });
        report_writer(&name, before, writer_counters(&f), t.elapsed());
    }
    // Audited searches by identifier (`system|value` of random patients), 256 in flight:
    // each returns one Patient after its AuditEvent's commit.
    g.throughput(Throughput::Elements(BURST));
    let name = "audited_identifier_search_256_concurrent";
    let (before, t) = (writer_counters(&f), Instant::now());
    g.bench_function(name, |b| {
        b.iter_custom(|k| {
            let idents = idents.clone();
            run_concurrent(&f, k * BURST, 256, move |h, i| {
                let pair = idents[(i as usize * 7919) % idents.len()].clone();
                async move {
                    h.search(&ctx(), "Patient", &[pair]).await.expect("search");
                }
            })
        })
    });
    report_writer(name, before, writer_counters(&f), t.elapsed());
    g.finish();

    let mut g = c.benchmark_group(format!("store_search_{n}"));
    g.sample_size(20);
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    for (name, params) in [
        (
            "family_prefix_count10",
            pairs(&[("family", &prefix), ("_count", "10")]),
        ),
        // The same, for a client that does not need the total (`_total=none`): the search
        // stops at the page and one hit past it.
        (
            "family_prefix_count10_total_none",
            pairs(&[("family", &prefix), ("_count", "10"), ("_total", "none")]),
        ),
        (
            "family_exact_and_birthdate",
            pairs(&[("family", &family), ("birthdate", &birth)]),
        ),
        ("identifier", pairs(&[("identifier", &identifier)])),
        // A reference parameter open to any type, by type and id, and by bare id: the
        // index files only `r:<Type>/<id>`, so a bare id is looked up under every stored
        // type (about 80 term lookups).
        (
            "general_practitioner_typed",
            pairs(&[("general-practitioner", "Practitioner/gp-1")]),
        ),
        (
            "general_practitioner_bare_id",
            pairs(&[("general-practitioner", "gp-1")]),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                f.sys.block_on(async {
                    f.handle
                        .search(&ctx(), "Patient", &params)
                        .await
                        .expect("search")
                        .total
                })
            })
        });
        // The same lookup without the disclosure's durable AuditEvent: index, B-tree and
        // unsealing cost alone.
        let q = SearchQuery::parse("Patient", &params).expect("query");
        g.bench_function(format!("{name}_unaudited"), |b| {
            b.iter(|| f.handle.store().search(&q).expect("search").total)
        });
    }
    let mut qi = 0;
    g.bench_function("match_typo_duplicate", |b| {
        b.iter(|| {
            qi = (qi + 1) % queries.len();
            let q = queries[qi].clone();
            f.sys.block_on(async {
                f.handle
                    .match_patients(&ctx(), q, 0.5, 10)
                    .await
                    .expect("match")
                    .len()
            })
        })
    });
    g.bench_function("match_typo_duplicate_unaudited", |b| {
        b.iter(|| {
            qi = (qi + 1) % queries.len();
            f.handle
                .store()
                .match_patients(&queries[qi], 0.5, 10)
                .expect("match")
                .len()
        })
    });
    g.finish();
}

fn breakdown(c: &mut Criterion) {
    // Where a write's CPU time goes, on one synthetic Patient (~1 KiB canonical).
    let p = synth::population(3, 1)[0].to_fhir();
    let key = SigningKey::from_seed(&[1; 32]);
    let mk = MasterKey::from_bytes([2; 32]);
    let seal = mk.sealing_key("patient.versions");
    let blind = mk.blind_index_key("patient.index");
    let canonical = hexa_crypto::jcs::canonicalize(&p).expect("jcs");
    let mut g = c.benchmark_group("store_write_breakdown");
    g.bench_function("jcs", |b| {
        b.iter(|| hexa_crypto::jcs::canonicalize(&p).expect("jcs"))
    });
    g.bench_function("sign_detached_jws", |b| {
        b.iter(|| hexa_crypto::jws::sign_detached(&key, &canonical))
    });
    g.bench_function("seal", |b| {
        b.iter(|| {
            seal.seal(
                &canonical,
                &Aad {
                    database: "patient.versions",
                    key: b"Patient/x/1",
                    version: 1,
                },
            )
            .expect("seal")
        })
    });
    g.bench_function("blind_index_one_term", |b| {
        b.iter(|| blind.index("Patient.family", b"p:uwimana"))
    });
    g.finish();
}

criterion_group!(benches, breakdown, writes, reads_search_match);
criterion_main!(benches);
