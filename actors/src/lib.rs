//! hexa-actors: the supervised actors that own hexa's state in LMDB.
pub mod device;
pub mod matching;
pub mod store;
pub mod registry;
pub mod handle;
