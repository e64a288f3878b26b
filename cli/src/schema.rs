//! The JSON every command prints with `--json`: one typed schema per command, each an
//! object with a [`Meta`] section that says what produced it, so that two runs can be
//! compared knowing what differed. README.md documents the fields.
//!
//! Numbers that could not be measured (a syscall count where the kernel cannot count,
//! a median of no runs) are `null`, never a sentinel.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use aioctx::aio::{AioContext, Backend, Stats};

/// The version of these schemas; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// What produced a report: the program, the machine, the loop and the time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `"aioctx"`.
    pub tool: String,
    /// The command: `"kickstat"` or `"stress"`.
    pub command: String,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The aioctx version that ran.
    pub crate_version: String,
    /// The git commit it was built from, when built from a checkout.
    pub git_commit: Option<String>,
    /// The kernel's release (`uname -r`).
    pub kernel: String,
    /// The CPU's model name, when /proc/cpuinfo says it.
    pub cpu_model: Option<String>,
    /// CPUs this process may run on.
    pub cores: usize,
    /// The main context's back end: `"io_uring"` or `"epoll"`.
    pub backend: String,
    /// The main context's ring, on io_uring.
    pub ring: Option<RingMeta>,
    /// The process's fence mode (`"symmetric"` or `"asymmetric"`); `null` when it
    /// could not be chosen.
    pub fence_mode: Option<String>,
    /// When the report was made, RFC 3339 in UTC, to the second.
    pub utc_time: String,
}

/// The main context's ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingMeta {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// The kernel features the loop relies on.
    pub features: Vec<String>,
    /// The setup flags the ring was created with (`"none"`, or names joined by `+`,
    /// e.g. `"SINGLE_ISSUER+DEFER_TASKRUN"`).
    pub setup_flags: String,
}

impl Meta {
    /// Describes this process, `command` and the context `ctx` (the main one).
    pub fn collect(command: &str, ctx: &AioContext) -> Self {
        let backend = ctx.backend();
        let ring = (backend == Backend::IoUring).then(|| {
            let (sq_entries, cq_entries) = ctx.ring_entries();
            RingMeta {
                sq_entries,
                cq_entries,
                // The loop refuses a ring without them, so they are on whenever the back
                // end is io_uring.
                features: vec!["EXT_ARG".to_owned(), "NODROP".to_owned()],
                setup_flags: ctx.ring_features().to_string(),
            }
        });
        Self {
            tool: "aioctx".to_owned(),
            command: command.to_owned(),
            schema_version: SCHEMA_VERSION,
            crate_version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: option_env!("AIOCTX_GIT_COMMIT").map(str::to_owned),
            kernel: kernel_release(),
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backend: backend.to_string(),
            ring,
            fence_mode: aioctx::wait::try_fence_mode().ok().map(|m| m.to_string()),
            utc_time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

fn kernel_release() -> String {
    // SAFETY: `utsname` is plain old data; all zeroes is a valid value for uname(2) to
    // overwrite.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the duration of the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `aioctx kickstat --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KickstatReport {
    /// What produced it.
    pub meta: Meta,
    /// Where the syscall counts came from.
    pub syscall_source: SyscallSource,
    /// Runs per scenario.
    pub runs: u32,
    /// One row per scenario, in report order.
    pub rows: Vec<KickstatRow>,
    /// The main loop's counters over the whole report.
    pub loop_stats: LoopStats,
}

/// Where the syscall counts came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyscallSource {
    /// `"kernel"` (perf_event_open) or `"self"` (the library's counters).
    pub name: String,
    /// Why, in a sentence.
    pub detail: String,
}

/// One scenario's result over all its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KickstatRow {
    /// The scenario's name, as `--scenario` takes it.
    pub scenario: String,
    /// What one operation is: `"op"`, `"cycle"` or `"pair"`.
    pub unit: String,
    /// Nanoseconds per operation over the runs.
    pub ns_per_op: NsPerOp,
    /// Syscalls per operation (`null`: not countable here).
    pub syscalls_per_op: Option<f64>,
    /// Voluntary context switches of the waiting thread per operation (`null`: the
    /// scenario has no waiting thread).
    pub slept_per_op: Option<f64>,
    /// The fences' rare sides' `membarrier(2)` calls per operation, counted apart from
    /// `syscalls_per_op`.
    pub membarriers_per_op: Option<f64>,
    /// The process's fence mode: `"symmetric"` or `"asymmetric"`.
    pub fence_mode: String,
    /// `"kernel"` or `"self"`.
    pub syscall_source: String,
    /// Iterations per run.
    pub iterations: u64,
    /// Runs measured.
    pub runs: usize,
}

/// Median, min and max nanoseconds per operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NsPerOp {
    /// Median over the runs.
    pub median: Option<f64>,
    /// Fastest run.
    pub min: Option<f64>,
    /// Slowest run.
    pub max: Option<f64>,
}

/// The main loop's `stats()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopStats {
    /// Calls to `poll`.
    pub polls: u64,
    /// Polls that blocked in the kernel.
    pub sleeps: u64,
    /// Kernel enters (io_uring_enter or epoll_wait).
    pub enters: u64,
    /// Calls to `notify`.
    pub notifies: u64,
    /// Eventfd writes made by notifies.
    pub eventfd_writes: u64,
    /// Eventfd reads by the loop.
    pub eventfd_reads: u64,
    /// Bottom halves run.
    pub bhs_run: u64,
    /// Completions reaped.
    pub cqes: u64,
}

impl From<&Stats> for LoopStats {
    fn from(s: &Stats) -> Self {
        Self {
            polls: s.polls,
            sleeps: s.sleeps,
            enters: s.enters,
            notifies: s.notifies,
            eventfd_writes: s.eventfd_writes,
            eventfd_reads: s.eventfd_reads,
            bhs_run: s.bhs_run,
            cqes: s.cqes,
        }
    }
}

/// `aioctx stress --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StressReport {
    /// What produced it.
    pub meta: Meta,
    /// The rdunlock policy: `"always"` or `"when-writer-seen"`.
    pub unlock_kick: String,
    /// Reader iothreads.
    pub iothreads: u64,
    /// CPU pressure threads.
    pub pressure: usize,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: StressOutcome,
}

/// How a stress run ended; the `result` field names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum StressOutcome {
    /// Every write-lock cycle finished.
    Completed {
        /// Write-lock cycles done.
        cycles: u64,
        /// Read lock/unlock pairs the readers did.
        reader_cycles: u64,
        /// Times the writer slept waiting for readers.
        writer_sleeps: u64,
        /// Wall time of the cycles.
        seconds: f64,
    },
    /// The watchdog saw no finished cycle for its limit (exit code 3).
    WriterStuck {
        /// Cycles done before it stuck.
        cycles_done: u64,
        /// The lock's `has_writer` flag.
        has_writer: bool,
        /// Waiters registered with `wait_while`.
        num_waiters: u32,
        /// Read locks held.
        readers: u32,
        /// Whether the main loop sleeps in the kernel.
        main_loop_asleep: bool,
        /// Seconds without progress.
        seconds_stuck: u64,
        /// Whether this is the e3082ab3b3 state: no reader, a waiter asleep, no
        /// `has_writer` — the last reader skipped its kick.
        missed_wakeup: bool,
    },
}

/// A finite number, or `null`.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            tool: "aioctx".into(),
            command: "stress".into(),
            schema_version: SCHEMA_VERSION,
            crate_version: "0.1.0".into(),
            git_commit: None,
            kernel: "6.1.0".into(),
            cpu_model: Some("a \"quoted\" \\ model".into()),
            cores: 2,
            backend: "io_uring".into(),
            ring: Some(RingMeta {
                sq_entries: 128,
                cq_entries: 256,
                features: vec!["EXT_ARG".into()],
                setup_flags: "none".into(),
            }),
            fence_mode: None,
            utc_time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn stress_reports_round_trip_with_their_result_tag() {
        for outcome in [
            StressOutcome::Completed {
                cycles: 3,
                reader_cycles: 9,
                writer_sleeps: 2,
                seconds: 0.5,
            },
            StressOutcome::WriterStuck {
                cycles_done: 7,
                has_writer: false,
                num_waiters: 1,
                readers: 0,
                main_loop_asleep: true,
                seconds_stuck: 2,
                missed_wakeup: true,
            },
        ] {
            let r = StressReport {
                meta: meta(),
                unlock_kick: "always".into(),
                iothreads: 4,
                pressure: 2,
                outcome,
            };
            let text = serde_json::to_string(&r).unwrap();
            assert!(
                text.contains("\"result\":\"completed\"")
                    || text.contains("\"result\":\"writer-stuck\""),
                "{text}"
            );
            assert_eq!(serde_json::from_str::<StressReport>(&text).unwrap(), r);
        }
    }

    #[test]
    fn meta_collects_this_machine() {
        let ctx = AioContext::new().unwrap();
        let m = Meta::collect("kickstat", &ctx);
        assert!(!m.kernel.is_empty() && m.kernel != "unknown", "{m:?}");
        assert!(m.cores >= 1);
        assert_eq!(m.backend, ctx.backend().to_string());
        assert_eq!(m.ring.is_some(), ctx.backend() == Backend::IoUring);
        assert!(m.utc_time.ends_with('Z'), "{}", m.utc_time);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Meta>(&text).unwrap(), m);
    }
}
