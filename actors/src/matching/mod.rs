//! Patient matching for the client registry: who in the registry is this patient?
//!
//! A pure module (no LMDB, no actors, no I/O): functions of their inputs, so the store
//! can call them inside its transactions and tests can call them directly.
//!
//! # How the store uses it
//!
//! ```text
//! on write of Patient p (id), in the write transaction:
//!     d    = Demographics::from_patient(&p_json)        (and d_old for the replaced version)
//!     for k in blocking_keys(&d):  index[blind(k)] += id     (remove d_old's keys)
//!     counts.add(&d)  (counts.remove(&d_old))               name frequencies, per phonetic key
//! on $match / duplicate check of Patient q:
//!     dq   = Demographics::from_patient(&q_json)
//!     ids  = ∪ index[blind(k)] for k in search_keys(&dq)    (skip blocks > DEFAULT_MAX_BLOCK)
//!     for id in ids: s = score_with(&dq, &Demographics::from_patient(&load(id)), &counts)
//!     keep s.is_match(threshold) (default DEFAULT_THRESHOLD), or
//!          s.grade >= Possible for $match; sort by s.score desc;
//!     report s.grade.code() in the match-grade extension and s.score as search.score
//! ```
//!
//! `score` (fixed name weights) and `blocking_keys` for the lookup also work; the
//! quality test measures both paths, and `search_keys` + `score_with` is the better one
//! (recall 0.989 vs 0.976 at 20 000 patients, same precision). Candidates cost about
//! 1 µs each to score, but re-parsing a candidate's Patient JSON costs about 6 µs: a
//! store that keeps `Demographics` (or the JSON already parsed) saves most of a search.
//!
//! [`MemoryIndex`] does exactly this in memory; it is the reference the quality tests
//! and benches run, and a model for the LMDB version.
//!
//! # API
//!
//! - [`Demographics`]: what is compared; from FHIR Patient JSON
//!   ([`Demographics::from_patient`], lenient; [`Demographics::try_from_patient`], checks
//!   `resourceType`) or a [`DemographicsBuilder`]. Holds identifiers, given and family
//!   name words, [`BirthDate`] (year, year-month or full), [`Gender`], E.164 phones,
//!   province/district/sector.
//! - [`blocking_keys`]: the few keys a record is filed under (identifier, phone, name
//!   word + birth year, name pair); a true duplicate shares at least one even with
//!   typos, swapped names or date errors. [`search_keys`]: what a query looks up (the
//!   same, plus name word + neighbouring years).
//! - [`score()`](fn@score): Fellegi-Sunter weights in bits, turned into a posterior `0..1`
//!   ([`MatchScore::score`]) and a FHIR [`MatchGrade`] (`certain`, `probable`,
//!   `possible`, `certainly-not`). A shared identifier is certain. The weight table is
//!   in the [`score`](mod@score) module docs. [`score_with`] weighs names by their
//!   frequency ([`NameFrequencies`], counted by [`NameCounts`]): agreeing on a rare
//!   name is stronger evidence than agreeing on a common one.
//! - [`DEFAULT_THRESHOLD`]: the score at which a candidate is a match (probable).
//! - [`phonetic_key`]: a phonetic key for Kinyarwanda and French names; its rules are
//!   listed in the [`phonetic`] module docs. [`jaro_winkler`] compares folded names.
//! - [`normalize_phone`]: Rwandan phone numbers to E.164.
//! - [`synth`]: a deterministic synthetic population with realistic duplicates, for
//!   tests and benches.
//!
//! Measured quality (precision and recall at the default threshold on the synthetic
//! population) is in `benches/README.md`, section "Matching", and asserted by
//! `actors/tests/matching.rs`.

pub mod blocking;
pub mod demographics;
pub mod frequency;
pub mod index;
pub mod jaro;
pub mod phonetic;
pub mod score;
pub mod synth;

pub use blocking::{blocking_keys, search_keys};
pub use demographics::{
    BirthDate, Demographics, DemographicsBuilder, Gender, MatchError, normalize_phone,
};
pub use frequency::NameCounts;
pub use index::{Candidate, MemoryIndex};
pub use jaro::{jaro, jaro_winkler};
pub use phonetic::{fold, phonetic_key};
pub use score::{
    CERTAIN_THRESHOLD, DEFAULT_THRESHOLD, FieldWeights, FixedWeights, MatchGrade, MatchScore,
    NameFrequencies, POSSIBLE_THRESHOLD, PRIOR_BITS, score, score_with,
};
