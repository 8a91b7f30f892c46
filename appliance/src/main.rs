//! The `hexa` binary. Placeholder until the CLI lands.
fn main() {}
