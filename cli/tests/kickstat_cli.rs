#![cfg(not(loom))]
//! `aioctx kickstat` as a user runs it: the JSON report, the syscall claims it makes,
//! the table, and the errors for bad flags.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const ALL: [&str; 21] = [
    "kick-idle",
    "kick-busy",
    "kick-sleeping",
    "notify-busy",
    "notify-sleeping",
    "peer-fence-load",
    "peer-eventfd-write",
    "peer-futex-wake",
    "peer-unpark",
    "peer-tokio-notify",
    "peer-eventfd-pingpong",
    "rdlock-pair-always",
    "rdlock-pair-when-writer-seen",
    "peer-std-rwlock-read",
    "peer-parking-lot-read",
    "rdlock-pair-1-context",
    "rdlock-pair-2-contexts",
    "wait-while-register",
    "wrlock-pair-0-busy",
    "wrlock-pair-1-busy",
    "wrlock-pair-3-busy",
];

/// Runs the binary; a watchdog turns a hang into a failure instead of a stuck CI.
fn aioctx(args: &[&str]) -> Output {
    aioctx_with(args, &[])
}

/// [`aioctx`] with `env` added to the child's environment.
fn aioctx_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_aioctx"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running aioctx");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::Relaxed) {
            if start.elapsed() > Duration::from_secs(120) {
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped
                // (wait_with_output below is still waiting for it).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let out = child.wait_with_output().expect("waiting for aioctx");
    done.store(true, Ordering::Relaxed);
    assert!(
        !watchdog.join().unwrap(),
        "watchdog: aioctx {args:?} hung for 120 s and was killed; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What one kick-and-wake cycle may cost in syscalls on the backend this run gets (the
/// child inherits `AIOCTX_BACKEND` and any seccomp filter, so a context made here runs
/// on the same one): 2 on io_uring (eventfd write + the io_uring_enter the sleeper was
/// in), 3 on the epoll fallback (write + epoll_wait + the woken loop's read(2)).
fn sleeping_cycle_limit() -> f64 {
    let ctx = aioctx::aio::AioContext::new().expect("create an AioContext");
    match ctx.backend() {
        aioctx::aio::Backend::IoUring => 2.0,
        _ => 3.0,
    }
}

fn json(args: &[&str]) -> Vec<Value> {
    rows_of(&report(aioctx(args), args))
}

/// The JSON report of a successful run.
fn report(out: Output, args: &[&str]) -> Value {
    assert!(
        out.status.success(),
        "aioctx {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("--json did not print JSON ({e}):\n{text}"));
    assert_eq!(report["meta"]["command"], "kickstat", "{text}");
    report
}

fn rows_of(report: &Value) -> Vec<Value> {
    match &report["rows"] {
        Value::Array(rows) => rows.clone(),
        other => panic!("--json has no rows array ({other:?}):\n{report}"),
    }
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["scenario"] == name)
        .unwrap_or_else(|| panic!("no row for {name}"))
}

fn syscalls(rows: &[Value], name: &str) -> f64 {
    row(rows, name)["syscalls_per_op"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: syscalls_per_op is not a number"))
}

#[test]
fn json_lists_every_scenario_with_every_field() {
    let rows = json(&["kickstat", "--json", "--iterations", "200", "--runs", "2"]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALL);
    let source = rows[0]["syscall_source"].as_str().unwrap().to_owned();
    assert!(source == "kernel" || source == "self", "source {source}");
    for r in &rows {
        let name = r["scenario"].as_str().unwrap();
        for key in ["median", "min", "max"] {
            let ns = r["ns_per_op"][key].as_f64();
            assert!(
                ns.is_some_and(|ns| ns >= 0.0),
                "{name}: ns_per_op.{key} = {ns:?}"
            );
        }
        let (min, med, max) = (
            r["ns_per_op"]["min"].as_f64().unwrap(),
            r["ns_per_op"]["median"].as_f64().unwrap(),
            r["ns_per_op"]["max"].as_f64().unwrap(),
        );
        assert!(min <= med && med <= max, "{name}: {min} {med} {max}");
        assert_eq!(
            r["syscall_source"],
            source.as_str(),
            "{name}: one source per report"
        );
        assert!(r["unit"].is_string(), "{name}: unit");
        assert_eq!(r["iterations"], 200, "{name}");
        assert_eq!(r["runs"], 2, "{name}");
        assert!(
            r["slept_per_op"].is_f64() || r["slept_per_op"].is_null(),
            "{name}: slept_per_op"
        );
        if source == "kernel" {
            assert!(
                r["syscalls_per_op"].is_f64(),
                "{name}: kernel counts every row"
            );
        }
    }
    // The claims of the report hold in this very run.
    assert_eq!(syscalls(&rows, "kick-idle"), 0.0);
    assert_eq!(syscalls(&rows, "kick-busy"), 0.0);
    assert!(syscalls(&rows, "kick-sleeping") <= sleeping_cycle_limit());
    // The graph lock's read side without a writer makes no syscall, under either policy.
    assert_eq!(syscalls(&rows, "rdlock-pair-always"), 0.0);
    assert_eq!(syscalls(&rows, "rdlock-pair-when-writer-seen"), 0.0);
    assert_eq!(syscalls(&rows, "peer-eventfd-write"), 1.0);
}

#[test]
fn kick_costs_no_syscall_without_sleeper_and_at_most_two_per_sleeping_cycle() {
    let rows = json(&[
        "--json",
        "--scenario",
        "kick-idle",
        "--scenario",
        "kick-busy",
        "--scenario",
        "kick-sleeping",
        "--iterations",
        "500",
        "--runs",
        "3",
    ]);
    assert_eq!(rows.len(), 3);
    assert_eq!(syscalls(&rows, "kick-idle"), 0.0);
    assert_eq!(syscalls(&rows, "kick-busy"), 0.0);
    let sleeping = syscalls(&rows, "kick-sleeping");
    assert!(
        sleeping <= sleeping_cycle_limit(),
        "kick-sleeping costs {sleeping} syscalls per cycle"
    );
    // Each cycle really slept and was woken: one write and one wait at least.
    assert!(
        sleeping >= 2.0,
        "kick-sleeping cycles did not sleep ({sleeping})"
    );
}

/// The kick's syscall claims do not depend on the ring's setup flags: each setup this
/// kernel accepts, given to the whole process through `AIOCTX_RING_SETUP`, keeps a kick
/// to a busy loop at 0 and a wake-up of a sleeping one at the back end's limit.
#[test]
fn kick_syscalls_hold_under_every_ring_setup() {
    let args = [
        "--json",
        "--scenario",
        "kick-busy",
        "--scenario",
        "kick-sleeping",
        "--iterations",
        "300",
        "--runs",
        "1",
    ];
    for setup in [
        "none",
        "coop_taskrun+taskrun_flag",
        "single_issuer",
        "defer_taskrun",
        "single_issuer+coop_taskrun+taskrun_flag",
    ] {
        let out = aioctx_with(&args, &[("AIOCTX_RING_SETUP", setup)]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("io_uring_setup refused") {
            eprintln!(
                "skipped kick_syscalls_hold_under_every_ring_setup: this kernel refuses {setup}: {err}"
            );
            continue;
        }
        let report = report(out, &args);
        let flags = report["meta"]["ring"]["setup_flags"].as_str().unwrap_or("");
        if report["meta"]["backend"] == "io_uring" {
            // `defer_taskrun` brings the flags it implies; `none` is a plain ring.
            if setup == "none" {
                assert_eq!(flags, "none", "{setup}: the ring ran with {flags}");
            }
            for flag in setup.split('+').filter(|f| *f != "none") {
                assert!(flags.contains(flag), "{setup}: the ring ran with {flags}");
            }
        }
        let rows = rows_of(&report);
        assert_eq!(syscalls(&rows, "kick-busy"), 0.0, "{setup}");
        let sleeping = syscalls(&rows, "kick-sleeping");
        assert!(
            (2.0..=sleeping_cycle_limit()).contains(&sleeping),
            "{setup}: kick-sleeping costs {sleeping} syscalls per cycle"
        );
    }
}

fn slept(rows: &[Value], name: &str) -> f64 {
    row(rows, name)["slept_per_op"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: slept_per_op is not a number"))
}

/// The sleeping scenarios must measure a loop that is blocked in the kernel when it is
/// woken, and so must the peer they are compared with: the loop's (the reader's)
/// voluntary context switches are about one per cycle. A kicker that fires as soon as
/// the loop *announces* it will sleep wakes it before it blocks (0.001 per cycle).
#[test]
fn sleeping_scenarios_block_in_the_kernel_once_per_cycle() {
    let rows = json(&[
        "--json",
        "--scenario",
        "kick-sleeping",
        "--scenario",
        "notify-sleeping",
        "--scenario",
        "peer-eventfd-pingpong",
        "--scenario",
        "kick-busy",
        "--iterations",
        "300",
        "--runs",
        "2",
    ]);
    for name in ["kick-sleeping", "notify-sleeping", "peer-eventfd-pingpong"] {
        let s = slept(&rows, name);
        assert!(
            s >= 0.9,
            "{name}: the sleeper blocked {s} times per cycle; each kick must find it asleep"
        );
    }
    // The busy loop's row has the column too (its loop is the main thread).
    assert!(row(&rows, "kick-busy")["slept_per_op"].is_f64());
    let limit = sleeping_cycle_limit();
    for name in ["kick-sleeping", "notify-sleeping"] {
        let s = syscalls(&rows, name);
        assert!(
            (2.0..=limit).contains(&s),
            "{name}: {s} syscalls per cycle (2..={limit}: the probe's reads are not the loop's)"
        );
    }
    assert_eq!(
        syscalls(&rows, "peer-eventfd-pingpong"),
        2.0,
        "write + read"
    );
}

#[test]
fn self_source_uses_the_library_counters() {
    let rows = json(&[
        "--json",
        "--syscall-source",
        "self",
        "--scenario",
        "kick-sleeping",
        "--scenario",
        "notify-sleeping",
        "--scenario",
        "peer-tokio-notify",
        "--iterations",
        "200",
        "--runs",
        "1",
    ]);
    for r in &rows {
        assert_eq!(r["syscall_source"], "self");
    }
    assert_eq!(syscalls(&rows, "kick-sleeping"), sleeping_cycle_limit());
    assert_eq!(syscalls(&rows, "notify-sleeping"), sleeping_cycle_limit());
    assert!(
        row(&rows, "peer-tokio-notify")["syscalls_per_op"].is_null(),
        "a peer's internal syscalls are not countable without the kernel"
    );
}

#[test]
fn table_names_source_scenarios_and_loop() {
    let out = aioctx(&["kickstat", "--iterations", "100", "--runs", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("syscall source: "), "{text}");
    assert!(text.contains("fence mode: "), "{text}");
    for name in ALL {
        assert!(text.contains(name), "no {name} in:\n{text}");
    }
    assert!(text.contains("loop (main context)"), "{text}");
    assert!(text.contains("slept/op"), "no slept column in:\n{text}");
    let backend = if sleeping_cycle_limit() == 3.0 {
        "backend epoll"
    } else {
        "backend io_uring"
    };
    assert!(text.contains(backend), "{text}");
    assert!(text.contains("[ok  ] kick-busy"), "{text}");
    // Where io_uring is denied, the one line saying so is the only stderr output.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .all(|l| l.contains("io_uring is unavailable")),
        "no progress output when stderr is not a terminal: {stderr}"
    );
}

/// What the environment gets wrong is a one-line error and exit 2, before anything runs:
/// not a panic with a backtrace (exit 101) from inside the command.
#[test]
fn invalid_backend_env_is_a_one_line_error_not_a_panic() {
    for (var, args) in [
        ("AIOCTX_BACKEND", &["kickstat"][..]),
        ("AIOCTX_BACKEND", &["stress", "--iterations", "10"][..]),
        ("AIOCTX_RING_SETUP", &["kickstat"][..]),
        ("AIOCTX_RING_SETUP", &["stress", "--iterations", "10"][..]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aioctx"))
            .args(args)
            .env(var, "garbage")
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("running aioctx");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "aioctx {args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "aioctx {args:?}: one line, got {err:?}"
        );
        assert!(
            err.contains(&format!("{var}=\"garbage\" is invalid")) && !err.contains("panicked"),
            "aioctx {args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "aioctx {args:?} printed a report");
    }
}

fn membarriers(rows: &[Value], name: &str) -> f64 {
    row(rows, name)["membarriers_per_op"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: membarriers_per_op is not a number"))
}

/// Both fence modes: the JSON names the mode; the rare sides' membarrier calls are
/// counted apart (1 per `wait_while` registration, 2 per write-lock pair in asymmetric
/// mode, none in symmetric mode), and the kick's syscall claims do not move.
#[test]
fn fence_modes_count_membarrier_apart_from_the_kick() {
    for mode in ["symmetric", "asymmetric"] {
        let out = aioctx(&[
            "--json",
            "--fences",
            mode,
            "--scenario",
            "kick-idle",
            "--scenario",
            "kick-busy",
            "--scenario",
            "kick-sleeping",
            "--scenario",
            "rdlock-pair-always",
            "--scenario",
            "wait-while-register",
            "--scenario",
            "wrlock-pair-1-busy",
            "--iterations",
            "300",
            "--runs",
            "2",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        if mode == "asymmetric" && out.status.code() == Some(2) && err.contains("membarrier") {
            eprintln!(
                "skipped fence_modes_count_membarrier_apart_from_the_kick: the asymmetric \
                 pass needs membarrier(PRIVATE_EXPEDITED), unavailable here"
            );
            continue;
        }
        assert!(out.status.success(), "--fences {mode}: {err}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
        assert_eq!(report["meta"]["fence_mode"], mode, "{report}");
        let rows: Vec<Value> = match &report["rows"] {
            Value::Array(rows) => rows.clone(),
            other => panic!("--json has no rows array ({other:?})"),
        };
        for r in &rows {
            assert_eq!(r["fence_mode"], mode, "{r}");
        }
        let per_rare = if mode == "asymmetric" { 1.0 } else { 0.0 };
        assert_eq!(
            membarriers(&rows, "wait-while-register"),
            per_rare,
            "{mode}"
        );
        assert_eq!(
            membarriers(&rows, "wrlock-pair-1-busy"),
            2.0 * per_rare,
            "{mode}"
        );
        for hot in ["kick-idle", "kick-busy", "rdlock-pair-always"] {
            assert_eq!(syscalls(&rows, hot), 0.0, "{mode} {hot}");
        }
        assert_eq!(membarriers(&rows, "kick-idle"), 0.0, "{mode}");
        assert_eq!(membarriers(&rows, "rdlock-pair-always"), 0.0, "{mode}");
        // kick-busy's waiter registers once per run of 300 kicks; the kicks pay none.
        assert_eq!(membarriers(&rows, "kick-busy"), per_rare / 300.0, "{mode}");
        // The waiter's one registration per run is the only membarrier of kick-sleeping,
        // and it is not among its syscalls.
        assert!(
            syscalls(&rows, "kick-sleeping") <= sleeping_cycle_limit(),
            "{mode}: kick-sleeping"
        );
        assert_eq!(syscalls(&rows, "wait-while-register"), 0.0, "{mode}");
    }
}

#[test]
fn invalid_fences_are_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_aioctx"))
        .args(["kickstat", "--iterations", "10"])
        .env("AIOCTX_FENCES", "sometimes")
        .output()
        .expect("running aioctx");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // One line of ours (where io_uring is denied, the fallback's own line comes first).
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("io_uring is unavailable"))
        .collect();
    assert_eq!(ours.len(), 1, "{err:?}");
    assert!(
        ours[0].contains("AIOCTX_FENCES=\"sometimes\" is invalid") && !err.contains("panicked"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // A bad `--fences` value is clap's usage error (cli_table.rs).
}
