//! The crate's layers, from the bottom up, and the test that keeps them: a
//! top-level module may use the modules of the layers below it, never one
//! above (so there is no import cycle between them). docs/architecture.md
//! lists the same layers; the test checks that too.

/// Each top-level module, bottom first, with what it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("accept", &[]),
    ("bindings", &[]),
    ("sandbox", &["bindings"]),
    ("site", &["bindings", "sandbox"]),
    ("caps", &["bindings", "sandbox", "site"]),
    ("runtime", &["bindings", "sandbox", "caps"]),
    (
        "tenants",
        &["accept", "bindings", "sandbox", "site", "caps", "runtime"],
    ),
    (
        "http",
        &[
            "accept", "bindings", "sandbox", "site", "caps", "runtime", "tenants",
        ],
    ),
    (
        "cli",
        &[
            "accept", "bindings", "sandbox", "site", "caps", "runtime", "tenants", "http",
        ],
    ),
];

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `.rs` file of a top-level module (`src/NAME.rs` and `src/NAME/`).
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{module}.rs"));
    if single.exists() {
        files.push(single);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules `source` names through `crate::` (in `use` lines
/// and paths alike, `crate::{a, b}` included), comments left out.
fn crate_modules_used(source: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        }
    }
    used
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layered: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    // Every top-level module has a place in the table.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(
                layered.contains(name),
                "`{name}` is not in layers.rs's LAYERS: give it a layer"
            );
        }
    }
    let mut wrong = Vec::new();
    for (module, allowed) in LAYERS {
        let files = files_of(&src, module);
        assert!(!files.is_empty(), "no sources for `{module}`");
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            for used in crate_modules_used(&source) {
                if used != *module
                    && layered.contains(used.as_str())
                    && !allowed.contains(&used.as_str())
                {
                    wrong.push(format!(
                        "{} uses crate::{used}, which is not below `{module}`",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_layer_table_allows_only_what_is_below() {
    for (at, (module, allowed)) in LAYERS.iter().enumerate() {
        let below: Vec<&str> = LAYERS[..at].iter().map(|(name, _)| *name).collect();
        for name in *allowed {
            assert!(
                below.contains(name),
                "`{module}` may use `{name}`, which is not below it"
            );
        }
    }
}

#[test]
fn the_architecture_doc_lists_the_same_layers() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/architecture.md has a `## Layers` section");
    let section = section.split("\n## ").next().unwrap();
    // The table's rows name each layer first, bottom first: `| `name` | ...`.
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let expected: Vec<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    assert_eq!(listed, expected, "docs/architecture.md's layer table");
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let used = crate_modules_used(
        "use crate::caps::X;\nlet a = crate::http::y();\nuse crate::{site, tenants::Z};\n// crate::cli\n",
    );
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    assert_eq!(used, ["caps", "http", "site", "tenants"]);
}
