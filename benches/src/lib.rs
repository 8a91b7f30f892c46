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

/// `HEXA_BENCH_WRITER_NICE`: the nice value the store benches give the group-commit writer
/// thread instead of the store's default (0: the default priority, as before session 7).
pub fn env_writer_nice() -> Option<i32> {
    std::env::var("HEXA_BENCH_WRITER_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
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

impl ProcUsage {
    /// The counters now.
    pub fn now() -> Self {
        let cpu = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces): state is the
                // first, utime and stime the 12th and 13th.
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(Duration::from_millis(ticks * 10))
            })
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

#[cfg(test)]
mod tests {
    use super::ProcUsage;

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
}
