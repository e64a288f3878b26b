//! The report's lines about the fence mode: the header line naming it, and the checks
//! of the targets that depend on it (the read lock's fast path against its peers, its
//! scaling over contexts, and what the rare sides cost).

use std::io::{self, Write};

use aioctx::wait::FenceMode;

use super::report::Row;
use super::scenarios::Scenario;

fn find(rows: &[Row], s: Scenario) -> Option<&Row> {
    rows.iter().find(|r| r.scenario == s)
}

fn other(fences: FenceMode) -> FenceMode {
    match fences {
        FenceMode::Asymmetric => FenceMode::Symmetric,
        _ => FenceMode::Asymmetric,
    }
}

/// The header line: which mode this process runs, what it means, how to get the other.
pub(super) fn write_fence_mode(out: &mut impl Write, fences: FenceMode) -> io::Result<()> {
    let what = match fences {
        FenceMode::Asymmetric => {
            "kick and graph read lock: compiler fence; wait_while registration and the \
             writer's [W1]: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)"
        }
        _ => "a SeqCst fence on both sides (kick / read lock, and wait_while / wrlock)",
    };
    writeln!(
        out,
        "fence mode: {fences} — {what}. Chosen once per process (--fences, else \
         AIOCTX_FENCES, else auto); the other mode's rows: aioctx kickstat --fences {}",
        other(fences)
    )
}

/// The fence-dependent checks, after the report's own.
pub(super) fn write(out: &mut impl Write, rows: &[Row], fences: FenceMode) -> io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let asymmetric = fences == FenceMode::Asymmetric;
    if let Some(always) = find(rows, Scenario::RdlockPairAlways) {
        let limit = if asymmetric { 0.5 } else { 1.2 };
        for peer in [Scenario::PeerStdRwlockRead, Scenario::PeerParkingLotRead] {
            if let Some(p) = find(rows, peer) {
                let r = always.ns.0 / p.ns.0;
                writeln!(
                    out,
                    "  [{}] rdlock-pair-always: {r:.2}x {} (limit {limit}x with {fences} fences)",
                    mark(r <= limit),
                    peer.name()
                )?;
            }
        }
        if let Some(pre) = find(rows, Scenario::RdlockPairWhenWriterSeen) {
            let r = always.ns.0 / pre.ns.0;
            writeln!(
                out,
                "  [{}] rdlock-pair-always: {r:.2}x rdlock-pair-when-writer-seen (limit 1.05x: \
                 the e3082ab3b3 fix stays free)",
                mark(r <= 1.05)
            )?;
        }
    }
    if let (Some(one), Some(two)) = (
        find(rows, Scenario::RdlockPair1Context),
        find(rows, Scenario::RdlockPair2Contexts),
    ) {
        let r = two.ns.0 / one.ns.0;
        writeln!(
            out,
            "  [{}] rdlock-pair-2-contexts: {r:.2}x rdlock-pair-1-context per thread (limit \
             1.1x: no shared cache line; needs two idle CPUs to mean anything)",
            mark(r <= 1.1)
        )?;
    }
    let fence = find(rows, Scenario::PeerFenceLoad).map(|f| f.ns.0);
    let rare: Vec<String> = [
        Scenario::WaitWhileRegister,
        Scenario::WrlockPair0Busy,
        Scenario::WrlockPair1Busy,
        Scenario::WrlockPair3Busy,
    ]
    .into_iter()
    .filter_map(|s| find(rows, s))
    .map(|r| {
        format!(
            "{} {:.0} ns ({:.2} membarrier/op{})",
            r.scenario.name(),
            r.ns.0,
            r.membarriers_per_op,
            fence.map_or_else(String::new, |f| format!(
                ", = {:.0} SeqCst fences",
                r.ns.0 / f
            ))
        )
    })
    .collect();
    if !rare.is_empty() {
        writeln!(
            out,
            "  [info] rare sides with {fences} fences: {}. The trade-off: asymmetric fences \
             pay off while a process makes more kicks and read locks per wait_while or \
             wrlock than a rare side costs in SeqCst fences",
            rare.join("; ")
        )?;
    }
    Ok(())
}
