//! Fellegi-Sunter style scoring of a candidate against a query.
//!
//! Each field comparison yields an agreement level; each level carries a weight in bits,
//! `log2(m / u)`, where `m` is the chance of that level between two records of the same
//! person and `u` between two different people who share a blocking key. Disagreement
//! weights are `log2((1 - m) / (1 - u))` and are negative. A field missing on either side
//! weighs 0: absence is no evidence. The total weight `W` is turned into a score in
//! `0..1` with a fixed prior of [`PRIOR_BITS`] bits against a match:
//! `score = 1 / (1 + 2^-(W - PRIOR_BITS))`, i.e. the posterior match probability when
//! one candidate in about a thousand sharing a blocking key is the same person.
//!
//! | field | level | bits |
//! |---|---|---|
//! | family name (best word pair) | same folded text / same phonetic key or JW ≥ 0.94 / JW ≥ 0.88 / otherwise | +7 / +5.5 / +2 / −5 |
//! | given name (best word pair) | same / phonetic or JW ≥ 0.94 / JW ≥ 0.88 / otherwise | +6 / +4.5 / +1 / −5 |
//! | names swapped | given↔family compared crosswise (mean of the two roles), best of straight and swapped | −0.5 when swapped wins |
//! | birth date | full date equal | +8 |
//! | | day and month swapped, same year | +5 |
//! | | same month and day, year ±1 | +4.5 |
//! | | same year and month, one side without day | +4 |
//! | | same year, one side year-only (or a year-month consistent with a swap) | +2 |
//! | | same year and month, day differs | +1 |
//! | | same year, otherwise different; or full dates a year apart, otherwise different | −5 |
//! | | year ±1, partial dates | −1 |
//! | | otherwise | −6 |
//! | gender | agree / disagree | +1 / −5 |
//! | phone (E.164) | any shared / both present, none shared | +7 / −1 |
//! | address | district agrees / differs; sector agrees (within the district) | +1.5 / −1.5; +1.5 |
//! | | province only: agrees / differs | +0.5 / −1 |
//! | identifier | same system, different value | −8 |
//!
//! Name weights above are the fixed ones ([`score`]). With name frequencies
//! ([`score_with`] and a [`NameFrequencies`] source such as
//! [`NameCounts`](super::NameCounts)) an exact agreement weighs `log2(m / f)` instead,
//! so `Habimana` counts for less than a rare name; see [`score_with`].
//!
//! A shared identifier (same system, same normalised value) short-cuts everything: the
//! candidate is [`MatchGrade::Certain`] with score 1.0.

use super::demographics::{BirthDate, Demographics, NameWord};
use super::jaro::jaro_winkler;

/// Prior log2-odds against a match among candidates that share a blocking key.
pub const PRIOR_BITS: f64 = 10.0;

/// Score at or above which a candidate is a match (grade probable or certain).
pub const DEFAULT_THRESHOLD: f64 = 0.9;

/// Score at or above which a candidate is worth showing a human (grade possible).
pub const POSSIBLE_THRESHOLD: f64 = 0.5;

/// Score at or above which a candidate is certain even without a shared identifier.
pub const CERTAIN_THRESHOLD: f64 = 0.999;

/// FHIR match-grade, as used by PDQm `$match` in
/// `Bundle.entry.search.extension[match-grade]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchGrade {
    /// `certainly-not`: below [`POSSIBLE_THRESHOLD`].
    CertainlyNot,
    /// `possible`: at least [`POSSIBLE_THRESHOLD`], below the match threshold.
    Possible,
    /// `probable`: at least [`DEFAULT_THRESHOLD`].
    Probable,
    /// `certain`: a shared identifier, or at least [`CERTAIN_THRESHOLD`].
    Certain,
}

impl MatchGrade {
    /// URL of the FHIR extension carrying the grade.
    pub const EXTENSION_URL: &'static str = "http://hl7.org/fhir/StructureDefinition/match-grade";

    /// The code in the FHIR `match-grade` value set.
    pub fn code(self) -> &'static str {
        match self {
            Self::Certain => "certain",
            Self::Probable => "probable",
            Self::Possible => "possible",
            Self::CertainlyNot => "certainly-not",
        }
    }

    /// Grade of a score against the default thresholds.
    pub fn of_score(score: f64) -> Self {
        Self::of_score_with(score, DEFAULT_THRESHOLD)
    }

    /// Grade of a score when the match threshold is `threshold` instead of the default.
    pub fn of_score_with(score: f64, threshold: f64) -> Self {
        if score >= CERTAIN_THRESHOLD.max(threshold) {
            Self::Certain
        } else if score >= threshold {
            Self::Probable
        } else if score >= POSSIBLE_THRESHOLD.min(threshold) {
            Self::Possible
        } else {
            Self::CertainlyNot
        }
    }
}

/// Weights in bits contributed by each field (0 when a side lacks the field).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FieldWeights {
    /// Given and family names together (including the swap penalty).
    pub names: f64,
    /// Birth date.
    pub birth_date: f64,
    /// Gender.
    pub gender: f64,
    /// Phones.
    pub phone: f64,
    /// Address (province, district, sector).
    pub address: f64,
    /// Conflicting identifiers in a shared system.
    pub identifiers: f64,
}

impl FieldWeights {
    /// Sum of all field weights.
    pub fn total(&self) -> f64 {
        self.names + self.birth_date + self.gender + self.phone + self.address + self.identifiers
    }
}

/// The result of comparing a candidate with a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchScore {
    /// Posterior match probability, `0.0..=1.0`.
    pub score: f64,
    /// Grade of `score` at the default thresholds.
    pub grade: MatchGrade,
    /// Total weight in bits (`f64::INFINITY` for an identifier match).
    pub weight: f64,
    /// True when a shared identifier decided the match.
    pub identifier_match: bool,
    /// True when the names agreed better crosswise (given ↔ family).
    pub names_swapped: bool,
    /// Per-field weights, to explain a score.
    pub fields: FieldWeights,
}

impl MatchScore {
    /// True when the score reaches `threshold`.
    pub fn is_match(&self, threshold: f64) -> bool {
        self.identifier_match || self.score >= threshold
    }
}

/// How common a name is, for value-specific Fellegi-Sunter weights: agreeing on a rare
/// name is stronger evidence than agreeing on `Habimana`.
pub trait NameFrequencies {
    /// Share (`0..=1`) of registered patients having a name word with phonetic key `key`,
    /// or `None` when unknown (the fixed weights of the table are used then).
    fn frequency(&self, key: &str) -> Option<f64>;
}

/// No frequency information: names get the fixed weights of the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedWeights;

impl NameFrequencies for FixedWeights {
    fn frequency(&self, _key: &str) -> Option<f64> {
        None
    }
}

/// Score `candidate` against `query` with the fixed name weights. Symmetric.
pub fn score(query: &Demographics, candidate: &Demographics) -> MatchScore {
    score_with(query, candidate, &FixedWeights)
}

/// Score `candidate` against `query`, weighting name agreement by how common the name is:
/// an exact agreement weighs `log2(m / f)` bits, clamped to 3..=14, where `f` is the
/// larger frequency of the two words' phonetic keys and `m` is 0.9 (family) or 0.85
/// (given); a phonetic or JW ≥ 0.94 agreement 1.5 bits less; a close one (JW ≥ 0.88)
/// 5 bits less, kept within 0.5..=2. Symmetric in `query` and `candidate`.
pub fn score_with(
    query: &Demographics,
    candidate: &Demographics,
    freq: &dyn NameFrequencies,
) -> MatchScore {
    let mut fields = FieldWeights::default();
    let mut identifier_match = false;
    for (qs, qv) in &query.identifiers {
        for (cs, cv) in &candidate.identifiers {
            if qs == cs {
                if qv == cv {
                    identifier_match = true;
                } else {
                    fields.identifiers = -8.0;
                }
            }
        }
    }
    let (names, names_swapped) = names_weight(query, candidate, freq);
    fields.names = names;
    fields.birth_date = match (query.birth_date, candidate.birth_date) {
        (Some(a), Some(b)) => date_weight(a, b),
        _ => 0.0,
    };
    fields.gender = match (query.gender, candidate.gender) {
        (Some(a), Some(b)) if a == b => 1.0,
        (Some(_), Some(_)) => -5.0,
        _ => 0.0,
    };
    fields.phone = if query.phones.is_empty() || candidate.phones.is_empty() {
        0.0
    } else if query.phones.iter().any(|p| candidate.phones.contains(p)) {
        7.0
    } else {
        -1.0
    };
    fields.address = address_weight(query, candidate);

    if identifier_match {
        fields.identifiers = 0.0;
        return MatchScore {
            score: 1.0,
            grade: MatchGrade::Certain,
            weight: f64::INFINITY,
            identifier_match,
            names_swapped,
            fields,
        };
    }
    let weight = fields.total();
    let score = 1.0 / (1.0 + (-(weight - PRIOR_BITS)).exp2());
    MatchScore {
        score,
        grade: MatchGrade::of_score(score),
        weight,
        identifier_match,
        names_swapped,
        fields,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Level {
    Disagree,
    Close,
    Similar,
    Exact,
}

fn word_level(a: &NameWord, b: &NameWord) -> Level {
    if a.text == b.text {
        return Level::Exact;
    }
    if !a.key.is_empty() && a.key == b.key {
        return Level::Similar;
    }
    let jw = jaro_winkler(&a.text, &b.text);
    if jw >= 0.94 {
        Level::Similar
    } else if jw >= 0.88 {
        Level::Close
    } else {
        Level::Disagree
    }
}

/// The role a name word is compared in; it sets the agreement probability `m` and the
/// fixed weights used without frequencies.
#[derive(Clone, Copy, Debug)]
enum Role {
    Family,
    Given,
    /// Crosswise (given against family): the mean of the two roles.
    Cross,
}

impl Role {
    /// `m`: how often two records of one person agree exactly on this name.
    fn m(self) -> f64 {
        match self {
            Self::Family => 0.9,
            Self::Given => 0.85,
            Self::Cross => 0.875,
        }
    }

    /// Exact-agreement weight when no frequency is known.
    fn fixed_exact(self) -> f64 {
        match self {
            Self::Family => 7.0,
            Self::Given => 6.0,
            Self::Cross => 6.5,
        }
    }

    /// Largest weight for a close (JW ≥ 0.88) agreement.
    fn close_max(self) -> f64 {
        match self {
            Self::Family => 2.0,
            Self::Given => 1.5,
            Self::Cross => 1.75,
        }
    }
}

/// Lowest and highest exact-agreement weight from frequencies.
const EXACT_RANGE: (f64, f64) = (3.0, 14.0);
/// Weight of a name that disagrees (JW < 0.88 and different phonetic keys).
const NAME_DISAGREE: f64 = -5.0;

fn pair_bits(x: &NameWord, y: &NameWord, role: Role, freq: &dyn NameFrequencies) -> f64 {
    let level = word_level(x, y);
    if level == Level::Disagree {
        return NAME_DISAGREE;
    }
    let f = match (freq.frequency(&x.key), freq.frequency(&y.key)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let exact = match f {
        Some(f) => (role.m() / f.max(1e-12))
            .log2()
            .clamp(EXACT_RANGE.0, EXACT_RANGE.1),
        None => role.fixed_exact(),
    };
    match level {
        Level::Exact => exact,
        Level::Similar => exact - 1.5,
        Level::Close => (exact - 5.0).clamp(0.5, role.close_max()),
        Level::Disagree => NAME_DISAGREE,
    }
}

/// Best weight over all word pairs, `None` when either side has no words.
fn best_bits(
    a: &[NameWord],
    b: &[NameWord],
    role: Role,
    freq: &dyn NameFrequencies,
) -> Option<f64> {
    let mut best: Option<f64> = None;
    for x in a {
        for y in b {
            let w = pair_bits(x, y, role, freq);
            if best.is_none_or(|b| w > b) {
                best = Some(w);
            }
        }
    }
    best
}

fn names_weight(q: &Demographics, c: &Demographics, freq: &dyn NameFrequencies) -> (f64, bool) {
    let straight = best_bits(&q.family, &c.family, Role::Family, freq).unwrap_or(0.0)
        + best_bits(&q.given, &c.given, Role::Given, freq).unwrap_or(0.0);
    // Crosswise: the query's family against the candidate's given, and vice versa.
    let cross1 = best_bits(&q.family, &c.given, Role::Cross, freq);
    let cross2 = best_bits(&q.given, &c.family, Role::Cross, freq);
    if cross1.is_none() && cross2.is_none() {
        return (straight, false);
    }
    let swapped = cross1.unwrap_or(0.0) + cross2.unwrap_or(0.0) - 0.5;
    if swapped > straight {
        (swapped, true)
    } else {
        (straight, false)
    }
}

fn date_weight(a: BirthDate, b: BirthDate) -> f64 {
    let full = |d: BirthDate| d.month.zip(d.day);
    match (full(a), full(b)) {
        (Some((am, ad)), Some((bm, bd))) => {
            if a.year == b.year {
                if am == bm && ad == bd {
                    8.0
                } else if am == bd && ad == bm {
                    5.0
                } else if am == bm {
                    1.0
                } else {
                    -5.0
                }
            } else if (a.year - b.year).abs() == 1 {
                if am == bm && ad == bd { 4.5 } else { -5.0 }
            } else {
                -6.0
            }
        }
        _ => {
            // At least one side is partial: compare what both sides know.
            if a.year == b.year {
                match (a.month, b.month) {
                    (Some(x), Some(y)) if x == y => 4.0,
                    (Some(x), Some(y)) => {
                        // A year-month against a full date may hide a day/month swap.
                        let swap = |d: BirthDate, m: u8| d.day == Some(m);
                        if swap(a, y) || swap(b, x) { 2.0 } else { -5.0 }
                    }
                    _ => 2.0,
                }
            } else if (a.year - b.year).abs() == 1 {
                -1.0
            } else {
                -6.0
            }
        }
    }
}

fn address_weight(q: &Demographics, c: &Demographics) -> f64 {
    match (&q.district, &c.district) {
        (Some(a), Some(b)) if a == b => {
            let sector = match (&q.sector, &c.sector) {
                (Some(x), Some(y)) if x == y => 1.5,
                _ => 0.0,
            };
            1.5 + sector
        }
        (Some(_), Some(_)) => -1.5,
        _ => match (&q.province, &c.province) {
            (Some(a), Some(b)) if a == b => 0.5,
            (Some(_), Some(_)) => -1.0,
            _ => 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::demographics::Gender;

    fn person(given: &str, family: &str, date: Option<BirthDate>) -> Demographics {
        let mut b = Demographics::builder()
            .given(given)
            .family(family)
            .gender(Gender::Female);
        if let Some(d) = date {
            b = b.birth_date(d);
        }
        b.build()
    }

    #[test]
    fn identifier_match_is_certain() {
        let a = Demographics::builder()
            .identifier("urn:rw:nid", "1199080012345012")
            .family("Uwase")
            .build();
        let b = Demographics::builder()
            .identifier("urn:rw:nid", "1 1990 8 0012345 0 12")
            .family("Mugisha")
            .build();
        let s = score(&a, &b);
        assert!(s.identifier_match);
        assert_eq!(s.grade, MatchGrade::Certain);
        assert_eq!(s.score, 1.0);
        // Same value in another system is not an identifier match.
        let c = Demographics::builder()
            .identifier("urn:other", "1199080012345012")
            .family("Uwase")
            .build();
        assert!(!score(&a, &c).identifier_match);
    }

    #[test]
    fn conflicting_identifier_lowers_score() {
        let d = BirthDate::ymd(1990, 3, 4);
        let a = person("Alice", "Uwase", Some(d));
        let mut b = a.clone();
        b.identifiers.push(("urn:rw:nid".into(), "1".into()));
        let mut c = a.clone();
        c.identifiers.push(("urn:rw:nid".into(), "2".into()));
        assert_eq!(score(&b, &c).fields.identifiers, -8.0);
        assert!(score(&b, &c).score < score(&a, &c).score);
    }

    #[test]
    fn same_person_scores_high() {
        let a = person("Alice", "Uwase", Some(BirthDate::ymd(1990, 3, 4)));
        let s = score(&a, &a.clone());
        assert!(s.score > CERTAIN_THRESHOLD, "{s:?}");
        assert_eq!(s.grade, MatchGrade::Certain);
    }

    #[test]
    fn tolerates_typos_swaps_and_date_errors() {
        let d = BirthDate::ymd(1990, 3, 4);
        let a = person("Alice", "Uwase", Some(d));
        for (b, what) in [
            (person("Alise", "Uwase", Some(d)), "given typo"),
            (person("Alice", "Uwasse", Some(d)), "family typo"),
            (person("Uwase", "Alice", Some(d)), "swapped names"),
            (
                person("Alice", "Uwase", Some(BirthDate::ymd(1990, 4, 3))),
                "day/month swap",
            ),
            (
                person("Alice", "Uwase", Some(BirthDate::year(1990))),
                "year only",
            ),
            (
                person("Alice", "Uwase", Some(BirthDate::ymd(1991, 3, 4))),
                "year off by one",
            ),
        ] {
            let s = score(&a, &b);
            assert!(s.is_match(DEFAULT_THRESHOLD), "{what}: {s:?}");
            let r = score(&b, &a);
            assert!((r.score - s.score).abs() < 1e-12, "{what}: not symmetric");
        }
        assert!(score(&a, &person("Uwase", "Alice", Some(d))).names_swapped);
    }

    #[test]
    fn different_people_score_low() {
        let a = person("Alice", "Uwase", Some(BirthDate::ymd(1990, 3, 4)));
        for b in [
            person("Claudine", "Uwase", Some(BirthDate::ymd(1992, 7, 21))),
            person("Alice", "Mukamana", Some(BirthDate::ymd(1990, 3, 4))),
            person("Alice", "Uwase", Some(BirthDate::ymd(1975, 11, 30))),
            person("Eric", "Habimana", Some(BirthDate::ymd(1990, 3, 4))),
        ] {
            let s = score(&a, &b);
            assert!(!s.is_match(DEFAULT_THRESHOLD), "{b:?}: {s:?}");
        }
        let man = Demographics::builder()
            .given("Alice")
            .family("Uwase")
            .gender(Gender::Male)
            .birth_date(BirthDate::ymd(1990, 3, 4))
            .build();
        assert!(score(&a, &man).score < score(&a, &a).score);
    }

    #[test]
    fn date_levels() {
        let d = BirthDate::ymd(1990, 3, 4);
        assert_eq!(date_weight(d, d), 8.0);
        assert_eq!(date_weight(d, BirthDate::ymd(1990, 4, 3)), 5.0);
        assert_eq!(date_weight(d, BirthDate::year(1990)), 2.0);
        assert_eq!(
            date_weight(
                d,
                BirthDate {
                    year: 1990,
                    month: Some(3),
                    day: None
                }
            ),
            4.0
        );
        assert_eq!(
            date_weight(
                d,
                BirthDate {
                    year: 1990,
                    month: Some(4),
                    day: None
                }
            ),
            2.0
        );
        assert_eq!(date_weight(d, BirthDate::ymd(1989, 3, 4)), 4.5);
        assert_eq!(date_weight(d, BirthDate::ymd(1990, 3, 9)), 1.0);
        assert_eq!(date_weight(d, BirthDate::ymd(1989, 5, 6)), -5.0);
        assert_eq!(date_weight(d, BirthDate::ymd(1990, 8, 9)), -5.0);
        assert_eq!(date_weight(d, BirthDate::ymd(1960, 3, 4)), -6.0);
        assert_eq!(
            date_weight(BirthDate::year(1990), BirthDate::year(1991)),
            -1.0
        );
    }

    #[test]
    fn phone_and_address() {
        let base = || Demographics::builder().given("Eric").family("Habimana");
        let a = base()
            .phone("0788123456")
            .district("Gasabo")
            .sector("Kimironko")
            .build();
        let b = base()
            .phone("+250 788 123 456")
            .district("GASABO")
            .sector("Kimironko")
            .build();
        let c = base().phone("0722000000").district("Huye").build();
        let sb = score(&a, &b);
        assert_eq!(sb.fields.phone, 7.0);
        assert_eq!(sb.fields.address, 3.0);
        let sc = score(&a, &c);
        assert_eq!(sc.fields.phone, -1.0);
        assert_eq!(sc.fields.address, -1.5);
    }

    #[test]
    fn grades() {
        assert_eq!(MatchGrade::of_score(0.9999), MatchGrade::Certain);
        assert_eq!(MatchGrade::of_score(0.95), MatchGrade::Probable);
        assert_eq!(MatchGrade::of_score(0.6), MatchGrade::Possible);
        assert_eq!(MatchGrade::of_score(0.1), MatchGrade::CertainlyNot);
        assert_eq!(MatchGrade::Possible.code(), "possible");
        assert_eq!(MatchGrade::CertainlyNot.code(), "certainly-not");
        assert!(MatchGrade::Certain > MatchGrade::Probable);
    }
}
