//! Architecture invariants, read from the manifests and from `Cargo.lock`:
//!
//! * `hexa-crypto` and `hexa-hal` depend on no crate of ours;
//! * `hexa-actors` depends on neither hyper nor linux-embedded-hal (not even transitively);
//! * `hexa-crypto` does no I/O of its own: no tokio, no heed, no hyper anywhere below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// All dependency names of a manifest, across every dependency table and target.
fn direct_deps(crate_dir: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let mut out = BTreeSet::new();
    let tables = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut collect = |t: &toml::Table| {
        for k in tables {
            if let Some(deps) = t.get(k).and_then(|v| v.as_table()) {
                for (name, spec) in deps {
                    let real = spec
                        .as_table()
                        .and_then(|s| s.get("package"))
                        .and_then(|p| p.as_str())
                        .unwrap_or(name);
                    out.insert(real.to_string());
                }
            }
        }
    };
    collect(&doc);
    if let Some(targets) = doc.get("target").and_then(|v| v.as_table()) {
        for (_, t) in targets {
            if let Some(t) = t.as_table() {
                collect(t);
            }
        }
    }
    out
}

/// Normal (non-dev) dependency graph from Cargo.lock: package name -> dependency names.
fn lock_graph() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let mut g = BTreeMap::new();
    for p in doc["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let deps = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        g.entry(name)
            .or_insert_with(BTreeSet::new)
            .extend::<BTreeSet<String>>(deps);
    }
    g
}

/// Everything reachable from `start` through the lock file. Cargo.lock does not separate
/// dev-dependencies, so this over-approximates: a violation found here is reported only
/// if it is also reachable through the normal dependencies of the manifests.
fn reachable(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_string()];
    while let Some(n) = stack.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(ds) = g.get(&n) {
            stack.extend(ds.iter().cloned());
        }
    }
    seen
}

/// Non-optional normal dependencies of one of our crates, from its manifest.
fn normal_deps(crate_dir: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    doc.get("dependencies")
        .and_then(|v| v.as_table())
        .map(|t| {
            t.iter()
                .filter(|(_, spec)| spec.get("optional").and_then(|o| o.as_bool()) != Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Reachable set through normal dependencies only. Our own crates expand through their
/// manifests (non-optional dependencies: the lock file unifies features across the
/// workspace, so it would show `hexa-hal -> linux-embedded-hal` even where the `linux`
/// feature is off); third-party crates expand through the lock file.
fn normal_closure(crate_dir: &str) -> BTreeSet<String> {
    let g = lock_graph();
    let dir_of = |name: &str| name.strip_prefix("hexa-").map(str::to_string);
    let mut out = BTreeSet::new();
    let mut stack: Vec<String> = normal_deps(crate_dir).into_iter().collect();
    while let Some(n) = stack.pop() {
        if !out.insert(n.clone()) {
            continue;
        }
        if OURS.contains(&n.as_str()) {
            stack.extend(normal_deps(&dir_of(&n).unwrap()));
        } else {
            stack.extend(reachable(&g, &n));
        }
    }
    out
}

/// Features that `crate_dir` asks of one of our crates (from its manifest and the
/// workspace's `[workspace.dependencies]` entry), and whether defaults are on.
fn requested_features(crate_dir: &str, dep: &str) -> (bool, BTreeSet<String>) {
    let read = |p: PathBuf| -> toml::Table { std::fs::read_to_string(p).unwrap().parse().unwrap() };
    let ws = read(root().join("Cargo.toml"));
    let local = read(root().join(crate_dir).join("Cargo.toml"));
    let ws_spec = ws["workspace"]["dependencies"].get(dep).cloned();
    let local_spec = local["dependencies"].get(dep).cloned();
    let mut defaults = true;
    let mut feats = BTreeSet::new();
    for spec in [ws_spec, local_spec].into_iter().flatten() {
        if let Some(t) = spec.as_table() {
            if t.get("default-features").and_then(|v| v.as_bool()) == Some(false) {
                defaults = false;
            }
            if let Some(f) = t.get("features").and_then(|v| v.as_array()) {
                feats.extend(f.iter().map(|x| x.as_str().unwrap().to_string()));
            }
        }
    }
    (defaults, feats)
}

const OURS: [&str; 4] = ["hexa-crypto", "hexa-hal", "hexa-actors", "hexa-appliance"];

#[test]
fn crypto_and_hal_depend_on_no_crate_of_ours() {
    for dir in ["crypto", "hal"] {
        let deps = direct_deps(dir);
        for ours in OURS {
            assert!(
                !deps.contains(ours),
                "{dir}/Cargo.toml depends on {ours}: crypto and hal must stand alone"
            );
        }
    }
}

#[test]
fn actors_never_see_http_or_linux_devices() {
    let direct = direct_deps("actors");
    let closure = normal_closure("actors");
    let (defaults, feats) = requested_features("actors", "hexa-hal");
    assert!(
        !defaults && !feats.contains("linux"),
        "hexa-actors must use hexa-hal without its `linux` feature (defaults off)"
    );
    for banned in [
        "hyper",
        "hyper-util",
        "linux-embedded-hal",
        "hexa-appliance",
    ] {
        assert!(!direct.contains(banned), "actors/Cargo.toml names {banned}");
        assert!(
            !closure.contains(banned),
            "hexa-actors reaches {banned} through its dependencies"
        );
    }
}

#[test]
fn crypto_is_pure() {
    let closure = normal_closure("crypto");
    for banned in [
        "tokio",
        "heed",
        "hyper",
        "actix",
        "std-embedded-time",
        "linux-embedded-hal",
        "hexa-hal",
        "hexa-actors",
        "hexa-appliance",
    ] {
        assert!(
            !closure.contains(banned),
            "hexa-crypto reaches {banned}: it must stay pure"
        );
    }
}

#[test]
fn hal_knows_no_linux_types_without_its_feature() {
    let text = std::fs::read_to_string(root().join("hal/Cargo.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let deps = doc["dependencies"].as_table().unwrap();
    let leh = deps
        .get("linux-embedded-hal")
        .expect("hal binds Linux devices through linux-embedded-hal");
    assert_eq!(
        leh.get("optional").and_then(|v| v.as_bool()),
        Some(true),
        "linux-embedded-hal must be optional in hexa-hal (behind the `linux` feature)"
    );
}

#[test]
fn layering_test_is_not_vacuous() {
    // The checks above would pass on empty manifests; make sure they read real ones.
    assert!(direct_deps("actors").contains("hexa-crypto"));
    assert!(direct_deps("actors").contains("heed"));
    assert!(normal_closure("appliance").contains("hyper"));
    assert!(normal_closure("crypto").contains("ed25519-dalek"));
}
