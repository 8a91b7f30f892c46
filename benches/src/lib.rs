//! Benchmarks for hexa live in `benches/benches/` (Criterion); see `benches/README.md`
//! for the figures and how to reproduce them.

use std::time::Duration;

use serde_json::{Value, json};

/// The Observation the store benches create (`i` picks one of 1 000 patients and one of 40
/// values), shared so that `store` and `store_floor` measure the same write.
pub fn observation(i: u64) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "subject": {"reference": format!("Patient/p{}", i % 1000)},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "effectiveDateTime": "2024-05-05T10:00:00Z",
        "valueQuantity": {"value": 60 + (i % 40), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// The environment variable `name` parsed as a `T`: `None` when it is unset or does not
/// parse (the benches' knobs then keep their defaults).
pub fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `HEXA_BENCH_WRITER_NICE`: the nice value the store benches give the group-commit writer
/// thread instead of the store's default (0: the default priority, as before session 7).
pub fn env_writer_nice() -> Option<i32> {
    env_parse("HEXA_BENCH_WRITER_NICE")
}

/// What this process has used so far, read from `/proc/self` (Linux): the CPU time of all
/// its threads (user and system, `/proc/self/stat`, in the kernel's fixed 1/100 s ticks)
/// and the bytes it passed to `write`-family calls (`wchar` of `/proc/self/io`). Zero
/// where those files do not exist. The store benches divide the difference between two
/// snapshots by the writes in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcUsage {
    /// CPU time of every thread, user plus system.
    pub cpu: Duration,
    /// Bytes written through system calls.
    pub written: u64,
}

/// The name and the (user, system) CPU time of a `/proc/.../stat` line: `pid (name) state
/// ...`, where the name may hold spaces and parentheses and, after it, state is field 0 and
/// utime and stime (in the kernel's fixed 1/100 s ticks) are fields 11 and 12.
fn parse_stat(stat: &str) -> Option<(&str, Duration, Duration)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let tick = |i: usize| -> Option<Duration> {
        Some(Duration::from_millis(f.get(i)?.parse::<u64>().ok()? * 10))
    };
    Some((&stat[open + 1..close], tick(11)?, tick(12)?))
}

impl ProcUsage {
    /// The counters now.
    pub fn now() -> Self {
        let cpu = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s).map(|(_, user, sys)| user + sys))
            .unwrap_or_default();
        let written = std::fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(0);
        ProcUsage { cpu, written }
    }

    /// `(CPU µs, KiB written)` per one of `n` operations since `earlier`.
    pub fn per_op_since(&self, earlier: &ProcUsage, n: u64) -> (f64, f64) {
        let n = n.max(1) as f64;
        (
            self.cpu.saturating_sub(earlier.cpu).as_secs_f64() * 1e6 / n,
            self.written.saturating_sub(earlier.written) as f64 / 1024.0 / n,
        )
    }
}

/// The roles [`ThreadCpu`] sorts this process's threads into, in its order.
pub const THREAD_ROLES: [&str; 5] = ["registries", "writer", "janitor", "client", "other"];

/// CPU time of this process's threads by role, read from `/proc/self/task/*/stat` (Linux;
/// empty elsewhere), in the kernel's 1/100 s ticks. Roles ([`THREAD_ROLES`]): the registry
/// pools (threads named `hexa-<component>`), the store's group-commit writer
/// (`hexa-store-writer`), its janitor, the main thread (in the store benches the client:
/// the actix system whose tasks issue the requests and await their commits), and every
/// other thread. A thread that ended between two snapshots is missing from the difference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    /// Thread id → (role index, user time, system time).
    threads: std::collections::BTreeMap<u32, (usize, Duration, Duration)>,
}

impl ThreadCpu {
    /// The counters now.
    pub fn now() -> Self {
        let pid = std::process::id();
        let mut threads = std::collections::BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return ThreadCpu { threads };
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((name, user, sys)) = parse_stat(&stat) else {
                continue;
            };
            threads.insert(tid, (Self::role(tid, pid, name), user, sys));
        }
        ThreadCpu { threads }
    }

    /// The role index of thread `tid` named `name` in process `pid`.
    pub fn role(tid: u32, pid: u32, name: &str) -> usize {
        if name.starts_with("hexa-store-writ") {
            1
        } else if name.starts_with("hexa-store-jani") {
            2
        } else if name.starts_with("hexa-") {
            0
        } else if tid == pid {
            3
        } else {
            4
        }
    }

    /// (user, system) time per role since `earlier`, divided by `n` operations, in µs.
    pub fn per_op_since(&self, earlier: &ThreadCpu, n: u64) -> [(f64, f64); 5] {
        let mut out = [(0.0, 0.0); 5];
        let n = n.max(1) as f64;
        for (tid, &(role, user, sys)) in &self.threads {
            let (u0, s0) = earlier
                .threads
                .get(tid)
                .map(|&(_, u, s)| (u, s))
                .unwrap_or_default();
            out[role].0 += user.saturating_sub(u0).as_secs_f64() * 1e6 / n;
            out[role].1 += sys.saturating_sub(s0).as_secs_f64() * 1e6 / n;
        }
        out
    }

    /// [`Self::per_op_since`] as one line: `registries 54 (sys 3), writer 30 (sys 15), ...`.
    pub fn report_since(&self, earlier: &ThreadCpu, n: u64) -> String {
        self.per_op_since(earlier, n)
            .iter()
            .zip(THREAD_ROLES)
            .map(|((u, s), role)| format!("{role} {:.0} (sys {s:.0})", u + s))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::{ProcUsage, ThreadCpu, parse_stat};

    #[test]
    fn proc_usage_counts_cpu_and_writes_of_this_process() {
        let a = ProcUsage::now();
        // Burn about 100 ms of CPU and write 1 MiB.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).expect("write");
        let b = ProcUsage::now();
        if cfg!(target_os = "linux") {
            assert!(b.cpu > a.cpu, "{a:?} -> {b:?}");
            assert!(b.written - a.written >= 1 << 20, "{a:?} -> {b:?}");
            let (cpu, kib) = b.per_op_since(&a, 2);
            assert!(cpu > 0.0 && kib >= 512.0, "{cpu} {kib}");
        }
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194304 97 0 0 0 7 3 0 0 20 0 1 0 9";
        assert_eq!(
            parse_stat(line),
            Some((
                "a (b) c",
                std::time::Duration::from_millis(70),
                std::time::Duration::from_millis(30)
            ))
        );
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn thread_cpu_counts_the_threads_by_role() {
        assert_eq!(ThreadCpu::role(10, 9, "hexa-store-writer"), 1);
        assert_eq!(ThreadCpu::role(10, 9, "hexa-store-janitor"), 2);
        assert_eq!(ThreadCpu::role(10, 9, "hexa-shr"), 0);
        assert_eq!(ThreadCpu::role(9, 9, "store-1234"), 3);
        assert_eq!(ThreadCpu::role(10, 9, "tokio-runtime-w"), 4);
        let a = ThreadCpu::now();
        // A thread named like a registry burns at least 100 ms of CPU (by its own clock, so a
        // loaded machine only makes it take longer), then waits for the second snapshot.
        let (burnt, done) = std::sync::mpsc::channel();
        let burner = std::thread::Builder::new()
            .name("hexa-test".into())
            .spawn(move || {
                let own_cpu = || {
                    std::fs::read_to_string("/proc/thread-self/stat")
                        .ok()
                        .and_then(|s| parse_stat(&s).map(|(_, user, sys)| user + sys))
                };
                let mut x = 0u64;
                let start = std::time::Instant::now();
                while own_cpu().is_some_and(|t| t < std::time::Duration::from_millis(100))
                    && start.elapsed() < std::time::Duration::from_secs(20)
                {
                    for _ in 0..100_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                }
                std::hint::black_box(x);
                let _ = burnt.send(());
                std::thread::park_timeout(std::time::Duration::from_secs(20));
            })
            .expect("spawn");
        done.recv().expect("burnt");
        let b = ThreadCpu::now();
        burner.thread().unpark();
        burner.join().expect("join");
        if cfg!(target_os = "linux") {
            let per = b.per_op_since(&a, 1);
            assert!(per[0].0 + per[0].1 >= 50_000.0, "{per:?}");
            assert!(b.report_since(&a, 1).starts_with("registries "));
        }
    }
}
