//! The controller's layering, checked on its sources (the compiler keeps the crate
//! boundaries — domain, store — but not the rules inside this crate):
//! - dependencies point down: `services` ← `bus`, `services` ← `http` ← `web`, and only the
//!   composition root (`app`, `gateway`) uses everything; nothing below imports from above;
//! - no import circle between modules: the graph of `crate::…` and `super::…` references
//!   between modules (a file of `services/`, of `web/`, a part of `http/`, `bus`, `app`,
//!   `gateway`) has no cycle.
//!
//! ARCHITECTURE.md ("Layers and dependency rules") states the same rules for people.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path below `src/`: `services/fleet.rs` → `services::fleet`,
/// `http/routes/mod.rs` → `http::routes`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The unit a module belongs to in the graph: `services::X`, `web::X`, `http::X`, or the
/// top-level module itself.
fn unit(path: &[String]) -> String {
    match path {
        [] => "lib".into(),
        [top] => top.clone(),
        [top, second, ..] if matches!(top.as_str(), "services" | "web" | "http") => {
            format!("{top}::{second}")
        }
        [top, ..] => top.clone(),
    }
}

fn layer(unit: &str) -> &str {
    unit.split("::").next().unwrap_or(unit)
}

/// Module paths a file refers to: `crate::a::b…`, and `super::x…` resolved from `module`.
fn references(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_lowercase()))
            .collect()
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            out.push(ident(rest));
        }
        let mut rest = code;
        while let Some(i) = rest.find("super::") {
            rest = &rest[i + "super::".len()..];
            // A `mod.rs` is its directory's module: `super` is the directory's parent.
            // In `a/b.rs` (module a::b) `super` is `a`; in `a/b/mod.rs` (also a::b) too.
            let mut base: Vec<String> = module.to_vec();
            base.pop();
            base.extend(ident(rest));
            out.push(base);
        }
        // `use self::a::b` inside a mod.rs (http/mod.rs uses its children this way).
        let mut rest = code;
        while let Some(i) = rest.find("self::") {
            rest = &rest[i + "self::".len()..];
            let mut base: Vec<String> = module.to_vec();
            base.extend(ident(rest));
            out.push(base);
        }
    }
    out
}

/// The graph: unit → units it refers to (self-references dropped).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let from = unit(&module);
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests (`#[cfg(test)] mod tests`, where `super` is the file itself) are not
        // part of the structure.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let entry = g.entry(from.clone()).or_default();
        for r in references(text, &module) {
            if !r.is_empty() {
                entry.insert(unit(&r));
            }
        }
    }
    // A path to an item (`crate::http::router`, a function) names no module of its own: it
    // belongs to the nearest module that exists.
    let known: BTreeSet<String> = g.keys().cloned().collect();
    g.into_iter()
        .map(|(from, tos)| {
            let tos = tos
                .into_iter()
                .map(|to| {
                    if known.contains(&to) {
                        to
                    } else {
                        layer(&to).to_owned()
                    }
                })
                .filter(|to| *to != from && to != "lib")
                .collect();
            (from, tos)
        })
        .collect()
}

#[test]
fn dependencies_point_down() {
    let g = graph();
    assert!(
        g.keys().any(|u| u.starts_with("services::")) && g.contains_key("app"),
        "the source walk found nothing: {g:?}"
    );
    // Which layers each layer may use (besides itself).
    let allowed: &[(&str, &[&str])] = &[
        ("services", &[]),
        ("bus", &["services"]),
        ("http", &["services"]),
        ("web", &["http", "services"]),
        ("app", &["services", "bus", "http", "web"]),
        ("gateway", &["services", "bus", "http", "web", "app"]),
        ("lib", &["app", "gateway"]),
    ];
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let from_layer = layer(from);
        let may = allowed
            .iter()
            .find(|(l, _)| *l == from_layer)
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("module {from} is in no known layer: add it to the rules"));
        for to in tos {
            let to_layer = layer(to);
            if to_layer != from_layer && !may.contains(&to_layer) {
                wrong.push(format!("{from} uses {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies pointing up or sideways: {wrong:#?}"
    );
}

/// A cycle of `g`, if it has one (depth-first search for a back edge).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_owned(), 1);
        stack.push(u.to_owned());
        for v in g.get(u).into_iter().flatten() {
            match state.get(v.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == v).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(v, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(u.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in g.keys() {
        if state.get(u.as_str()).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(u, g, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_circle_between_modules() {
    let g = graph();
    if let Some(cycle) = find_cycle(&g) {
        panic!("import circle: {}", cycle.join(" → "));
    }
    eprintln!("{} modules, no circle:", g.len());
    for (u, tos) in &g {
        eprintln!(
            "  {u} → {}",
            tos.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
}

#[test]
fn the_checker_reads_paths_and_finds_circles() {
    // The parsing and the search the two tests rely on, on made-up sources.
    let services = references(
        "use crate::http::auth::Auth;\nuse super::fleet::Fleet; // crate::web is a comment",
        &["services".into(), "intake".into()],
    );
    let units: Vec<String> = services.iter().map(|r| unit(r)).collect();
    assert_eq!(units, ["http::auth", "services::fleet"]);
    let in_mod = references("use self::routes::devices;", &["http".into()]);
    assert_eq!(unit(&in_mod[0]), "http::routes");
    let edges = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&edges(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
