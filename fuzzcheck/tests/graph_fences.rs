//! The graph_lock corpus again in both fence modes. The mode is process-wide and chosen
//! once, so each mode gets a child process: this binary run again on its `child` test
//! with `AIOCTX_FENCES` set (`child` does nothing in a normal run).
#![cfg(not(loom))]

use std::path::PathBuf;

use aioctx_fuzzcheck::graph;

const CHILD: &str = "AIOCTX_FUZZ_GRAPH_FENCES_CHILD";

/// The child side: replays the corpus in the mode `AIOCTX_FENCES` chose.
#[test]
fn child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/graph_lock");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("read a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        graph::run_bytes(&std::fs::read(f).unwrap());
    }
    println!(
        "replayed {} inputs with {} fences",
        files.len(),
        aioctx_wait::fence_mode()
    );
}

#[test]
fn corpus_graph_lock_replays_in_both_fence_modes() {
    for (mode, text) in
        aioctx_testkit::rerun_in_each_fence_mode(CHILD, &["--exact", "child", "--nocapture"])
    {
        assert!(
            text.contains(&format!("with {mode} fences")),
            "AIOCTX_FENCES={mode}:\n{text}"
        );
    }
}
