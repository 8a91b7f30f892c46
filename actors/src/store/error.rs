//! Typed errors of the store. Every variant has a stable code (`StoreError::code`) that the
//! HTTP layer maps to an OperationOutcome; messages say what happened and what to do.

use thiserror::Error;

/// Everything that can go wrong in the store. Cloneable so one failed group commit can be
/// reported to every member of the batch.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The resource type is not stored by any component of this appliance.
    #[error("unknown or unsupported resource type `{0}`")]
    UnknownResourceType(String),
    /// No resource with this type and id exists.
    #[error("{resource_type}/{id} not found")]
    NotFound {
        /// FHIR resource type.
        resource_type: String,
        /// Logical id.
        id: String,
    },
    /// The requested version of the resource does not exist.
    #[error("{resource_type}/{id}/_history/{version} not found")]
    VersionNotFound {
        /// FHIR resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// Requested version.
        version: u64,
    },
    /// The resource exists but its current version is a deletion.
    #[error("{resource_type}/{id} was deleted (version {version})")]
    Gone {
        /// FHIR resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// The version that recorded the deletion.
        version: u64,
    },
    /// Optimistic concurrency failure: the caller's expected version is not current.
    #[error(
        "version conflict on {resource_type}/{id}: expected version {expected}, current is {current}; re-read and retry"
    )]
    Conflict {
        /// FHIR resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// Version the caller expected (0 = must not exist).
        expected: u64,
        /// Current version in the store (0 = does not exist).
        current: u64,
    },
    /// The resource or request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A conditional create matched more than one resource.
    #[error("conditional create matched {0} resources; make the criteria more selective")]
    MultipleMatches(usize),
    /// The access policy refused the read (consent enforcement hook).
    #[error("access denied: {0}")]
    Forbidden(String),
    /// An unsupported search parameter, modifier or sort.
    #[error("unsupported search: {0}")]
    UnsupportedSearch(String),
    /// The data directory holds a newer on-disk format than this build understands.
    #[error(
        "store format version {found} is newer than supported version {supported}; upgrade hexa before opening this data directory"
    )]
    UnsupportedFormat {
        /// Format version found on disk.
        found: u32,
        /// Newest format this build reads.
        supported: u32,
    },
    /// A stored value failed to open (wrong key, moved or tampered value) or decode.
    #[error("stored value at {database}:{key} is corrupt or was tampered with: {reason}")]
    Corrupt {
        /// Database name.
        database: String,
        /// Printable key.
        key: String,
        /// What failed.
        reason: String,
    },
    /// A stored signature does not verify.
    #[error("signature of {0} does not verify")]
    BadSignature(String),
    /// A cryptographic operation failed (e.g. the OS RNG).
    #[error("cryptographic failure: {0}")]
    Crypto(String),
    /// The LMDB map is full (the writer grows it and retries; callers see this only if
    /// growth itself failed).
    #[error("storage map is full and could not be grown; free disk space")]
    MapFull,
    /// LMDB failed (I/O, ...).
    #[error("storage failure: {0}")]
    Storage(String),
    /// File system error outside LMDB (creating directories, backups).
    #[error("i/o failure: {0}")]
    Io(String),
    /// The actor owning the component stopped or restarted while handling the request.
    #[error("component {0} is restarting or unavailable; retry the request")]
    Unavailable(String),
    /// The group-commit writer thread is gone (store shutting down).
    #[error("the store writer has stopped; the appliance is shutting down")]
    WriterStopped,
    /// An audit-log query asked for something outside the log.
    #[error("audit log: {0}")]
    Audit(String),
}

impl StoreError {
    /// A stable, machine-readable code for this error (used in OperationOutcome).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::UnknownResourceType(_) => "unknown-resource-type",
            StoreError::NotFound { .. } => "not-found",
            StoreError::VersionNotFound { .. } => "version-not-found",
            StoreError::Gone { .. } => "deleted",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Invalid(_) => "invalid",
            StoreError::MultipleMatches(_) => "multiple-matches",
            StoreError::Forbidden(_) => "forbidden",
            StoreError::UnsupportedSearch(_) => "unsupported-search",
            StoreError::UnsupportedFormat { .. } => "unsupported-format",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::BadSignature(_) => "bad-signature",
            StoreError::Crypto(_) => "crypto",
            StoreError::MapFull => "map-full",
            StoreError::Storage(_) => "storage",
            StoreError::Io(_) => "io",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::WriterStopped => "writer-stopped",
            StoreError::Audit(_) => "audit",
        }
    }
}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull,
            e => StoreError::Storage(e.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;
