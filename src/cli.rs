//! Command-line parsing for `aioctx`. Hand-written: two commands and five flags do not
//! need a parser crate.

use std::fmt;

use aioctx::graph::UnlockKick;
use aioctx::wait::FenceMode;

use crate::kickstat::scenarios::Scenario;
use crate::stress::StressOptions;

/// What the user asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Print usage and exit 0.
    Help,
    /// Run the kick-cost report.
    Kickstat(KickstatOptions),
    /// Run the graph-lock stress.
    Stress(StressOptions),
}

/// Where syscall counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// The kernel's counter when permitted, else the library's own counters.
    Auto,
    /// The kernel's counter or an error.
    Kernel,
    /// The library's own `stats()` counters.
    SelfCount,
}

/// `aioctx kickstat` flags.
#[derive(Debug, PartialEq)]
pub struct KickstatOptions {
    /// The scenarios to run, in report order (default: all).
    pub scenarios: Vec<Scenario>,
    /// Iterations per run for every scenario (default: per scenario).
    pub iterations: Option<u64>,
    /// Runs per scenario.
    pub runs: u32,
    /// Print a JSON array instead of the table.
    pub json: bool,
    /// Where syscall counts come from.
    pub source: SourceChoice,
    /// The process's fence mode (`Auto`: as `AIOCTX_FENCES` says, else the kernel).
    pub fences: FenceMode,
}

impl Default for KickstatOptions {
    fn default() -> Self {
        Self {
            scenarios: Scenario::ALL.to_vec(),
            iterations: None,
            runs: 11,
            json: false,
            source: SourceChoice::Auto,
            fences: FenceMode::Auto,
        }
    }
}

/// A command-line mistake; the binary prints it and exits with status 2.
#[derive(Debug, PartialEq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The help text.
pub const USAGE: &str = "\
usage: aioctx [kickstat] [options]

Commands:
  kickstat   measure what a kick costs, in ns and in syscalls, next to its peers
             (the default command)
  stress     iothreads take and drop the graph read lock while the main thread takes
             and drops the write lock; a watchdog turns a hang into exit code 3

kickstat options:
  --scenario NAME        run only this scenario (repeatable; default: all)
  --iterations N         iterations per run for every scenario (default: per scenario)
  --runs R               runs per scenario; ns/op is the median, min and max (default: 11)
  --json                 print a JSON array instead of the table
  --syscall-source SRC   auto (default), kernel (perf_event_open, or fail), or self
                         (the library's stats() counters)
  --fences MODE          auto (default: AIOCTX_FENCES, else asymmetric where membarrier
                         works), symmetric or asymmetric; one mode per process
  -h, --help             this text

stress options:
  --iothreads N          reader iothreads (default 4)
  --iterations N         write-lock cycles (default 10000)
  --unlock-kick POLICY   always (default: the e3082ab3b3 fix) or when-writer-seen
                         (the pre-fix code: reproduces the hang)
  --pressure T           busy threads making CPU pressure (default: one per core)
  --watchdog-secs S      seconds without a finished cycle before exit 3 (default 10)
  --fences MODE          auto (default), symmetric or asymmetric, as for kickstat
  --json                 print the result as JSON
";

/// Parses the arguments after the program name.
///
/// # Errors
/// An unknown command, flag or scenario, a missing or malformed value.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("kickstat") => {
            args.next();
        }
        Some("stress") => {
            args.next();
            return parse_stress(args);
        }
        Some("help" | "-h" | "--help") => return Ok(Command::Help),
        Some(other) if !other.starts_with('-') => {
            return Err(UsageError(format!(
                "unknown command `{other}`; the commands are: kickstat, stress"
            )));
        }
        _ => {}
    }
    let mut opts = KickstatOptions::default();
    let mut scenarios = Vec::new();
    let mut flags = Flags(args);
    while let Some((arg, flag)) = flags.next_flag() {
        let mut value = |name: &str| flags.value_of(&arg, name);
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--json" => opts.json = true,
            "--scenario" => {
                let name = value("--scenario")?;
                let s = Scenario::from_name(&name).ok_or_else(|| {
                    UsageError(format!(
                        "unknown scenario `{name}`; valid scenarios: {}",
                        Scenario::ALL.map(Scenario::name).join(", ")
                    ))
                })?;
                if !scenarios.contains(&s) {
                    scenarios.push(s);
                }
            }
            "--iterations" => {
                opts.iterations = Some(positive("--iterations", &value("--iterations")?)?)
            }
            "--runs" => {
                let runs = positive("--runs", &value("--runs")?)?;
                opts.runs = u32::try_from(runs)
                    .map_err(|_| UsageError(format!("--runs {runs} is too large")))?;
            }
            "--syscall-source" => {
                opts.source = match value("--syscall-source")?.as_str() {
                    "auto" => SourceChoice::Auto,
                    "kernel" => SourceChoice::Kernel,
                    "self" => SourceChoice::SelfCount,
                    other => {
                        return Err(UsageError(format!(
                            "--syscall-source takes auto, kernel or self, not `{other}`"
                        )));
                    }
                }
            }
            "--fences" => opts.fences = fences(&value("--fences")?)?,
            _ => return Err(UsageError(format!("unknown option `{arg}`"))),
        }
    }
    if !scenarios.is_empty() {
        opts.scenarios = scenarios;
    }
    Ok(Command::Kickstat(opts))
}

/// The flags after a command: `--flag value` or `--flag=value`.
struct Flags<I: Iterator<Item = String>>(I);

impl<I: Iterator<Item = String>> Flags<I> {
    /// The next argument and its flag name (the part before `=`, for `--flag=value`).
    /// The inline value, if any, is kept for [`value`](Self::value).
    fn next_flag(&mut self) -> Option<(String, String)> {
        let arg = self.0.next()?;
        let flag = match arg.split_once('=') {
            Some((f, _)) if f.starts_with("--") => f.to_owned(),
            _ => arg.clone(),
        };
        Some((arg, flag))
    }

    /// The value of flag `name`: inline after `=` in `arg`, else the next argument.
    fn value_of(&mut self, arg: &str, name: &str) -> Result<String, UsageError> {
        match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => Ok(v.to_owned()),
            _ => self
                .0
                .next()
                .ok_or_else(|| UsageError(format!("{name} needs a value"))),
        }
    }
}

/// Parses the flags of `aioctx stress`.
fn parse_stress(args: impl Iterator<Item = String>) -> Result<Command, UsageError> {
    let mut opts = StressOptions::default();
    let mut flags = Flags(args);
    while let Some((arg, flag)) = flags.next_flag() {
        let mut value = |name: &str| flags.value_of(&arg, name);
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--json" => opts.json = true,
            "--iothreads" => opts.iothreads = count("--iothreads", &value("--iothreads")?)?,
            "--iterations" => opts.iterations = positive("--iterations", &value("--iterations")?)?,
            "--watchdog-secs" => {
                opts.watchdog_secs = positive("--watchdog-secs", &value("--watchdog-secs")?)?
            }
            "--pressure" => {
                let text = value("--pressure")?;
                opts.pressure = text.parse().map_err(|_| {
                    UsageError(format!(
                        "--pressure needs a non-negative integer, not `{text}`"
                    ))
                })?;
            }
            "--unlock-kick" => {
                opts.unlock_kick = match value("--unlock-kick")?.as_str() {
                    "always" => UnlockKick::Always,
                    "when-writer-seen" => UnlockKick::WhenWriterSeen,
                    other => {
                        return Err(UsageError(format!(
                            "--unlock-kick takes always or when-writer-seen, not `{other}`"
                        )));
                    }
                }
            }
            "--fences" => opts.fences = fences(&value("--fences")?)?,
            _ => return Err(UsageError(format!("unknown stress option `{arg}`"))),
        }
    }
    Ok(Command::Stress(opts))
}

/// A `--fences` value.
fn fences(text: &str) -> Result<FenceMode, UsageError> {
    text.parse().map_err(|_| {
        UsageError(format!(
            "--fences takes auto, symmetric or asymmetric, not `{text}`"
        ))
    })
}

/// A positive count that fits a `usize`.
fn count(flag: &str, text: &str) -> Result<usize, UsageError> {
    usize::try_from(positive(flag, text)?)
        .map_err(|_| UsageError(format!("{flag} {text} is too large")))
}

fn positive(flag: &str, text: &str) -> Result<u64, UsageError> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(UsageError(format!(
            "{flag} needs a positive integer, not `{text}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, UsageError> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn no_arguments_is_kickstat_with_defaults() {
        assert_eq!(
            parse_str(""),
            Ok(Command::Kickstat(KickstatOptions::default()))
        );
    }

    #[test]
    fn flags_are_parsed_in_both_forms() {
        let Ok(Command::Kickstat(o)) = parse_str(
            "kickstat --scenario kick-idle --scenario=peer-fence-load --scenario kick-idle \
             --iterations=10 --runs 2 --json --syscall-source self --fences symmetric",
        ) else {
            panic!("did not parse");
        };
        assert_eq!(
            o.scenarios,
            vec![Scenario::KickIdle, Scenario::PeerFenceLoad]
        );
        assert_eq!(o.iterations, Some(10));
        assert_eq!(o.runs, 2);
        assert!(o.json);
        assert_eq!(o.source, SourceChoice::SelfCount);
        assert_eq!(o.fences, FenceMode::Symmetric);
    }

    #[test]
    fn mistakes_say_what_was_wrong() {
        let err = |s| parse_str(s).unwrap_err().0;
        assert!(
            err("--scenario nope").contains("unknown scenario `nope`; valid scenarios: kick-idle,")
        );
        assert_eq!(err("--bogus"), "unknown option `--bogus`");
        assert_eq!(err("--runs 0"), "--runs needs a positive integer, not `0`");
        assert_eq!(
            err("--iterations x"),
            "--iterations needs a positive integer, not `x`"
        );
        assert_eq!(err("--runs"), "--runs needs a value");
        assert_eq!(
            err("frobnicate"),
            "unknown command `frobnicate`; the commands are: kickstat, stress"
        );
        assert!(err("--syscall-source maybe").contains("auto, kernel or self"));
        assert_eq!(
            err("stress --fences half"),
            "--fences takes auto, symmetric or asymmetric, not `half`"
        );
        assert_eq!(parse_str("--help"), Ok(Command::Help));
    }
}
