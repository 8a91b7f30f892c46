//! Blocking keys: which stored patients are worth scoring against a query.
//!
//! Scoring every patient is out of the question at a million records, so each record is
//! filed under a few keys and a query scores only the records that share at least one of
//! its keys. Keys are chosen so that a true duplicate shares one even when it carries a
//! typo, swapped names or a wrong birth date:
//!
//! | key | form | survives |
//! |---|---|---|
//! | identifier | `id|{system}|{value}` | everything but a missing identifier |
//! | phone | `ph|{e164}` | name and date errors |
//! | name word + birth year | `ny|{phonetic(word)}|{year}` for each given and family word | a typo in the *other* name; swapped names (words are role-free) |
//! | name pair | `nn|{phonetic(a)}|{phonetic(b)}`, family word and first given word, sorted | any birth-date error, swapped names |
//!
//! Queries look up [`search_keys`]: the same keys plus name word + neighbouring years.
//! At most [`MAX_NAME_WORDS`] name words are keyed. Keys are plain strings; a store that
//! keeps its indexes sealed files them under a keyed hash of the string (a blind index),
//! which preserves equality and so preserves blocking.

use super::demographics::Demographics;

/// Most name words (family first, then given) that get a name + year key.
pub const MAX_NAME_WORDS: usize = 4;

/// The blocking keys of `d`, without duplicates. Empty when `d` has nothing to block on.
pub fn blocking_keys(d: &Demographics) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(8);
    let mut push = |k: String| {
        if !keys.contains(&k) {
            keys.push(k);
        }
    };
    for (system, value) in &d.identifiers {
        push(format!("id|{system}|{value}"));
    }
    for phone in &d.phones {
        push(format!("ph|{phone}"));
    }
    if let Some(date) = d.birth_date {
        for w in d.family.iter().chain(&d.given).take(MAX_NAME_WORDS) {
            if !w.key.is_empty() {
                push(format!("ny|{}|{}", w.key, date.year));
            }
        }
    }
    let fam = d.family.iter().find(|w| !w.key.is_empty());
    let giv = d.given.iter().find(|w| !w.key.is_empty());
    if let (Some(f), Some(g)) = (fam, giv) {
        let (a, b) = if f.key <= g.key {
            (&f.key, &g.key)
        } else {
            (&g.key, &f.key)
        };
        push(format!("nn|{a}|{b}"));
    }
    keys
}

/// The keys to look up when searching for `d`: its [`blocking_keys`], plus its name +
/// year keys for the year before and after, so a duplicate whose birth year is off by
/// one and who also has a name typo is still found. Records are filed only under
/// [`blocking_keys`]; only queries pay for the wider net.
pub fn search_keys(d: &Demographics) -> Vec<String> {
    let mut keys = blocking_keys(d);
    if let Some(date) = d.birth_date {
        let extra: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let rest = k.strip_prefix("ny|")?;
                let (word, _year) = rest.rsplit_once('|')?;
                Some([date.year - 1, date.year + 1].map(|y| format!("ny|{word}|{y}")))
            })
            .flatten()
            .collect();
        keys.extend(extra);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::demographics::BirthDate;

    fn shares_key(a: &Demographics, b: &Demographics) -> bool {
        let kb = blocking_keys(b);
        blocking_keys(a).iter().any(|k| kb.contains(k))
    }

    #[test]
    fn keys_of_a_full_record() {
        let d = Demographics::builder()
            .identifier("urn:rw:nid", "123")
            .given("Alice")
            .family("Uwase")
            .birth_date(BirthDate::ymd(1990, 3, 4))
            .phone("0788123456")
            .build();
        let keys = blocking_keys(&d);
        assert_eq!(
            keys,
            vec![
                "id|urn:rw:nid|123",
                "ph|+250788123456",
                "ny|US|1990",
                "ny|ARS|1990",
                "nn|ARS|US"
            ]
        );
        assert!(blocking_keys(&Demographics::default()).is_empty());
    }

    #[test]
    fn duplicates_share_a_key() {
        let d = BirthDate::ymd(1990, 3, 4);
        let a = Demographics::builder()
            .given("Alice")
            .family("Uwase")
            .birth_date(d)
            .build();
        // family typo: given + year still shared
        let b = Demographics::builder()
            .given("Alice")
            .family("Uwaze")
            .birth_date(d)
            .build();
        // swapped names
        let c = Demographics::builder()
            .given("Uwase")
            .family("Alice")
            .birth_date(d)
            .build();
        // wrong year: name pair still shared
        let e = Demographics::builder()
            .given("Alise")
            .family("Uwase")
            .birth_date(BirthDate::year(1991))
            .build();
        // no date
        let f = Demographics::builder()
            .given("Alice")
            .family("Uwase")
            .build();
        for x in [&b, &c, &e, &f] {
            assert!(shares_key(&a, x), "{x:?}");
        }
        // year off by one and a typo in one name: found through the query's wider net
        let g = Demographics::builder()
            .given("Alise")
            .family("Uwase")
            .birth_date(BirthDate::year(1991))
            .build();
        let kg = blocking_keys(&g);
        assert!(search_keys(&a).iter().any(|k| kg.contains(k)));
        assert_eq!(search_keys(&a).len(), blocking_keys(&a).len() + 4);
        let other = Demographics::builder()
            .given("Eric")
            .family("Habimana")
            .birth_date(d)
            .build();
        assert!(!shares_key(&a, &other));
    }
}
