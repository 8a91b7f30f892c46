//! End-to-end tests across hexa's crates live in `tests/tests/`; this library is empty
//! and exists so that `cargo test --workspace` builds and runs them.
