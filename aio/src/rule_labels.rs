//! Protocol rules are cited by label, checked: a test reads every `.rs` and `.md` file of
//! the workspace (not `target/`) and fails
//!
//! - on a citation of a rule by bare number — the word "rule" or "rules" followed by a
//!   number, also across a line break — since renumbering one header would silently
//!   break it; cite the label instead (`[IO6]`, or `[IO6] (`io.rs`)` from another file);
//! - on a label (`[IO6]`, or `\[IO6\]` in docs rustdoc renders) that no comment
//!   defines. A label is defined by a comment line that starts with it: a module
//!   header's rule (`//! [IO6] …`, `//! - [S1] …`) or a fence's comment (`// [K1] …`);
//! - on a label that two module headers define.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every `.rs` and `.md` file under `dir`, skipping `target` and hidden directories.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the workspace is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// A line without its comment marker (`//!`, `///`, `//`), list dash and indentation.
fn comment_text(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t
        .strip_prefix("//!")
        .or_else(|| t.strip_prefix("///"))
        .or_else(|| t.strip_prefix("//"))?;
    let t = t.trim_start();
    Some(t.strip_prefix("- ").unwrap_or(t))
}

/// The label `t` starts with (`IO6` for `[IO6]…` or `\[IO6\]…`), and what follows it.
fn label_at(t: &str) -> Option<(&str, &str)> {
    let (rest, close) = match t.strip_prefix("\\[") {
        Some(r) => (r, "\\]"),
        None => (t.strip_prefix('[')?, "]"),
    };
    let end = rest.find(close)?;
    let label = &rest[..end];
    is_label(label).then(|| (label, &rest[end + close.len()..]))
}

/// The label a comment line defines: it starts with the label, then a space or nothing
/// (`[IO6] A rule…`; `[IO6]):` is a citation).
fn leading_label(t: &str) -> Option<&str> {
    let (label, after) = label_at(t)?;
    (after.is_empty() || after.starts_with(' ')).then_some(label)
}

/// Capitals then digits: `IO6`, `BH10`, `K1`.
fn is_label(s: &str) -> bool {
    let digits = s.trim_start_matches(|c: char| c.is_ascii_uppercase());
    digits.len() < s.len() && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Every label `text` cites, with its line number.
fn cited_labels(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        for (i, _) in line.match_indices('[') {
            // Not an index expression (`a[N1]`): the bracket follows no identifier.
            let prev = if i > 0 && b[i - 1] == b'\\' {
                i.checked_sub(2).map(|j| b[j])
            } else {
                i.checked_sub(1).map(|j| b[j])
            };
            if prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == b'_' || p == b']') {
                continue;
            }
            let start = if i > 0 && b[i - 1] == b'\\' { i - 1 } else { i };
            if let Some((label, _)) = label_at(&line[start..]) {
                out.push((label.to_owned(), n + 1));
            }
        }
    }
    out
}

/// Lines citing a rule by bare number: "rule" or "rules", then a number, also when a
/// line break (and a comment marker) falls between them.
fn numbered_citations(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        for (i, _) in lower.match_indices("rule") {
            if i > 0 && lower.as_bytes()[i - 1].is_ascii_alphabetic() {
                continue;
            }
            let rest = &lower[i + 4..];
            let rest = rest.strip_prefix('s').unwrap_or(rest);
            let next = if rest.trim().is_empty() {
                // Wrapped: the number may open the next line.
                lines
                    .get(n + 1)
                    .map(|l| comment_text(l).unwrap_or(l.trim_start()).to_owned())
                    .unwrap_or_default()
            } else if let Some(r) = rest.strip_prefix(' ') {
                r.to_owned()
            } else {
                continue;
            };
            if next.starts_with(|c: char| c.is_ascii_digit()) {
                out.push(n + 1);
            }
        }
    }
    out
}

#[test]
fn rules_are_cited_by_defined_labels() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace");
    let mut all = Vec::new();
    files(root, &mut all);
    let this = Path::new(file!()).file_name();
    let mut problems = Vec::new();
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cited = Vec::new();
    for path in &all {
        if path.file_name() == this {
            continue; // its own examples
        }
        let text = std::fs::read_to_string(path).expect("a readable source file");
        let shown = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        for n in numbered_citations(&text) {
            problems.push(format!(
                "{shown}:{n}: a rule cited by number; cite its label"
            ));
        }
        for line in text.lines() {
            let Some(label) = comment_text(line).and_then(leading_label) else {
                continue;
            };
            defined
                .entry(label.to_owned())
                .or_default()
                .push(shown.clone());
            if line.trim_start().starts_with("//!") {
                headers
                    .entry(label.to_owned())
                    .or_default()
                    .push(shown.clone());
            }
        }
        for (label, n) in cited_labels(&text) {
            cited.push((label, format!("{shown}:{n}")));
        }
    }
    for (label, at) in &cited {
        if !defined.contains_key(label) {
            problems.push(format!("{at}: [{label}] is defined by no comment"));
        }
    }
    for (label, at) in &headers {
        let mut at = at.clone();
        at.dedup();
        if at.len() > 1 {
            problems.push(format!(
                "[{label}] is a rule of more than one header: {at:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "rule labels:\n{}", problems.join("\n"));
}

#[test]
fn the_scan_sees_numbers_and_undefined_labels() {
    let text = "//! [IO6] A rule.\n// see rule 6\n/// (rules\n/// 2 and 3)\n/// [IO6], \\[IO6\\]\nlet x = a[N1];\n// Rules [IO6]\n";
    assert_eq!(numbered_citations(text), vec![2, 3]);
    assert_eq!(
        cited_labels(text),
        vec![
            ("IO6".to_owned(), 1),
            ("IO6".to_owned(), 5),
            ("IO6".to_owned(), 5),
            ("IO6".to_owned(), 7)
        ]
    );
    assert_eq!(
        comment_text("//! - [S1] x").and_then(leading_label),
        Some("S1")
    );
    assert_eq!(
        comment_text("    // [K1] pairs").and_then(leading_label),
        Some("K1")
    );
    assert_eq!(
        comment_text("/// \\[FL3\\] x").and_then(leading_label),
        Some("FL3")
    );
    assert_eq!(comment_text("//! [RW4]): x").and_then(leading_label), None);
    assert_eq!(comment_text("// [`Sqe`]").and_then(leading_label), None);
}
