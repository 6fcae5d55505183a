//! ARCHITECTURE.md's code map matches the tree: every source file of the engine, the server and
//! the browser client is named in its crate's section, and every file or folder a section names
//! exists in that crate. A move that forgets the map fails here, naming what drifted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crates whose `src/` the map must cover, with the heading of their section.
const CRATES: &[(&str, &str)] = &[
    ("engine", "### `engine/`"),
    ("server", "### `server/`"),
    ("client-wasm", "### `client-wasm/`"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The text of the section that starts with `heading`, up to the next `### ` or `## `.
fn section<'a>(map: &'a str, heading: &str) -> &'a str {
    let start = map
        .find(heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading}"));
    let body = &map[start + heading.len()..];
    let end = body
        .find("\n### ")
        .into_iter()
        .chain(body.find("\n## "))
        .min()
        .unwrap_or(body.len());
    &body[..end]
}

/// Every `code span` of `text` that names a Rust file or a folder (`x.rs`, `x/`, `x/y.rs`),
/// with one `{a,b}` alternative expanded (`migrations/{sqlite,postgres}/` names two folders).
fn named_paths(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.contains(' ') && (s.ends_with(".rs") || s.ends_with('/')))
        .flat_map(|s| match (s.find('{'), s.find('}')) {
            (Some(open), Some(close)) if open < close => s[open + 1..close]
                .split(',')
                .map(|alt| format!("{}{alt}{}", &s[..open], &s[close + 1..]))
                .collect(),
            _ => vec![s.to_owned()],
        })
        .collect()
}

/// Every `.rs` file and folder under `dir`, relative to it (`rooms/task.rs`, `rooms/`).
fn tree(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name");
        if path.is_dir() {
            let rel = format!("{prefix}{name}/");
            out.insert(rel.clone());
            tree(&path, &rel, out);
        } else if name.ends_with(".rs") {
            out.insert(format!("{prefix}{name}"));
        }
    }
}

#[test]
fn the_code_map_names_every_file_and_only_files_that_exist() {
    let root = root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut problems = Vec::new();
    for (krate, heading) in CRATES {
        let text = section(&map, heading);
        let named = named_paths(text);
        let src = root.join(krate).join("src");
        let mut files = BTreeSet::new();
        tree(&src, "", &mut files);
        // Every file is named: by its path in `src/`, by a path that ends with it, or (a
        // `mod.rs`, `lib.rs`, `main.rs`) by its folder or crate. A bare file name counts when
        // no other file of the crate has that name.
        for file in &files {
            if file.ends_with('/') {
                continue;
            }
            let base = file.rsplit('/').next().unwrap_or(file);
            let parent = file.strip_suffix(base).unwrap_or("");
            let same_name = files
                .iter()
                .filter(|f| f.ends_with(&format!("/{base}")) || *f == base)
                .count();
            let ok = named.iter().any(|n| {
                n == file
                    || file.ends_with(&format!("/{n}"))
                    || (same_name == 1 && n == base)
                    || (matches!(base, "mod.rs" | "lib.rs" | "main.rs")
                        && (parent.is_empty() || n == parent || parent.ends_with(&format!("/{n}"))))
            });
            if !ok {
                problems.push(format!(
                    "{krate}/src/{file} is not named in the {heading} section"
                ));
            }
        }
        // Every path named exists: a file or folder of the crate ends with it (paths outside
        // `src/`, such as `js/src/yjs.js` or `migrations/`, are checked from the crate root).
        for n in &named {
            let in_src = files
                .iter()
                .any(|f| f == n || f.ends_with(&format!("/{n}")));
            let elsewhere = root.join(krate).join(n).exists() || root.join(n).exists();
            if !in_src && !elsewhere {
                problems.push(format!(
                    "the {heading} section names `{n}`, which does not exist"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md drifted:\n  {}",
        problems.join("\n  ")
    );
}
