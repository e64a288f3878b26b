//! Replays the committed `io_ops` fuzz corpus (`fuzz/corpus/io_ops/`) through the check
//! the fuzz target calls, on each back end: the one this run selects (io_uring, or
//! whatever `AIOCTX_BACKEND` says; epoll where io_uring is unavailable) and epoll; then
//! proptests over the same `run`, and hand-written sequences of the interleavings the
//! model singles out.
#![cfg(not(loom))]

use aioctx_aio::{BACKEND_ENV, Backend};
use aioctx_fuzzcheck::decode_each;
use aioctx_fuzzcheck::io_ops::{self, Kind, Limit, Op, Ring};
use proptest::prelude::*;

/// The back ends every input runs on: the selected one, and epoll unless that is it.
fn backends() -> Vec<Backend> {
    if std::env::var(BACKEND_ENV).is_ok_and(|v| v == "epoll") {
        vec![Backend::Epoll]
    } else {
        vec![Backend::Auto, Backend::Epoll]
    }
}

#[test]
fn corpus_io_ops_replays_on_each_backend() {
    let corpus = aioctx_fuzzcheck::corpus("io_ops");
    for backend in backends() {
        for (f, data) in &corpus {
            eprintln!("replay {} on {backend:?}", f.display());
            io_ops::run_bytes_on(backend, data);
        }
    }
}

/// Runs `ops` on each back end, and on io_uring with each ring setup.
fn run_each(ops: &[Op]) {
    for backend in backends() {
        for ring in [
            Ring::Plain,
            Ring::DeferTaskrun,
            Ring::CoopTaskrun,
            Ring::SingleIssuer,
        ] {
            io_ops::run(backend, ring, ops);
            if backend == Backend::Epoll {
                break;
            }
        }
    }
}

const IDLE: Kind = Kind::PipeRead { pipe: 0, len: 8 };

/// A read on a pipe nobody wrote to, cancelled, dropped, timed out (a zero deadline, a
/// zero `timeout`) and left to the context's drop: each resolves as the model says, and
/// data fed afterwards stays in the pipe for the next read.
#[test]
fn idle_pipe_reads_resolve_by_cancel_deadline_timeout_and_context_drop() {
    use Op::*;
    run_each(&[
        Submit(IDLE, Limit::None),
        Poll(0),
        Cancel(0),
        Feed { pipe: 0, len: 3 },
        Wait(0),
        Submit(IDLE, Limit::None),
        Wait(0),
        Submit(IDLE, Limit::DeadlineZero),
        Wait(0),
        Spawn(Kind::PipeRead { pipe: 1, len: 8 }, Limit::TimeoutZero),
        Wait(0),
        Submit(Kind::PipeRead { pipe: 1, len: 2 }, Limit::DeadlineNever),
        Poll(0),
        Drop(0),
        Feed { pipe: 1, len: 5 },
        Spawn(Kind::PipeRead { pipe: 1, len: 4 }, Limit::None),
        Wait(0),
        Submit(Kind::PipeRead { pipe: 1, len: 4 }, Limit::None),
        Poll(0),
        DropContext,
    ]);
}

/// File operations, pipe writes and no-ops cancelled right after their submission, with
/// zero deadlines and in tasks, then the context dropped with some of them unpolled.
#[test]
fn file_and_sink_operations_race_their_cancels_and_the_context_drop() {
    use Op::*;
    let write = Kind::FileWrite { off: 3, len: 40 };
    let read = Kind::FileRead { off: 2, len: 63 };
    run_each(&[
        Submit(write, Limit::None),
        Submit(read, Limit::DeadlineZero),
        Spawn(Kind::PipeWrite { len: 20 }, Limit::TimeoutZero),
        Submit(Kind::Nop, Limit::None),
        Poll(0),
        Poll(1),
        Cancel(0),
        Cancel(3),
        PollCtx,
        Wait(0),
        Wait(1),
        Wait(2),
        Wait(3),
        Submit(Kind::FileWrite { off: 4, len: 10 }, Limit::None),
        Submit(Kind::PipeWrite { len: 63 }, Limit::DeadlineNever),
        Spawn(read, Limit::None),
        Poll(1),
        DropContext,
        Wait(0),
    ]);
}

fn ops() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..12), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_io_ops(chunks in ops()) {
        run_each(&decode_each(&chunks));
    }
}

/// Reads on a pipe that has data, dropped or cancelled after their submission (at home
/// and from a second thread) before their result was taken: what each consumed (its
/// freed buffer says) must be exactly what the next read misses.
#[test]
fn reads_dropped_with_data_available_consume_a_prefix_or_nothing() {
    use Op::*;
    let read = Kind::PipeRead { pipe: 1, len: 5 };
    for _ in 0..4 {
        run_each(&[
            Feed { pipe: 1, len: 9 },
            Feed { pipe: 1, len: 2 },
            Submit(read, Limit::None),
            Poll(0),
            Drop(0),
            PollCtx,
            Submit(read, Limit::None),
            Poll(0),
            PollCtx,
            Feed { pipe: 1, len: 3 },
            RemoteDrop(0),
            Wait(1),
            Spawn(read, Limit::None),
            PollCtx,
            Feed { pipe: 1, len: 4 },
            RemoteCancel(0),
            Wait(0),
            Submit(read, Limit::DeadlineZero),
            Poll(0),
            Cancel(0),
            Feed { pipe: 1, len: 1 },
            Wait(0),
            Submit(Kind::PipeRead { pipe: 1, len: 31 }, Limit::None),
            Wait(0),
        ]);
    }
}

/// A read waiting in the kernel (or the stream table) on an empty pipe, dropped or
/// cancelled on the home thread: data fed afterwards stays in the pipe, and the next
/// read gets all of it.
#[test]
fn data_fed_after_a_waiting_read_was_dropped_or_cancelled_reaches_the_next_read() {
    use Op::*;
    let read = Kind::PipeRead { pipe: 0, len: 31 };
    for limit in [Limit::None, Limit::DeadlineNever] {
        run_each(&[
            Submit(read, limit),
            Poll(0),
            PollCtx,
            Drop(0),
            Feed { pipe: 0, len: 4 },
            PollCtx,
            Submit(read, limit),
            Poll(0),
            PollCtx,
            Cancel(0),
            Feed { pipe: 0, len: 5 },
            PollCtx,
            Wait(0),
            Spawn(read, limit),
            Wait(0),
        ]);
    }
}
