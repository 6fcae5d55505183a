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

/// The top-level modules of `server/src` (a file `x.rs` or a folder `x/`) and the other
/// top-level modules each one's code names as `crate::y` (comments left out).
fn server_imports() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let src = root().join("server").join("src");
    let mut files = BTreeSet::new();
    tree(&src, "", &mut files);
    let mut graph = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    for file in files.iter().filter(|f| f.ends_with(".rs")) {
        let top = file
            .split('/')
            .next()
            .unwrap_or(file)
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(src.join(file)).expect("a source file");
        let deps = graph.entry(top.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// The folders read as layers: no two top-level modules of the server import each other, even
/// through others. A cycle is named with its path.
#[test]
fn the_server_modules_import_each_other_without_cycles() {
    let graph = server_imports();
    assert!(
        graph.get("rooms").is_some_and(|d| d.contains("store")),
        "the import scan found nothing: {graph:?}"
    );
    // Depth-first search from each module; a module met again on the current path closes a
    // cycle.
    fn visit(
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            cycles.push(cycle.join(" → "));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(graph, next, path, done, cycles);
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(&graph, node, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles in server/src: {cycles:?}");
}
