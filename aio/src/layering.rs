//! The crate's module layers, checked: a test reads every `crate::…` path in
//! `src/**/*.rs` (comments skipped; names re-exported at the crate root resolved through
//! `lib.rs`), maps each module to its layer, and fails on an import that runs upwards,
//! so an import circle between the layers cannot come back unnoticed. The layers, from
//! the bottom (crate docs, "Layers"):
//!
//! 0. leaves: `sync`, `sys`, `completion`, `callback`, `notify`, `stats`, `fd`,
//!    `io_buf`, `event_notifier`, `join`, `poll_params`, `aligned`;
//! 1. operations: `op/`;
//! 2. back ends: `backend/`, `pool`;
//! 3. core: the context and what runs on it;
//! 4. user-facing I/O: `io`, `io/`, `fs/`, `timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of each top-level module (module docs). A module missing here fails the
/// test: each new module says where it belongs.
const LAYERS: &[(&str, u8)] = &[
    ("sync", 0),
    ("sys", 0),
    ("completion", 0),
    ("callback", 0),
    ("notify", 0),
    ("stats", 0),
    ("fd", 0),
    ("io_buf", 0),
    ("event_notifier", 0),
    ("join", 0),
    ("poll_params", 0),
    ("seccomp", 0),
    ("aligned", 0),
    ("op", 1),
    ("backend", 2),
    ("pool", 2),
    ("context", 3),
    ("submit", 3),
    ("bh", 3),
    ("timer", 3),
    ("current", 3),
    ("local", 3),
    ("poll", 3),
    ("run_queue", 3),
    ("task", 3),
    ("shutdown", 3),
    ("iothread", 3),
    ("co_lock", 3),
    ("io", 4),
    ("fs", 4),
    ("timeout", 4),
    // Documentation only.
    ("guide", 5),
    ("testing", 5),
    // Tests and models sit on top of everything.
    ("layering", 5),
    ("rule_labels", 5),
    ("loom_loop", 5),
    ("loom_tasks", 5),
    ("loom_tests", 5),
    ("loom_timer", 5),
    ("loom_completions", 5),
    ("loom_home", 5),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in layering.rs's LAYERS"))
        .1
}

/// Code without `//` comments (doc comments included) and string literals' contents.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
            i += 1;
        }
        out.push('\n');
    }
    out
}

/// The crate-root names `lib.rs` re-exports (`pub use module::{A, B}`), by module.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for stmt in code(lib).split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let module = path.split("::").next().unwrap_or("").trim().to_owned();
        let rest = &path[module.len()..];
        let list = match (rest.find('{'), rest.rfind('}')) {
            (Some(a), Some(b)) => rest[a + 1..b].to_owned(),
            _ => rest.rsplit("::").next().unwrap_or("").to_owned(),
        };
        for name in list.split(',') {
            let name = name.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.clone());
            }
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.iter().next().expect("a file").to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `(from, to)` module edge of the crate, from `crate::name` paths.
fn edges(src: &Path) -> BTreeSet<(String, String)> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let roots = root_names(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = BTreeSet::new();
    for file in files {
        let from = module_of(src, &file);
        if from == "lib" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).expect("a source file"));
        for (i, _) in text.match_indices("crate::") {
            if i > 0 {
                let before = text.as_bytes()[i - 1];
                if before.is_ascii_alphanumeric() || before == b'_' {
                    continue; // `aioctx_crate::`, not ours
                }
            }
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let to = if LAYERS.iter().any(|(m, _)| *m == name) {
                name
            } else if let Some(m) = roots.get(&name) {
                m.clone()
            } else {
                continue; // an external crate re-exported at the root (`io_uring`)
            };
            if to != from {
                edges.insert((from.clone(), to));
            }
        }
    }
    edges
}

#[test]
fn imports_run_one_way_between_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(
        edges.iter().any(|(f, t)| f == "io" && t == "op"),
        "the scan finds no edges: {edges:?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|(from, to)| layer(to) > layer(from))
        .map(|(from, to)| {
            format!(
                "{from} (layer {}) imports {to} (layer {})",
                layer(from),
                layer(to)
            )
        })
        .collect();
    assert!(
        upward.is_empty(),
        "imports must run leaves -> op -> backend -> core -> user-facing; upward: {upward:#?}"
    );
}

#[test]
fn the_scan_sees_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("aioctx-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("backend")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub use context::AioContext;\n").unwrap();
    std::fs::write(
        dir.join("backend").join("mod.rs"),
        "// crate::io in a comment is ignored\nuse crate::AioContext;\nfn f() { let s = \"crate::io\"; }\n",
    )
    .unwrap();
    let found = edges(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [("backend".to_owned(), "context".to_owned())],
        "a root re-export resolves to its module; comments and strings are skipped"
    );
}
