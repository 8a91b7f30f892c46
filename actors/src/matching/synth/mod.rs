//! A deterministic synthetic Rwandan population, and the duplicates clerks make of it.
//!
//! Used by the matching quality tests and the benches; nothing in the appliance calls it.
//! [`SynthRng`] is SplitMix64, so a seed always yields the same people on every platform.
//!
//! People get one Kinyarwanda name (usually recorded as the family name) and one or two
//! given names (mostly French or Christian), drawn with a skew so that common names are
//! common; a birth date (15% year-only); a gender; a phone (80%); a national ID (60%);
//! and a district and sector. One person in six joins an earlier person's household:
//! same phone and address, sometimes the same family name, a different given name and
//! birth date, which is what makes precision hard.
//!
//! [`duplicate`] re-registers a person the way a second facility would: typos and
//! spelling variants in names, given and family swapped, day and month swapped, year off
//! by one, year-only or missing dates, missing or reformatted phones, missing addresses,
//! and usually no national ID.

pub mod names;

use serde_json::{Value, json};

use super::demographics::{BirthDate, Demographics, Gender};
use names::{DISTRICTS, FRENCH, KINYARWANDA, PROVINCES, SECTORS};

/// System URI used for the synthetic national IDs.
pub const NID_SYSTEM: &str = "http://nid.gov.rw/nid";

/// SplitMix64: a tiny, fast, well-distributed deterministic generator.
#[derive(Debug, Clone)]
pub struct SynthRng(u64);

impl SynthRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.unit() * n as f64) as usize % n
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An element of `list`, skewed towards the front (index ∝ u^1.6), so the first
    /// names of a list are the common ones.
    pub fn skewed<'a>(&mut self, list: &[&'a str]) -> &'a str {
        let i = (self.unit().powf(1.6) * list.len() as f64) as usize;
        list[i.min(list.len().saturating_sub(1))]
    }
}

/// One synthetic person as a clerk recorded them.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthPerson {
    /// National ID, if presented.
    pub nid: Option<String>,
    /// Given names (one or two entries; an entry may itself be hyphenated).
    pub given: Vec<String>,
    /// Family name.
    pub family: Option<String>,
    /// Birth date at its recorded precision.
    pub birth_date: Option<BirthDate>,
    /// Gender.
    pub gender: Option<Gender>,
    /// Phone, as written.
    pub phone: Option<String>,
    /// Province, district and sector.
    pub address: Option<(String, String, Option<String>)>,
}

impl SynthPerson {
    /// The matcher's view of this person.
    pub fn demographics(&self) -> Demographics {
        let mut b = Demographics::builder();
        if let Some(nid) = &self.nid {
            b = b.identifier(NID_SYSTEM, nid);
        }
        for g in &self.given {
            b = b.given(g);
        }
        if let Some(f) = &self.family {
            b = b.family(f);
        }
        if let Some(d) = self.birth_date {
            b = b.birth_date(d);
        }
        if let Some(g) = self.gender {
            b = b.gender(g);
        }
        if let Some(p) = &self.phone {
            b = b.phone(p);
        }
        if let Some((province, district, sector)) = &self.address {
            b = b.province(province).district(district);
            if let Some(s) = sector {
                b = b.sector(s);
            }
        }
        b.build()
    }

    /// This person as FHIR R4 Patient JSON.
    pub fn to_fhir(&self) -> Value {
        let mut p = json!({"resourceType": "Patient"});
        if let Some(nid) = &self.nid {
            p["identifier"] = json!([{"system": NID_SYSTEM, "value": nid}]);
        }
        let mut name = json!({"use": "official"});
        if !self.given.is_empty() {
            name["given"] = json!(self.given);
        }
        if let Some(f) = &self.family {
            name["family"] = json!(f);
        }
        p["name"] = json!([name]);
        if let Some(d) = self.birth_date {
            p["birthDate"] = json!(match (d.month, d.day) {
                (Some(m), Some(day)) => format!("{:04}-{m:02}-{day:02}", d.year),
                (Some(m), None) => format!("{:04}-{m:02}", d.year),
                _ => format!("{:04}", d.year),
            });
        }
        if let Some(g) = self.gender {
            p["gender"] = json!(match g {
                Gender::Male => "male",
                Gender::Female => "female",
                Gender::Other => "other",
            });
        }
        if let Some(ph) = &self.phone {
            p["telecom"] = json!([{"system": "phone", "value": ph}]);
        }
        if let Some((province, district, sector)) = &self.address {
            let mut a = json!({"country": "RW", "state": province, "district": district});
            if let Some(s) = sector {
                a["city"] = json!(s);
            }
            p["address"] = json!([a]);
        }
        p
    }
}

fn digits(rng: &mut SynthRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

fn phone(rng: &mut SynthRng) -> String {
    let prefix = ["078", "079", "072", "073"][rng.below(4)];
    format!("{prefix}{}", digits(rng, 7))
}

fn birth_date(rng: &mut SynthRng) -> BirthDate {
    // A young population: most people born in the last 40 years.
    let year = 2024 - (rng.unit().powf(1.7) * 85.0) as i32;
    if rng.chance(0.15) {
        BirthDate::year(year)
    } else {
        BirthDate::ymd(year, 1 + rng.below(12) as u8, 1 + rng.below(28) as u8)
    }
}

fn given_names(rng: &mut SynthRng) -> Vec<String> {
    let first = if rng.chance(0.7) {
        rng.skewed(FRENCH)
    } else {
        rng.skewed(KINYARWANDA)
    };
    let mut given = vec![first.to_string()];
    if rng.chance(0.3) {
        let second = if rng.chance(0.5) {
            rng.skewed(FRENCH)
        } else {
            rng.skewed(KINYARWANDA)
        };
        if second != first {
            given.push(second.to_string());
        }
    }
    given
}

fn address(rng: &mut SynthRng) -> (String, String, Option<String>) {
    let d = rng.below(DISTRICTS.len());
    let (district, province) = DISTRICTS[d];
    let sector = SECTORS[(d * 7 + rng.below(12)) % SECTORS.len()];
    (
        PROVINCES[province].to_string(),
        district.to_string(),
        Some(sector.to_string()),
    )
}

/// A new, independent person.
pub fn person(rng: &mut SynthRng) -> SynthPerson {
    let birth = birth_date(rng);
    let family = if rng.chance(0.92) {
        rng.skewed(KINYARWANDA)
    } else {
        rng.skewed(FRENCH)
    };
    SynthPerson {
        nid: rng
            .chance(0.6)
            .then(|| format!("1{}{}{}", birth.year, 7 + rng.below(2), digits(rng, 9))),
        given: given_names(rng),
        family: Some(family.to_string()),
        birth_date: Some(birth),
        gender: Some(if rng.chance(0.5) {
            Gender::Female
        } else {
            Gender::Male
        }),
        phone: rng.chance(0.8).then(|| phone(rng)),
        address: Some(address(rng)),
    }
}

/// A member of `head`'s household: same phone and address, sometimes the same family
/// name, otherwise a different person.
pub fn relative(head: &SynthPerson, rng: &mut SynthRng) -> SynthPerson {
    let mut p = person(rng);
    p.phone.clone_from(&head.phone);
    p.address.clone_from(&head.address);
    if rng.chance(0.3) {
        p.family.clone_from(&head.family);
    }
    p
}

/// `n` people from `seed`; about one in six is a relative of an earlier person.
pub fn population(seed: u64, n: usize) -> Vec<SynthPerson> {
    let mut rng = SynthRng::new(seed);
    let mut people: Vec<SynthPerson> = Vec::with_capacity(n);
    for _ in 0..n {
        let p = if !people.is_empty() && rng.chance(1.0 / 6.0) {
            let head = &people[rng.below(people.len())];
            relative(head, &mut rng)
        } else {
            person(&mut rng)
        };
        people.push(p);
    }
    people
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwyz";

/// A clerical typo or spelling variant of `name`.
pub fn misspell(name: &str, rng: &mut SynthRng) -> String {
    // Spelling variants first: these are what phonetic keys are for.
    let variants: &[(&str, &str)] = &[
        ("l", "r"),
        ("r", "l"),
        ("cy", "ci"),
        ("shy", "shi"),
        ("jy", "gi"),
        ("Nyi", "Ni"),
        ("w", "u"),
        ("é", "e"),
        ("è", "e"),
        ("ph", "f"),
        ("mm", "m"),
        ("ll", "l"),
        ("c", "k"),
    ];
    if rng.chance(0.35) {
        let applicable: Vec<&(&str, &str)> = variants
            .iter()
            .filter(|(from, _)| name.contains(from))
            .collect();
        if !applicable.is_empty() {
            let (from, to) = applicable[rng.below(applicable.len())];
            return name.replacen(from, to, 1);
        }
    }
    let mut chars: Vec<char> = name.chars().collect();
    if chars.len() < 3 {
        chars.push(char::from(LETTERS[rng.below(LETTERS.len())]));
        return chars.into_iter().collect();
    }
    // Keep the first letter (clerks rarely get it wrong).
    let i = 1 + rng.below(chars.len() - 1);
    match rng.below(4) {
        0 => chars[i] = char::from(LETTERS[rng.below(LETTERS.len())]),
        1 => {
            chars.remove(i);
        }
        2 => chars.insert(i, char::from(LETTERS[rng.below(LETTERS.len())])),
        _ => {
            if i + 1 < chars.len() {
                chars.swap(i, i + 1);
            } else {
                chars.swap(i - 1, i);
            }
        }
    }
    let out: String = chars.into_iter().collect();
    if out == name {
        // A substitution by the same letter or a swap of equal letters: delete instead.
        let mut chars: Vec<char> = name.chars().collect();
        chars.remove(i);
        return chars.into_iter().collect();
    }
    out
}

fn reformat_phone(p: &str, rng: &mut SynthRng) -> String {
    let local = p.strip_prefix('0').unwrap_or(p);
    match rng.below(4) {
        0 => p.to_string(),
        1 => format!("+250{local}"),
        2 => format!(
            "+250 {} {} {}",
            &local[..3.min(local.len())],
            &local[3.min(local.len())..6.min(local.len())],
            &local[6.min(local.len())..]
        ),
        _ => format!(
            "{} {} {}",
            &p[..4.min(p.len())],
            &p[4.min(p.len())..7.min(p.len())],
            &p[7.min(p.len())..]
        ),
    }
}

/// A second registration of `p` at another facility, with the errors clerks make.
pub fn duplicate(p: &SynthPerson, rng: &mut SynthRng) -> SynthPerson {
    let mut d = p.clone();
    // Most duplicates exist because the ID was not presented.
    if !rng.chance(0.15) {
        d.nid = None;
    }
    if let Some(f) = &d.family
        && rng.chance(0.2)
    {
        d.family = Some(misspell(f, rng));
    }
    if rng.chance(0.15) && !d.given.is_empty() {
        let i = rng.below(d.given.len());
        d.given[i] = misspell(&d.given[i], rng);
    }
    if d.given.len() > 1 && rng.chance(0.3) {
        d.given.truncate(1);
    }
    if rng.chance(0.2) {
        // Given and family recorded the other way round.
        let family = d.family.take();
        d.family = d.given.first().cloned();
        d.given = family.into_iter().collect();
    }
    if let Some(date) = d.birth_date {
        let r = rng.unit();
        d.birth_date = match (date.month, date.day) {
            (Some(m), Some(day)) if r < 0.08 && day <= 12 && day != m => {
                Some(BirthDate::ymd(date.year, day, m))
            }
            _ if r < 0.14 => Some(BirthDate {
                year: date.year + if rng.chance(0.5) { 1 } else { -1 },
                ..date
            }),
            _ if r < 0.21 => Some(BirthDate::year(date.year)),
            _ if r < 0.25 => None,
            (Some(m), Some(day)) if r < 0.29 => Some(BirthDate::ymd(date.year, m, 1 + (day % 28))),
            _ => Some(date),
        };
    }
    if rng.chance(0.02) {
        d.gender = None;
    }
    if let Some(ph) = &d.phone {
        d.phone = if rng.chance(0.35) {
            None
        } else if rng.chance(0.1) {
            Some(phone(rng))
        } else {
            Some(reformat_phone(ph, rng))
        };
    }
    if let Some((province, district, sector)) = d.address.clone() {
        let r = rng.unit();
        d.address = if r < 0.2 {
            None
        } else if r < 0.4 {
            Some((province, district, None))
        } else if r < 0.45 {
            Some(address(rng))
        } else {
            Some((province, district, sector))
        };
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn name_lists_are_large_and_distinct() {
        for list in [KINYARWANDA, FRENCH] {
            assert!(list.len() >= 200, "{}", list.len());
            let set: HashSet<_> = list.iter().collect();
            assert_eq!(set.len(), list.len(), "duplicate names");
        }
        assert_eq!(DISTRICTS.len(), 30);
    }

    #[test]
    fn deterministic() {
        assert_eq!(population(7, 200), population(7, 200));
        assert_ne!(population(7, 200), population(8, 200));
        let mut a = SynthRng::new(1);
        let mut b = SynthRng::new(1);
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn rng_ranges() {
        let mut r = SynthRng::new(3);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn fhir_round_trip() {
        for p in population(11, 300) {
            let via_json = Demographics::try_from_patient(&p.to_fhir()).unwrap();
            assert_eq!(via_json, p.demographics());
        }
    }

    #[test]
    fn duplicates_differ_but_stay_related() {
        let mut rng = SynthRng::new(5);
        let people = population(5, 500);
        let changed = people
            .iter()
            .filter(|p| duplicate(p, &mut rng) != **p)
            .count();
        assert!(changed > 400, "{changed}");
        for name in ["Habimana", "Cyiza", "Jo"] {
            let m = misspell(name, &mut rng);
            assert_ne!(m, name);
        }
    }
}
