//! Benchmarks for hexa live in `benches/benches/` (Criterion); see `benches/README.md`
//! for the figures and how to reproduce them.
