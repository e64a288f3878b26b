//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same
//! check function the fuzz targets call, then runs proptests over the same `run(ops)`:
//! CI covers the fuzz targets without libFuzzer.
#![cfg(not(loom))]

use std::path::PathBuf;

use aioctx_fuzzcheck::{bh, decode_each, graph, timers};
use proptest::prelude::*;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("read a corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {} has only {} files",
        dir.display(),
        files.len()
    );
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("replay {}", f.display());
        run(&data);
    }
}

#[test]
fn corpus_bh_schedule_replays() {
    replay("bh_schedule", bh::run_bytes);
}

#[test]
fn corpus_timers_replays() {
    replay("timers", timers::run_bytes);
}

#[test]
fn corpus_graph_lock_replays() {
    replay("graph_lock", graph::run_bytes);
}

fn ops() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 0..48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_bh_schedule(chunks in ops()) {
        bh::run(&decode_each(&chunks));
    }

    #[test]
    fn proptest_timers(chunks in ops()) {
        timers::run(&decode_each(&chunks));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_graph_lock(chunks in ops()) {
        graph::run(&decode_each(&chunks));
    }
}

#[test]
fn regress_fuzz_bh_rescheduled_then_nested_poll_is_not_lost() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(0), Action::NestedPoll]),
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
    ]);
}

/// A BH reschedules itself, reaches itself in a nested poll (deferred by rule 7), then
/// panics: the deferred schedule must survive the unwind and run at the next poll.
#[test]
fn regress_fuzz_bh_deferred_schedule_survives_a_panic() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(0), Action::NestedPoll, Action::Panic]),
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
        Op::Poll,
    ]);
}

/// A panic three polls deep leaves the rest of every slice for the next poll, and the
/// callbacks it unwound through run again when scheduled.
#[test]
fn regress_fuzz_bh_panic_in_nested_poll_keeps_the_slices() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(1), Action::NestedPoll]),
        Op::New(vec![Action::Schedule(2), Action::NestedPoll]),
        Op::New(vec![Action::Panic]),
        Op::New(vec![]),
        Op::Schedule(0),
        Op::Schedule(3),
        Op::Poll,
        Op::Poll,
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
    ]);
}

/// A hand-written graph-lock sequence: readers on two contexts, nested read locks, the
/// writer racing their unlocks, readers blocked behind the writer, then moved to other
/// contexts with their locks held (the per-context counts wrap; only the sum counts).
#[test]
fn graph_lock_writer_races_unlocks_then_readers_move_with_locks_held() {
    use graph::Op::*;
    for _ in 0..20 {
        graph::run(&[
            Spawn(1),
            Spawn(0),
            RdLock(0),
            RdLock(1),
            RdLock(1),
            WrLock,
            RdLock(0),
            RdLock(1),
            WrUnlock,
            Move(0, 2),
            Move(1, 1),
            RdUnlock(0),
            WrLock,
            WrUnlock,
            Exit(0),
        ]);
    }
}
