//! The report: a table a person reads in one look, or the same rows as a JSON array.

use std::io::{self, Write};

use aioctx::aio::Stats;

use super::Source;
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
            source,
        }
    }
}

/// The main loop's view, for the "loop" section.
pub struct LoopInfo {
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

/// Prints the table, the "must show" checks, and the loop section.
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
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:>8} {:>10} {:>10} {:>10} {:>12} {:>8} {:>7} {:>10}",
        "scenario",
        "per",
        "ns median",
        "ns min",
        "ns max",
        "syscalls/op",
        "slept/op",
        "source",
        "iterations"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<28} {:>8} {:>10} {:>10} {:>10} {:>12} {:>8} {:>7} {:>10}",
            r.scenario.name(),
            r.scenario.unit(),
            fmt_ns(r.ns.0),
            fmt_ns(r.ns.1),
            fmt_ns(r.ns.2),
            fmt_sys(r.syscalls_per_op),
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
    writeln!(out)?;
    write_checks(out, rows, info.backend)?;
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

/// The "must show" points that this report can check.
fn write_checks(
    out: &mut impl Write,
    rows: &[Row],
    backend: aioctx::aio::Backend,
) -> io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let zero = |r: &Row| r.syscalls_per_op == Some(0.0);
    writeln!(out, "checks")?;
    if let Some(idle) = find(rows, Scenario::KickIdle) {
        let floor = find(rows, Scenario::PeerFenceLoad);
        let ratio = floor.map(|f| idle.ns.0 / f.ns.0);
        let ratio_ok = ratio.is_none_or(|x| x <= 1.5);
        writeln!(
            out,
            "  [{}] kick-idle: {} syscalls/op{}",
            mark(zero(idle) && ratio_ok),
            fmt_sys(idle.syscalls_per_op),
            ratio.map_or_else(String::new, |x| format!(
                ", {x:.2}x peer-fence-load (limit 1.5x)"
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
    Ok(())
}

/// Prints the rows as a JSON array, one object per scenario.
pub fn write_json(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "null".to_owned()
        }
    };
    writeln!(out, "[")?;
    for (i, r) in rows.iter().enumerate() {
        writeln!(
            out,
            "  {{\"scenario\": \"{}\", \"unit\": \"{}\", \"ns_per_op\": {{\"median\": {}, \
             \"min\": {}, \"max\": {}}}, \"syscalls_per_op\": {}, \"slept_per_op\": {}, \
             \"syscall_source\": \"{}\", \"iterations\": {}, \"runs\": {}}}{}",
            r.scenario.name(),
            r.scenario.unit(),
            num(r.ns.0),
            num(r.ns.1),
            num(r.ns.2),
            r.syscalls_per_op
                .map_or_else(|| "null".to_owned(), |x| format!("{x:?}")),
            r.slept_per_op
                .map_or_else(|| "null".to_owned(), |x| format!("{x:?}")),
            r.source,
            r.iterations,
            r.runs,
            if i + 1 < rows.len() { "," } else { "" }
        )?;
    }
    writeln!(out, "]")
}
