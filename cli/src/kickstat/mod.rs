//! `aioctx kickstat`: what waking the main loop costs, in nanoseconds and in syscalls,
//! next to the peers that bound it.
//!
//! Syscalls are counted by the kernel when it lets us — `perf_event_open` on the
//! `raw_syscalls:sys_enter` tracepoint, for the whole process: the counter is opened
//! on the main thread before any other thread exists and is inherited by every thread
//! spawned later — and otherwise by the library's own `stats()` counters
//! (`syscall_source: "self"`).
//!
//! The process's fence mode (aioctx-wait's `FenceMode`, chosen once by `main` from
//! `--fences` or `AIOCTX_FENCES`) is in the header and in every JSON row; the rare
//! sides' `membarrier` calls are counted apart from the syscalls (`membar/op`). The other
//! mode needs another process: `aioctx kickstat --fences MODE`.

pub mod scenarios;

mod fence_checks;
mod fences;
mod harness;
mod peers;
mod report;

use std::io::{self, Write};
use std::sync::Arc;

use aioctx::aio::{AioContext, main_context};
use aioctx::wait::fence_mode;

use crate::cli::{KickstatOptions, SourceChoice};
use crate::progress::Progress;
use crate::sys::SyscallCounter;
use crate::thread_probe::ThreadProbe;
use report::{LoopInfo, Row};
use scenarios::{Sample, Scenario};

/// What every scenario measures with.
pub struct Env {
    /// The kernel's syscall counter, when permitted.
    counter: Option<SyscallCounter>,
    /// The main context; its home is the calling (main) thread.
    main: &'static Arc<AioContext>,
    /// The main thread, seen through procfs: whether it sleeps, and how often it did.
    main_probe: Arc<ThreadProbe>,
}

/// Where the syscall counts of a report came from, and why.
#[derive(Debug, Clone)]
pub struct Source {
    /// `"kernel"` or `"self"`.
    pub name: &'static str,
    /// A sentence for the report.
    pub detail: String,
}

/// Runs the report and prints it to stdout: a table, or with `json` the
/// [`KickstatReport`](crate::schema::KickstatReport) schema.
///
/// # Errors
/// `--syscall-source kernel` when the kernel cannot count; a write error on stdout.
pub fn run(opts: &KickstatOptions, json: bool) -> io::Result<()> {
    let scenarios = opts.scenarios();
    // First, while this is the only thread: the counter must be opened before any
    // other thread exists to count them all.
    let (counter, source) = open_counter(opts.source)?;
    let main = main_context();
    main.make_current();
    let main_probe = Arc::new(ThreadProbe::current()?);
    let env = Env {
        counter,
        main,
        main_probe,
    };

    let progress = Progress::new(true);
    let iterations = |s: Scenario| opts.iterations.unwrap_or_else(|| s.default_iterations());
    // Warm-up: first-use allocations and page faults stay out of the runs.
    for (i, &scenario) in scenarios.iter().enumerate() {
        progress.show(&format!(
            "warm-up {}/{}: {}",
            i + 1,
            scenarios.len(),
            scenario.name()
        ));
        scenario.run(&env, (iterations(scenario) / 10).max(1));
    }
    // Runs go round the scenarios, so that a burst of noise from the rest of the
    // machine spreads over all of them instead of skewing one.
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for r in 0..opts.runs {
        for (i, &scenario) in scenarios.iter().enumerate() {
            progress.show(&format!("run {}/{}: {}", r + 1, opts.runs, scenario.name()));
            samples[i].push(scenario.run(&env, iterations(scenario)));
        }
    }
    let rows: Vec<Row> = scenarios
        .iter()
        .zip(&samples)
        .map(|(&s, samples)| Row::new(s, iterations(s), samples, source.name))
        .collect();
    progress.clear();

    let mut out = io::stdout().lock();
    // Chosen by `main` before anything ran (the `--fences` flag or the environment).
    let fences = fence_mode();
    if json {
        report::write_json(&mut out, &rows, &source, opts.runs, main, fences)?;
    } else {
        let (sq, cq) = main.ring_entries();
        let info = LoopInfo {
            fences,
            backend: main.backend(),
            sq_entries: sq,
            cq_entries: cq,
            ring_features: main.ring_features(),
            stats: main.stats(),
        };
        report::write_table(&mut out, &rows, &source, opts.runs, &info)?;
    }
    out.flush()
}

fn open_counter(choice: SourceChoice) -> io::Result<(Option<SyscallCounter>, Source)> {
    let fallback = |why: String| Source {
        name: "self",
        detail: format!(
            "self — the library's stats() counters (eventfd writes + io_uring_enter or epoll_wait calls + eventfd reads) \
             for aioctx scenarios, and the syscalls peers make by construction ({why})"
        ),
    };
    if choice == SourceChoice::SelfCount {
        return Ok((
            None,
            fallback("chosen with --syscall-source self".to_owned()),
        ));
    }
    match SyscallCounter::open() {
        Ok(counter) => Ok((
            Some(counter),
            Source {
                name: "kernel",
                detail: "kernel — perf_event_open on raw_syscalls:sys_enter, whole process, \
                         all threads"
                    .to_owned(),
            },
        )),
        Err(e) if choice == SourceChoice::Kernel => Err(io::Error::new(
            e.kind(),
            format!("the kernel cannot count syscalls here: {e}"),
        )),
        Err(e) => Ok((None, fallback(format!("the kernel cannot count here: {e}")))),
    }
}
