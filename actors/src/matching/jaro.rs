//! Jaro and Jaro-Winkler string similarity.
//!
//! Written here rather than pulled from a crate because the scorer calls it on short,
//! already-normalised name tokens millions of times per second in candidate search, and
//! a small stack-friendly implementation over `char`s is all it needs.
//!
//! Definitions follow Winkler (1990): matching characters are equal characters no
//! further apart than `max(|a|, |b|) / 2 - 1`; `t` is half the number of matched
//! characters that appear in a different order; `jaro = (m/|a| + m/|b| + (m - t)/m) / 3`;
//! Jaro-Winkler adds `l * p * (1 - jaro)` for a common prefix of `l <= 4` characters with
//! `p = 0.1`.

/// Winkler's prefix scale.
const PREFIX_SCALE: f64 = 0.1;
/// Longest common prefix Winkler rewards.
const MAX_PREFIX: usize = 4;

/// Longest input (in symbols) handled without heap allocation.
const STACK_LEN: usize = 64;

/// Jaro similarity of `a` and `b`, in `0.0..=1.0` (1.0 = identical).
///
/// Comparison is exact on `char`s: callers normalise case and accents first.
/// Two empty strings are identical (1.0); one empty string against a non-empty one is 0.0.
pub fn jaro(a: &str, b: &str) -> f64 {
    if a.is_ascii() && b.is_ascii() {
        return jaro_slices(a.as_bytes(), b.as_bytes());
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    jaro_slices(&a, &b)
}

fn jaro_slices<T: Copy + Eq + Default>(a: &[T], b: &[T]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    // Names are short: keep the bookkeeping on the stack when they fit.
    let mut used_stack = [false; STACK_LEN];
    let mut used_heap;
    let b_used: &mut [bool] = if b.len() <= STACK_LEN {
        &mut used_stack[..b.len()]
    } else {
        used_heap = vec![false; b.len()];
        &mut used_heap
    };
    let mut matched_stack = [T::default(); STACK_LEN];
    let mut matched_heap;
    let a_matched: &mut [T] = if a.len() <= STACK_LEN {
        &mut matched_stack[..a.len()]
    } else {
        matched_heap = vec![T::default(); a.len()];
        &mut matched_heap
    };
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let mut m = 0usize;
    for (i, &ca) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for j in lo..hi {
            if !b_used[j] && b[j] == ca {
                b_used[j] = true;
                a_matched[m] = ca;
                m += 1;
                break;
            }
        }
    }
    if m == 0 {
        return 0.0;
    }
    let b_matched = b
        .iter()
        .zip(b_used.iter())
        .filter(|(_, used)| **used)
        .map(|(c, _)| *c);
    let half_transpositions = a_matched[..m]
        .iter()
        .zip(b_matched)
        .filter(|(x, y)| **x != *y)
        .count();
    let m = m as f64;
    let t = half_transpositions as f64 / 2.0;
    (m / a.len() as f64 + m / b.len() as f64 + (m - t) / m) / 3.0
}

fn winkler<T: Eq>(j: f64, a: &[T], b: &[T]) -> f64 {
    let prefix = a
        .iter()
        .zip(b)
        .take(MAX_PREFIX)
        .take_while(|(x, y)| x == y)
        .count();
    j + prefix as f64 * PREFIX_SCALE * (1.0 - j)
}

/// Jaro-Winkler similarity of `a` and `b`, in `0.0..=1.0` (1.0 = identical).
///
/// Known values: `MARTHA`/`MARHTA` 0.961, `DWAYNE`/`DUANE` 0.840,
/// `DIXON`/`DICKSONX` 0.813.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    if a.is_ascii() && b.is_ascii() {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        return winkler(jaro_slices(a, b), a, b);
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    winkler(jaro_slices(&a, &b), &a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 0.0005
    }

    #[test]
    fn known_values() {
        assert!(
            close(jaro_winkler("MARTHA", "MARHTA"), 0.961),
            "{}",
            jaro_winkler("MARTHA", "MARHTA")
        );
        assert!(
            close(jaro_winkler("DWAYNE", "DUANE"), 0.840),
            "{}",
            jaro_winkler("DWAYNE", "DUANE")
        );
        assert!(
            close(jaro_winkler("DIXON", "DICKSONX"), 0.813),
            "{}",
            jaro_winkler("DIXON", "DICKSONX")
        );
        assert!(close(jaro("MARTHA", "MARHTA"), 0.944));
        assert!(close(jaro("DWAYNE", "DUANE"), 0.822));
        assert!(close(jaro("DIXON", "DICKSONX"), 0.767));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(jaro_winkler("", ""), 1.0);
        assert_eq!(jaro_winkler("abc", ""), 0.0);
        assert_eq!(jaro_winkler("", "abc"), 0.0);
        assert_eq!(jaro_winkler("abc", "xyz"), 0.0);
        assert_eq!(jaro_winkler("habimana", "habimana"), 1.0);
        assert_eq!(jaro_winkler("a", "a"), 1.0);
        // Non-ASCII and long inputs take the general path and agree with the fast one.
        assert!(close(jaro_winkler("MÄRTHA", "MÄRHTA"), 0.961));
        let long_a = "habimana".repeat(10);
        let long_b = "habimena".repeat(10);
        let x = jaro_winkler(&long_a, &long_b);
        assert!(x > 0.8 && x < 1.0, "{x}");
    }

    #[test]
    fn symmetric_and_bounded() {
        let words = [
            "habimana",
            "hakizimana",
            "uwimana",
            "mukamana",
            "niyonzima",
            "jean",
            "jeanne",
        ];
        for a in words {
            for b in words {
                let x = jaro_winkler(a, b);
                let y = jaro_winkler(b, a);
                assert!(close(x, y), "{a} {b}");
                assert!((0.0..=1.0).contains(&x));
            }
        }
        // Similar Kinyarwanda names stay close, unrelated ones do not.
        assert!(jaro_winkler("hakizimana", "hakizimna") > 0.95);
        assert!(jaro_winkler("uwimana", "niyonzima") < 0.7);
    }
}
