//! hexa-crypto: the pure cryptographic core of hexa.
//!
//! No I/O beyond the bytes a caller hands in; time is always a parameter.
//! Auditors' tools link this crate and nothing else of ours.
