//! Display names for the front desk: the names of the Organizations and Practitioners a
//! desk view refers to, so the page can say "Kigali University Teaching Hospital" rather
//! than `Organization/fac-b`.
//!
//! Only registry records outside any patient compartment (Organization, Practitioner) are
//! looked up, through the store with the appliance's system context (so each lookup is
//! audited like any read). Lookups happen once per ceremony and once per access list,
//! never per poll of `/desk/api/requests`. Decision: the desk never shows a patient's
//! demographics (the screen faces the waiting room); the patient is "you" on the page.

use serde_json::{Map, Value, json};

use super::Ceremonies;

/// Most references resolved for one view.
const MAX_NAMES: usize = 32;
/// Longest display name kept (characters).
const MAX_NAME_CHARS: usize = 120;

impl Ceremonies {
    /// `{"Organization/x": "Name", ...}` for those of `refs` that are Organization or
    /// Practitioner references to existing records with a name; others are left out.
    pub(crate) async fn display_names<'a>(&self, refs: impl IntoIterator<Item = &'a str>) -> Value {
        let mut out = Map::new();
        for r in refs {
            if out.len() >= MAX_NAMES {
                break;
            }
            if out.contains_key(r) {
                continue;
            }
            let Some((ty, id)) = r.split_once('/') else {
                continue;
            };
            if !matches!(ty, "Organization" | "Practitioner") || id.is_empty() || id.contains('/') {
                continue;
            }
            let Ok(rec) = self.store.read(&self.system(), ty, id).await else {
                continue;
            };
            if rec.deleted {
                continue;
            }
            if let Some(n) = display_name(&rec.resource) {
                out.insert(r.to_owned(), json!(n));
            }
        }
        Value::Object(out)
    }

    /// Adds `names` to a front-desk request view: the names of its grantees (taken from
    /// `terms.granteeNames` where the ceremony already looked them up) and of the facility
    /// that asked (`askedBy.facility`).
    pub(crate) async fn add_names(&self, view: &mut Value) {
        let mut known = known_grantee_names(view);
        let missing: Vec<String> = refs_of(view, &["/terms/grantee", "/askedBy/facility"])
            .into_iter()
            .filter(|r| !known.contains_key(r))
            .collect();
        if let Value::Object(found) = self.display_names(missing.iter().map(String::as_str)).await {
            known.extend(found);
        }
        view["names"] = Value::Object(known);
    }

    /// Adds `names` to an access list: the names of the facilities and practitioners of
    /// its accesses.
    pub(crate) async fn add_access_names(&self, list: &mut Value) {
        let mut refs = Vec::new();
        if let Some(a) = list.get("accesses").and_then(Value::as_array) {
            for item in a {
                refs.extend(refs_of(item, &["/facility", "/practitioner"]));
            }
        }
        list["names"] = self.display_names(refs.iter().map(String::as_str)).await;
    }
}

/// `terms.grantee[i]` -> `terms.granteeNames[i]` where that name is a string.
fn known_grantee_names(view: &Value) -> Map<String, Value> {
    let refs = view.pointer("/terms/grantee").and_then(Value::as_array);
    let names = view
        .pointer("/terms/granteeNames")
        .and_then(Value::as_array);
    let mut out = Map::new();
    if let (Some(refs), Some(names)) = (refs, names) {
        for (r, n) in refs.iter().zip(names) {
            if let (Some(r), Some(n)) = (r.as_str(), n.as_str()) {
                out.insert(r.to_owned(), json!(n));
            }
        }
    }
    out
}

/// The distinct string references found at `pointers` (a string or an array of strings).
fn refs_of(v: &Value, pointers: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in pointers {
        let found: Vec<&str> = match v.pointer(p) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for s in found {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
    }
    out
}

/// The human name of an Organization (`name`) or Practitioner (`name[0].text`, else prefix,
/// given and family names), trimmed to [`MAX_NAME_CHARS`]; `None` when it has none.
pub fn display_name(resource: &Value) -> Option<String> {
    let s = match resource.get("resourceType").and_then(Value::as_str)? {
        "Organization" => resource.get("name")?.as_str()?.to_owned(),
        "Practitioner" => {
            let n = resource.get("name")?.as_array()?.first()?;
            match n.get("text").and_then(Value::as_str) {
                Some(t) => t.to_owned(),
                None => {
                    let mut parts: Vec<&str> = Vec::new();
                    for key in ["prefix", "given"] {
                        if let Some(a) = n.get(key).and_then(Value::as_array) {
                            parts.extend(a.iter().filter_map(Value::as_str));
                        }
                    }
                    if let Some(f) = n.get("family").and_then(Value::as_str) {
                        parts.push(f);
                    }
                    parts.join(" ")
                }
            }
        }
        _ => return None,
    };
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_organizations_and_practitioners() {
        let o = json!({"resourceType": "Organization", "name": " Kibagabaga Hospital "});
        assert_eq!(display_name(&o).as_deref(), Some("Kibagabaga Hospital"));
        let p = json!({"resourceType": "Practitioner",
            "name": [{"prefix": ["Dr."], "given": ["Aline"], "family": "Mukamana"}]});
        assert_eq!(display_name(&p).as_deref(), Some("Dr. Aline Mukamana"));
        let t = json!({"resourceType": "Practitioner", "name": [{"text": "Nurse Jean"}]});
        assert_eq!(display_name(&t).as_deref(), Some("Nurse Jean"));
        let patient = json!({"resourceType": "Patient", "name": [{"text": "Secret"}]});
        assert_eq!(display_name(&patient), None);
        assert_eq!(
            display_name(&json!({"resourceType": "Organization", "name": "\u{7}"})),
            None
        );
        let long = json!({"resourceType": "Organization", "name": "x".repeat(500)});
        assert_eq!(display_name(&long).unwrap().len(), MAX_NAME_CHARS);
    }

    #[test]
    fn references_of_a_view() {
        let v = json!({"terms": {"grantee": ["Organization/b", "Practitioner/d"]},
            "askedBy": {"facility": "Organization/b"}});
        assert_eq!(
            refs_of(&v, &["/terms/grantee", "/askedBy/facility", "/missing"]),
            ["Organization/b", "Practitioner/d"]
        );
        let v = json!({"terms": {"grantee": ["Organization/b", "Practitioner/d"],
            "granteeNames": ["Hospital B", null]}});
        let known = known_grantee_names(&v);
        assert_eq!(known.len(), 1);
        assert_eq!(known["Organization/b"], "Hospital B");
    }
}
