//! Command-line parsing for `aioctx`, on clap's derive API: `--version`, help per
//! command, value lists in the help, suggestions on typos, global flags in any position.
//!
//! Exit codes: 0 done, 1 the command failed at run time, 2 a usage error (clap's own
//! code for one, kept for every error of ours that is the caller's), 3 `stress` detected
//! a hang.

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use aioctx::graph::UnlockKick;
use aioctx::wait::FenceMode;

use crate::kickstat::scenarios::Scenario;

/// The exit code of a command that failed at run time (a thread the system refused, a
/// write error).
pub const EXIT_FAILURE: u8 = 1;
/// The exit code of a usage error.
pub const EXIT_USAGE: u8 = 2;
/// The exit code of `stress` when its watchdog saw the writer stuck.
pub const EXIT_HANG: u8 = 3;

/// `aioctx`: what waking QEMU's main loop costs, and a stress of the graph lock's
/// wake-up. With no command it runs `kickstat`.
#[derive(Debug, Parser)]
#[command(
    name = "aioctx",
    version,
    about = "The kick-cost report (kickstat, the default) and the graph-lock stress of aioctx",
    after_help = "Exit codes: 0 done, 1 the command failed (e.g. a thread could not be \
                  started), 2 usage error (or the main context cannot be created), 3 stress \
                  detected a hang.\nEnvironment: AIOCTX_BACKEND=io_uring|epoll|auto \
                  chooses the event loop's back end; AIOCTX_RING_SETUP=defer_taskrun (io_uring \
                  setup flags joined by +, or none) sets up every ring with those flags."
)]
pub struct Cli {
    /// Print JSON (one object with a `meta` section) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The process's fence mode, chosen once before anything runs: auto (as
    /// AIOCTX_FENCES says, else asymmetric where membarrier works), symmetric or
    /// asymmetric.
    #[arg(long, global = true, value_name = "MODE", value_enum, default_value_t)]
    pub fences: Fences,
    /// The command; `kickstat` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// kickstat's options, when no command is named (`aioctx --runs 3`).
    #[command(flatten)]
    pub kickstat: KickstatOptions,
}

/// What the user asked for.
#[derive(Debug, Subcommand, PartialEq)]
pub enum Command {
    /// Measure what a kick costs, in ns and in syscalls, next to its peers (the default).
    Kickstat(KickstatOptions),
    /// Iothreads take and drop the graph read lock while the main thread takes and drops
    /// the write lock; a watchdog turns a hang into exit code 3.
    Stress(StressOptions),
}

/// Where syscall counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SourceChoice {
    /// The kernel's counter when permitted, else the library's own counters.
    #[default]
    Auto,
    /// The kernel's counter (perf_event_open), or fail.
    Kernel,
    /// The library's own `stats()` counters.
    #[value(name = "self")]
    SelfCount,
}

/// `aioctx kickstat` options.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct KickstatOptions {
    /// Run only this scenario (repeatable; default: all, in report order).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<Scenario>,
    /// Iterations per run for every scenario (default: per scenario).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Runs per scenario; ns/op is the median, min and max over them.
    #[arg(long, value_name = "R", default_value_t = 11,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Where syscall counts come from.
    #[arg(
        long = "syscall-source",
        value_name = "SRC",
        value_enum,
        default_value_t
    )]
    pub source: SourceChoice,
}

impl Default for KickstatOptions {
    fn default() -> Self {
        Self {
            scenarios: Vec::new(),
            iterations: None,
            runs: 11,
            source: SourceChoice::Auto,
        }
    }
}

impl KickstatOptions {
    /// The scenarios to run: the ones named, each once, in the order given; all of them
    /// when none was named.
    pub fn scenarios(&self) -> Vec<Scenario> {
        if self.scenarios.is_empty() {
            return Scenario::ALL.to_vec();
        }
        let mut out = Vec::new();
        for &s in &self.scenarios {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// The fence mode, as the command line names it (aioctx-wait's `FenceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Fences {
    /// `AIOCTX_FENCES` if set, else asymmetric where `membarrier` works, else symmetric.
    #[default]
    Auto,
    /// SeqCst fences on both sides of each Dekker pair.
    Symmetric,
    /// A compiler fence on the hot side, `membarrier(2)` on the rare side (an error where
    /// the kernel refuses it).
    Asymmetric,
}

impl From<Fences> for FenceMode {
    fn from(f: Fences) -> Self {
        match f {
            Fences::Auto => FenceMode::Auto,
            Fences::Symmetric => FenceMode::Symmetric,
            Fences::Asymmetric => FenceMode::Asymmetric,
        }
    }
}

/// The rdunlock policy, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Policy {
    /// Every rdunlock kicks: the e3082ab3b3 fix.
    #[default]
    Always,
    /// An rdunlock kicks only when it sees a writer: the pre-fix code, which hangs.
    WhenWriterSeen,
}

impl From<Policy> for UnlockKick {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Always => UnlockKick::Always,
            Policy::WhenWriterSeen => UnlockKick::WhenWriterSeen,
        }
    }
}

impl Policy {
    /// The name on the command line and in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Always => "always",
            Policy::WhenWriterSeen => "when-writer-seen",
        }
    }
}

/// `aioctx stress` options.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct StressOptions {
    /// Reader iothreads.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..4096))]
    pub iothreads: u64,
    /// Write-lock cycles.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// The rdunlock policy.
    #[arg(
        long = "unlock-kick",
        value_name = "POLICY",
        value_enum,
        default_value_t
    )]
    pub unlock_kick: Policy,
    /// Busy threads making CPU pressure (default: one per core).
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub pressure: Option<u64>,
    /// Seconds without a finished cycle before exit 3.
    #[arg(long = "watchdog-secs", value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watchdog_secs: u64,
}

impl Default for StressOptions {
    fn default() -> Self {
        Self {
            iothreads: 4,
            iterations: 10_000,
            unlock_kick: Policy::Always,
            pressure: None,
            watchdog_secs: 10,
        }
    }
}

impl StressOptions {
    /// The pressure threads to start: as asked, or one per core.
    pub fn pressure(&self) -> usize {
        self.pressure
            .map(|n| n as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

// Scenarios are listed by the CLI from the report's own list, so a new scenario is on
// the command line, in the help and in the errors' suggestions with no second list.
impl ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        &Scenario::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// What to run, with every flag resolved.
#[derive(Debug, PartialEq)]
pub enum Run {
    /// The kick-cost report.
    Kickstat(KickstatOptions),
    /// The graph-lock stress.
    Stress(StressOptions),
}

impl Cli {
    /// The command to run (`kickstat` with the top-level options when none is named).
    pub fn run(self) -> Run {
        match self.command {
            Some(Command::Kickstat(o)) => Run::Kickstat(o),
            Some(Command::Stress(o)) => Run::Stress(o),
            None => Run::Kickstat(self.kickstat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(s: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("aioctx").chain(s.split_whitespace()))
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_is_kickstat_with_defaults() {
        let cli = parse("").unwrap();
        assert!(!cli.json);
        assert_eq!(cli.run(), Run::Kickstat(KickstatOptions::default()));
    }

    #[test]
    fn flags_are_parsed_in_both_forms_and_scenarios_deduplicated() {
        let cli = parse(
            "kickstat --scenario kick-idle --scenario=peer-fence-load --scenario kick-idle \
             --iterations=10 --runs 2 --json --syscall-source self",
        )
        .unwrap();
        assert!(cli.json);
        let Run::Kickstat(o) = cli.run() else {
            panic!("not kickstat")
        };
        assert_eq!(
            o.scenarios(),
            vec![Scenario::KickIdle, Scenario::PeerFenceLoad]
        );
        assert_eq!(o.iterations, Some(10));
        assert_eq!(o.runs, 2);
        assert_eq!(o.source, SourceChoice::SelfCount);
    }

    #[test]
    fn json_is_global_in_any_position() {
        for args in [
            "--json stress",
            "stress --json",
            "--json",
            "kickstat --json",
        ] {
            assert!(parse(args).unwrap().json, "{args}");
        }
    }

    #[test]
    fn stress_options_parse() {
        let Run::Stress(o) =
            parse("stress --iothreads 2 --unlock-kick when-writer-seen --pressure 0")
                .unwrap()
                .run()
        else {
            panic!("not stress")
        };
        assert_eq!(o.iothreads, 2);
        assert_eq!(o.unlock_kick, Policy::WhenWriterSeen);
        assert_eq!(o.pressure(), 0);
    }
}
