//! SMART on FHIR system scopes, in both v1 (`system/*.read`, `system/Patient.write`,
//! `system/*.*`) and v2 (`system/Patient.rs`, `system/*.cruds`) syntax.
//!
//! A scope set is a list of (resource type or `*`, permission bits). v2 letters map to
//! bits directly (c=create, r=read, u=update, d=delete, s=search, in that order and each at
//! most once); v1 `read` is r+s, `write` is c+u+d and `*` is all five. Anything else —
//! user/patient scopes, launch contexts, granular `?param=` v2 scopes, garbage — is an
//! error: a backend client gets exactly what it can be enforced against.

use std::fmt;

use super::AuthError;

/// A FHIR interaction a scope can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `read` and `vread` of one resource (and `_history` of an instance).
    Read,
    /// Searches of a type (and type-level `_history`).
    Search,
    /// `create` (including conditional create).
    Create,
    /// `update` (including conditional update).
    Update,
    /// `delete`.
    Delete,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Self::Create => C,
            Self::Read => R,
            Self::Update => U,
            Self::Delete => D,
            Self::Search => S,
        }
    }
}

const C: u8 = 1;
const R: u8 = 2;
const U: u8 = 4;
const D: u8 = 8;
const S: u8 = 16;
const ALL: u8 = C | R | U | D | S;
const V1_READ: u8 = R | S;
const V1_WRITE: u8 = C | U | D;
/// The v2 letters in their mandatory order, with their bits.
const LETTERS: [(char, u8); 5] = [('c', C), ('r', R), ('u', U), ('d', D), ('s', S)];

/// Longest scope string accepted (keeps parsing bounded on hostile input).
const MAX_SCOPE_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `None` is the wildcard `*`.
    resource: Option<String>,
    /// Permission bits (never zero).
    perms: u8,
}

/// A parsed, normalised set of SMART system scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// One entry per distinct resource (or the wildcard), sorted, permissions merged.
    entries: Vec<Entry>,
    /// Whether to render in v1 syntax (the request used only v1 and every entry fits v1).
    v1: bool,
}

impl Scopes {
    /// Parses a space-separated scope string. Empty strings, unknown scope forms and
    /// malformed permissions are [`AuthError::InvalidScope`].
    pub fn parse(s: &str) -> Result<Scopes, AuthError> {
        if s.len() > MAX_SCOPE_LEN {
            return Err(AuthError::InvalidScope("scope string is too long".into()));
        }
        let mut entries = Vec::new();
        let mut all_v1 = true;
        for tok in s.split_ascii_whitespace() {
            let (entry, v1) = parse_one(tok)?;
            all_v1 &= v1;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(AuthError::InvalidScope("no scope given".into()));
        }
        Ok(Self::normalise(entries, all_v1))
    }

    fn normalise(mut entries: Vec<Entry>, v1: bool) -> Scopes {
        entries.sort_by(|a, b| a.resource.cmp(&b.resource));
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.last_mut() {
                Some(last) if last.resource == e.resource => last.perms |= e.perms,
                _ => out.push(e),
            }
        }
        let v1 = v1
            && out
                .iter()
                .all(|e| matches!(e.perms, V1_READ | V1_WRITE | ALL));
        Scopes { entries: out, v1 }
    }

    /// Whether these scopes allow interaction `i` on resources of type `resource_type`.
    pub fn allows(&self, resource_type: &str, i: Interaction) -> bool {
        self.entries.iter().any(|e| {
            e.perms & i.bit() != 0 && e.resource.as_deref().is_none_or(|r| r == resource_type)
        })
    }

    /// The scopes both `self` and `other` allow; `None` when nothing is left.
    pub fn intersect(&self, other: &Scopes) -> Option<Scopes> {
        let mut out = Vec::new();
        for a in &self.entries {
            for b in &other.entries {
                let resource = match (&a.resource, &b.resource) {
                    (None, None) => None,
                    (None, Some(r)) | (Some(r), None) => Some(r.clone()),
                    (Some(x), Some(y)) if x == y => Some(x.clone()),
                    _ => continue,
                };
                let perms = a.perms & b.perms;
                if perms != 0 {
                    out.push(Entry { resource, perms });
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        // A specific entry fully covered by the wildcard adds nothing; drop it.
        let mut s = Self::normalise(out, self.v1);
        let wild = s
            .entries
            .iter()
            .find(|e| e.resource.is_none())
            .map(|e| e.perms)
            .unwrap_or(0);
        s.entries
            .retain(|e| e.resource.is_none() || e.perms & !wild != 0);
        Some(s)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.entries {
            let res = e.resource.as_deref().unwrap_or("*");
            let mut emit = |perm: &str| -> fmt::Result {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                write!(f, "system/{res}.{perm}")
            };
            if self.v1 {
                match e.perms {
                    ALL => emit("*")?,
                    p => {
                        if p & V1_READ == V1_READ {
                            emit("read")?;
                        }
                        if p & V1_WRITE == V1_WRITE {
                            emit("write")?;
                        }
                    }
                }
            } else {
                let letters: String = LETTERS
                    .iter()
                    .filter(|(_, b)| e.perms & b != 0)
                    .map(|(c, _)| *c)
                    .collect();
                emit(&letters)?;
            }
        }
        Ok(())
    }
}

/// Parses one `system/<Type|*>.<perm>` scope; returns the entry and whether it was v1.
fn parse_one(tok: &str) -> Result<(Entry, bool), AuthError> {
    let bad = |why: &str| AuthError::InvalidScope(format!("scope {tok:?}: {why}"));
    let rest = tok
        .strip_prefix("system/")
        .ok_or_else(|| bad("only system/ scopes are supported"))?;
    let (res, perm) = rest
        .split_once('.')
        .ok_or_else(|| bad("expected system/<type>.<permissions>"))?;
    let resource = if res == "*" {
        None
    } else if is_resource_type(res) {
        Some(res.to_owned())
    } else {
        return Err(bad("not a FHIR resource type name"));
    };
    if perm.contains('?') {
        return Err(bad("granular (query-parameter) scopes are not supported"));
    }
    let (perms, v1) = match perm {
        "read" => (V1_READ, true),
        "write" => (V1_WRITE, true),
        "*" => (ALL, true),
        _ => (
            parse_v2(perm).ok_or_else(|| bad("unknown permission"))?,
            false,
        ),
    };
    Ok((Entry { resource, perms }, v1))
}

/// v2 permissions: a non-empty subsequence of "cruds", in order.
fn parse_v2(perm: &str) -> Option<u8> {
    let mut bits = 0u8;
    let mut next = 0usize;
    for ch in perm.chars() {
        let pos = LETTERS[next..].iter().position(|(c, _)| *c == ch)? + next;
        bits |= LETTERS[pos].1;
        next = pos + 1;
    }
    (bits != 0).then_some(bits)
}

/// A FHIR resource type name: an ASCII capital letter then ASCII letters, at most 64.
fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn v1_read_write_star() {
        let s = Scopes::parse("system/*.read").unwrap();
        assert!(s.allows("Patient", Read) && s.allows("Observation", Search));
        assert!(!s.allows("Patient", Create) && !s.allows("Patient", Update));
        assert!(!s.allows("Patient", Delete));
        let s = Scopes::parse("system/Patient.write").unwrap();
        assert!(s.allows("Patient", Create) && s.allows("Patient", Update));
        assert!(s.allows("Patient", Delete) && !s.allows("Patient", Read));
        assert!(!s.allows("Observation", Create));
        let s = Scopes::parse("system/*.*").unwrap();
        for i in [Read, Search, Create, Update, Delete] {
            assert!(s.allows("Encounter", i));
        }
        assert_eq!(s.to_string(), "system/*.*");
    }

    #[test]
    fn v2_letters() {
        let s = Scopes::parse("system/Patient.rs").unwrap();
        assert!(s.allows("Patient", Read) && s.allows("Patient", Search));
        assert!(!s.allows("Patient", Create) && !s.allows("Observation", Read));
        let s = Scopes::parse("system/Observation.r").unwrap();
        assert!(s.allows("Observation", Read) && !s.allows("Observation", Search));
        let s = Scopes::parse("system/*.cruds").unwrap();
        for i in [Read, Search, Create, Update, Delete] {
            assert!(s.allows("Consent", i));
        }
        let s = Scopes::parse("system/Patient.cd  system/Patient.u\tsystem/Observation.s").unwrap();
        assert_eq!(s.to_string(), "system/Observation.s system/Patient.cud");
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "   ",
            "patient/*.read",
            "user/Patient.rs",
            "launch",
            "openid",
            "system/Patient",
            "system/Patient.",
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.x",
            "system/patient.rs",
            "system/Pat-ient.rs",
            "system/*.reads",
            "system/Observation.rs?category=laboratory",
            "system/*.read garbage",
            "system/.rs",
        ] {
            assert!(
                matches!(Scopes::parse(bad), Err(AuthError::InvalidScope(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn intersection() {
        let reg = Scopes::parse("system/Patient.cruds system/Observation.rs").unwrap();
        let req = Scopes::parse("system/*.read").unwrap();
        let got = req.intersect(&reg).unwrap();
        assert_eq!(
            got.to_string(),
            "system/Observation.read system/Patient.read"
        );
        assert!(!got.allows("Patient", Create));
        assert!(!got.allows("Encounter", Read));

        let reg = Scopes::parse("system/*.rs").unwrap();
        let req = Scopes::parse("system/Patient.cruds system/*.r").unwrap();
        let got = req.intersect(&reg).unwrap();
        assert_eq!(got.to_string(), "system/*.r system/Patient.rs");
        assert!(got.allows("Patient", Search) && !got.allows("Observation", Search));

        let reg = Scopes::parse("system/Patient.r").unwrap();
        let req = Scopes::parse("system/Observation.r").unwrap();
        assert!(req.intersect(&reg).is_none());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "system/*.read system/Patient.write",
            "system/Patient.rs system/*.c",
        ] {
            let a = Scopes::parse(s).unwrap();
            assert_eq!(Scopes::parse(&a.to_string()).unwrap(), a);
        }
    }
}
