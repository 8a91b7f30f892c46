//! hexa-actors: the supervised actors that own hexa's state in LMDB.
pub mod device;
pub mod handle;
pub mod matching;
pub mod registry;
pub mod store;
