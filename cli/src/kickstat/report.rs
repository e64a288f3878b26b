//! The report: a table a person reads in one look, or the same rows as a JSON array.

use std::io::{self, Write};

use aioctx::aio::{AioContext, Stats};
use aioctx::wait::FenceMode;

use crate::schema::{KickstatReport, KickstatRow, LoopStats, Meta, NsPerOp, SyscallSource, finite};

use super::Source;
use super::fence_checks::write_fence_mode;
use super::scenarios::{Sample, Scenario};

/// One scenario's result over all its runs.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub iterations: u64,
    pub runs: usize,
    /// Median, min and max of the per-run ns per op.
    pub ns: (f64, f64, f64),
    /// Total syscalls over total ops of all runs (`None`: not countable here).
    pub syscalls_per_op: Option<f64>,
    /// Voluntary context switches of the sleeping side (the main thread) over total ops
    /// of all runs: ≈ 1.00 when each cycle really slept (`None`: not a sleeper's row).
    pub slept_per_op: Option<f64>,
    /// The rare sides' `membarrier` calls over total ops of all runs (not in
    /// `syscalls_per_op`).
    pub membarriers_per_op: f64,
    pub source: &'static str,
}

impl Row {
    pub fn new(
        scenario: Scenario,
        iterations: u64,
        samples: &[Sample],
        source: &'static str,
    ) -> Self {
        let mut per_op: Vec<f64> = samples.iter().map(|s| s.ns / s.ops as f64).collect();
        per_op.sort_by(f64::total_cmp);
        let median = match per_op.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => per_op[n / 2],
            n => (per_op[n / 2 - 1] + per_op[n / 2]) / 2.0,
        };
        let ops: u64 = samples.iter().map(|s| s.ops).sum();
        let syscalls: Option<u64> = samples.iter().map(|s| s.syscalls).sum();
        let slept: Option<u64> = samples.iter().map(|s| s.slept).sum();
        let membarriers: u64 = samples.iter().map(|s| s.membarriers).sum();
        Self {
            scenario,
            iterations,
            runs: samples.len(),
            ns: (
                median,
                per_op.first().copied().unwrap_or(f64::NAN),
                per_op.last().copied().unwrap_or(f64::NAN),
            ),
            syscalls_per_op: syscalls.map(|s| s as f64 / ops as f64),
            slept_per_op: slept.map(|s| s as f64 / ops as f64),
            membarriers_per_op: membarriers as f64 / ops as f64,
            source,
        }
    }
}

/// The main loop's view, for the "loop" section, and the process's fence mode.
pub struct LoopInfo {
    pub fences: FenceMode,
    pub backend: aioctx::aio::Backend,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub ring_features: aioctx::aio::RingFeatures,
    pub stats: Stats,
}

fn find(rows: &[Row], s: Scenario) -> Option<&Row> {
    rows.iter().find(|r| r.scenario == s)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn fmt_sys(s: Option<f64>) -> String {
    s.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}"))
}

/// Prints the table, the checks of what the numbers must show, and the loop section.
pub fn write_table(
    out: &mut impl Write,
    rows: &[Row],
    source: &Source,
    runs: u32,
    info: &LoopInfo,
) -> io::Result<()> {
    writeln!(
        out,
        "aioctx kickstat — what waking the main loop costs ({runs} runs per scenario)"
    )?;
    writeln!(out, "syscall source: {}", source.detail)?;
    write_fence_mode(out, info.fences)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<29} {:>5} {:>10} {:>10} {:>10} {:>12} {:>8} {:>8} {:>7} {:>10}",
        "scenario",
        "per",
        "ns median",
        "ns min",
        "ns max",
        "syscalls/op",
        "membar/op",
        "slept/op",
        "source",
        "iterations"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<29} {:>5} {:>10} {:>10} {:>10} {:>12} {:>8} {:>8} {:>7} {:>10}",
            r.scenario.name(),
            r.scenario.unit(),
            fmt_ns(r.ns.0),
            fmt_ns(r.ns.1),
            fmt_ns(r.ns.2),
            fmt_sys(r.syscalls_per_op),
            format!("{:.3}", r.membarriers_per_op),
            r.slept_per_op
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.3}")),
            r.source,
            r.iterations
        )?;
    }
    writeln!(
        out,
        "slept/op: voluntary context switches of the thread that waits (the main loop, or \
         the peer's reader) per op; 1.000 = it blocked in the kernel once per cycle"
    )?;
    writeln!(
        out,
        "membar/op: membarrier(2) calls of the fences' rare sides per op, counted apart: \
         syscalls/op leaves them out"
    )?;
    writeln!(out)?;
    write_checks(out, rows, info.backend, info.fences)?;
    writeln!(out)?;
    let s = &info.stats;
    writeln!(out, "loop (main context)")?;
    if info.backend == aioctx::aio::Backend::IoUring {
        writeln!(
            out,
            "  backend io_uring; ring {} SQ / {} CQ entries; features EXT_ARG (timed waits in \
             one io_uring_enter) + NODROP (no lost CQE)",
            info.sq_entries, info.cq_entries
        )?;
        writeln!(out, "  ring setup flags: {}", info.ring_features)?;
    } else {
        writeln!(
            out,
            "  backend {} (io_uring unavailable or not chosen): waits are epoll_wait, the woken \
             loop reads the eventfd with read(2)",
            info.backend
        )?;
    }
    writeln!(
        out,
        "  stats() over this report: {} polls, {} sleeps, {} kernel enters, {} notifies, \
         {} eventfd writes, {} BHs run, {} CQEs",
        s.polls, s.sleeps, s.enters, s.notifies, s.eventfd_writes, s.bhs_run, s.cqes
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Absolute times vary by machine; the ratios and the syscall counts carry over."
    )
}

/// The claims this report can check: syscall counts per kick, the sleeper really
/// sleeping, the cost next to its floor.
fn write_checks(
    out: &mut impl Write,
    rows: &[Row],
    backend: aioctx::aio::Backend,
    fences: FenceMode,
) -> io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let zero = |r: &Row| r.syscalls_per_op == Some(0.0);
    writeln!(out, "checks")?;
    if let Some(idle) = find(rows, Scenario::KickIdle) {
        let floor = find(rows, Scenario::PeerFenceLoad);
        let ratio = floor.map(|f| idle.ns.0 / f.ns.0);
        // Asymmetric: a compiler fence instead of the floor's SeqCst fence.
        let limit = if fences == FenceMode::Asymmetric {
            0.4
        } else {
            1.5
        };
        let ratio_ok = ratio.is_none_or(|x| x <= limit);
        writeln!(
            out,
            "  [{}] kick-idle: {} syscalls/op{}",
            mark(zero(idle) && ratio_ok),
            fmt_sys(idle.syscalls_per_op),
            ratio.map_or_else(String::new, |x| format!(
                ", {x:.2}x peer-fence-load (limit {limit}x with {fences} fences)"
            ))
        )?;
    }
    if let Some(busy) = find(rows, Scenario::KickBusy) {
        writeln!(
            out,
            "  [{}] kick-busy: {} syscalls/op (a kick to an awake loop makes none)",
            mark(zero(busy)),
            fmt_sys(busy.syscalls_per_op)
        )?;
    }
    for (scenario, who) in [
        (Scenario::KickSleeping, "the kicker's eventfd write"),
        (Scenario::NotifySleeping, "the notifier's eventfd write"),
    ] {
        let Some(sleeping) = find(rows, scenario) else {
            continue;
        };
        let floor = find(rows, Scenario::PeerEventfdPingpong)
            .map(|f| {
                format!(
                    "; {:.2}x the peer-eventfd-pingpong cycle (a blocked read(2) woken by a \
                     write, timed the same way)",
                    sleeping.ns.0 / f.ns.0
                )
            })
            .unwrap_or_default();
        let (limit, why) = if backend == aioctx::aio::Backend::IoUring {
            (
                2.0,
                "+ the sleeper's io_uring_enter; QEMU pays 3: write, ppoll, read",
            )
        } else {
            (
                3.0,
                "+ the sleeper's epoll_wait and read (epoll fallback), as QEMU's write, \
                 ppoll, read",
            )
        };
        let slept = sleeping.slept_per_op;
        writeln!(
            out,
            "  [{}] {}: {} syscalls/cycle counted by {} (limit {limit}: {who} {why}); the loop \
             slept {} times/cycle (must be ~1: each wake-up found it blocked in the kernel){floor}",
            mark(
                sleeping.syscalls_per_op.is_some_and(|s| s <= limit)
                    && slept.is_some_and(|s| s >= 0.9)
            ),
            scenario.name(),
            fmt_sys(sleeping.syscalls_per_op),
            sleeping.source,
            slept.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}")),
        )?;
    }
    if let (Some(always), Some(pre_fix)) = (
        find(rows, Scenario::RdlockPairAlways),
        find(rows, Scenario::RdlockPairWhenWriterSeen),
    ) {
        let peer = |s| {
            find(rows, s).map_or_else(String::new, |p: &Row| {
                format!(", {:.2}x {}", always.ns.0 / p.ns.0, s.name())
            })
        };
        writeln!(
            out,
            "  [info] rdlock pair without a writer: always-kick (the e3082ab3b3 fix) is {:.2}x \
             the pre-fix unlock{}{}; {} syscalls/pair",
            always.ns.0 / pre_fix.ns.0,
            peer(Scenario::PeerStdRwlockRead),
            peer(Scenario::PeerParkingLotRead),
            fmt_sys(always.syscalls_per_op)
        )?;
    }
    super::fence_checks::write(out, rows, fences)
}

/// Prints the report as one JSON object: [`KickstatReport`].
pub fn write_json(
    out: &mut impl Write,
    rows: &[Row],
    source: &Source,
    runs: u32,
    main: &AioContext,
    fences: FenceMode,
) -> io::Result<()> {
    let report = KickstatReport {
        meta: Meta::collect("kickstat", main),
        syscall_source: SyscallSource {
            name: source.name.to_owned(),
            detail: source.detail.clone(),
        },
        runs,
        rows: rows
            .iter()
            .map(|r| KickstatRow {
                scenario: r.scenario.name().to_owned(),
                unit: r.scenario.unit().to_owned(),
                ns_per_op: NsPerOp {
                    median: finite(r.ns.0),
                    min: finite(r.ns.1),
                    max: finite(r.ns.2),
                },
                syscalls_per_op: r.syscalls_per_op.and_then(finite),
                slept_per_op: r.slept_per_op.and_then(finite),
                membarriers_per_op: finite(r.membarriers_per_op),
                fence_mode: fences.to_string(),
                syscall_source: r.source.to_owned(),
                iterations: r.iterations,
                runs: r.runs,
            })
            .collect(),
        loop_stats: LoopStats::from(&main.stats()),
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
