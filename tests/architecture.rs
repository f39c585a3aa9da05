//! The crate's layering, checked: each module imports only modules in layers below its
//! own, so there is no upward import and no import circle.
//!
//! Every `crate::module` path in `src/` (outside comments) is an edge from the file's
//! top-level module to `module`. The layers are the README's architecture diagram.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["body", "duration", "route", "metrics"],
    &["settings"],
    &["envelope", "store"],
    &["upstream", "context"],
    &["trace"],
    &["callback", "limit", "retry", "server"],
    &["idempotency", "tasks", "archive"],
    &["guard"],
    &["mock", "relay", "runway"],
    &["sidecar"],
    &["config"],
    &["app"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| {
            panic!("module {module} is in no layer: add it to LAYERS and the README's diagram")
        })
}

/// `src/retry/attempts.rs` -> `retry`; `src/lib.rs`, `src/main.rs` and the binary's own
/// modules sit on top of everything and are not checked.
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "demo")).then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Modules named by `crate::NAME` in code (not comments).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = code.split("crate::{").nth(1) {
            for name in group.split([',', '}', ' ']).filter(|w| !w.is_empty()) {
                let name = name.split("::").next().unwrap_or_default();
                if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    found.insert(name.to_owned());
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file, &src) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable");
        let deps: Vec<String> = imports(&text).into_iter().filter(|d| *d != module).collect();
        graph.entry(module).or_default().extend(deps);
    }
    graph
}

#[test]
fn no_module_imports_one_above_it() {
    let mut upward = Vec::new();
    for (module, deps) in graph() {
        for dep in deps {
            if layer_of(&dep) >= layer_of(&module) {
                upward.push(format!(
                    "{module} (layer {}) imports {dep} (layer {})",
                    layer_of(&module),
                    layer_of(&dep)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_import_graph_has_no_circle() {
    // Independent of the layer table: repeatedly remove modules that import nothing left.
    let mut graph = graph();
    while !graph.is_empty() {
        let leaves: Vec<String> = graph
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !graph.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(
            !leaves.is_empty(),
            "an import circle among: {:?}",
            graph.keys().collect::<Vec<_>>()
        );
        for leaf in leaves {
            graph.remove(&leaf);
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    let found = imports(
        "use crate::body::{self, Body};\nuse crate::{envelope, route::RouteClass};\n// crate::app in a comment\nlet x = crate::duration::format(d);",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["body", "duration", "envelope", "route"]
    );
    let graph = graph();
    assert!(graph["retry"].contains("upstream"), "{:?}", graph["retry"]);
    assert!(graph["app"].contains("config"));
}

/// Sibling files a file names through `super::` (outside comments and its own `mod
/// tests`, whose `super` is the file itself).
fn sibling_imports(text: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("super::") {
            let after = &code[at + "super::".len()..];
            let names: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
                None => vec![after],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_has_a_circle_among_its_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut circles = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && path.extension().is_some_and(|e| e == "rs")
                && !matches!(stem, "mod" | "lib" | "main")
            {
                files.insert(stem.to_owned(), std::fs::read_to_string(&path).expect("readable"));
            }
        }
        if dir.join("mod.rs").exists() || dir.ends_with("src") {
            // A directory module's files are its submodules; `src/` itself has no `super`.
            let siblings: BTreeSet<String> = files.keys().cloned().collect();
            let mut graph: BTreeMap<String, BTreeSet<String>> = files
                .iter()
                .map(|(name, text)| {
                    let mut deps = sibling_imports(text, &siblings);
                    deps.remove(name);
                    (name.clone(), deps)
                })
                .collect();
            if dir.ends_with("src") {
                continue;
            }
            while !graph.is_empty() {
                let leaves: Vec<String> = graph
                    .iter()
                    .filter(|(_, deps)| deps.iter().all(|d| !graph.contains_key(d)))
                    .map(|(m, _)| m.clone())
                    .collect();
                if leaves.is_empty() {
                    circles.push(format!(
                        "{}: {:?}",
                        dir.display(),
                        graph.keys().collect::<Vec<_>>()
                    ));
                    break;
                }
                for leaf in leaves {
                    graph.remove(&leaf);
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles among a module's files:\n{}",
        circles.join("\n")
    );
}
