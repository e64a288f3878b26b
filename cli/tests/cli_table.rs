#![cfg(not(loom))]
//! The command line as a table: each row is arguments, the exit code, and what stdout
//! and stderr must (and must not) say. Then the JSON of each command, read back through
//! the schema types the binary writes it with, so the schema and the output cannot
//! drift apart.

use std::process::{Command, Output};

use aioctx_cli::schema::{KickstatReport, SCHEMA_VERSION, StressOutcome, StressReport};

fn aioctx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aioctx"))
        .args(args)
        .output()
        .expect("run aioctx")
}

fn show(args: &[&str], o: &Output) -> String {
    format!(
        "aioctx {args:?}: status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Where a row's text must appear.
#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

struct Case {
    args: &'static [&'static str],
    code: i32,
    stream: Stream,
    contains: &'static [&'static str],
}

const CASES: &[Case] = &[
    // Help and version.
    Case {
        args: &["--version"],
        code: 0,
        stream: Stream::Out,
        contains: &[concat!("aioctx ", env!("CARGO_PKG_VERSION"))],
    },
    Case {
        args: &["-V"],
        code: 0,
        stream: Stream::Out,
        contains: &["aioctx "],
    },
    Case {
        args: &["--help"],
        code: 0,
        stream: Stream::Out,
        contains: &[
            "kickstat",
            "stress",
            "--scenario",
            "--iterations",
            "--runs",
            "--json",
            "--syscall-source",
            "--fences",
            "Exit codes: 0 done, 1 the command failed",
        ],
    },
    Case {
        args: &["help", "stress"],
        code: 0,
        stream: Stream::Out,
        contains: &[
            "--unlock-kick",
            "--iothreads",
            "--watchdog-secs",
            "--pressure",
        ],
    },
    Case {
        args: &["stress", "--help"],
        code: 0,
        stream: Stream::Out,
        contains: &["--unlock-kick", "when-writer-seen", "e3082ab3b3 fix"],
    },
    Case {
        args: &["kickstat", "-h"],
        code: 0,
        stream: Stream::Out,
        contains: &["--scenario", "kick-idle", "peer-parking-lot-read"],
    },
    // Usage errors: exit 2, a message, a suggestion where one exists.
    Case {
        args: &["--bogus"],
        code: 2,
        stream: Stream::Err,
        contains: &["unexpected argument '--bogus'"],
    },
    Case {
        args: &["frobnicate"],
        code: 2,
        stream: Stream::Err,
        contains: &["unrecognized subcommand 'frobnicate'"],
    },
    Case {
        args: &["strss"],
        code: 2,
        stream: Stream::Err,
        contains: &["tip: a similar subcommand exists: 'stress'"],
    },
    Case {
        args: &["kickstat", "--scenario", "kick-idel"],
        code: 2,
        stream: Stream::Err,
        contains: &[
            "invalid value 'kick-idel'",
            "possible values: kick-idle,",
            "a similar value exists: 'kick-idle'",
        ],
    },
    Case {
        args: &["--runs", "0"],
        code: 2,
        stream: Stream::Err,
        contains: &["invalid value '0' for '--runs <R>'"],
    },
    Case {
        args: &["--iterations"],
        code: 2,
        stream: Stream::Err,
        contains: &["a value is required for '--iterations <N>'"],
    },
    Case {
        args: &["--syscall-source", "maybe"],
        code: 2,
        stream: Stream::Err,
        contains: &["possible values: auto, kernel, self"],
    },
    Case {
        args: &["stress", "--unlock-kick", "sometimes"],
        code: 2,
        stream: Stream::Err,
        contains: &["possible values: always, when-writer-seen"],
    },
    Case {
        args: &["stress", "--fences", "half"],
        code: 2,
        stream: Stream::Err,
        contains: &["possible values: auto, symmetric, asymmetric"],
    },
    Case {
        args: &["stress", "--iothreads", "0"],
        code: 2,
        stream: Stream::Err,
        contains: &["invalid value '0' for '--iothreads <N>'"],
    },
    Case {
        args: &["stress", "--iterations", "many"],
        code: 2,
        stream: Stream::Err,
        contains: &["invalid value 'many' for '--iterations <N>'"],
    },
    Case {
        args: &["stress", "--scenario", "kick-idle"],
        code: 2,
        stream: Stream::Err,
        contains: &["unexpected argument '--scenario'"],
    },
];

#[test]
fn help_version_and_errors_follow_the_table() {
    for case in CASES {
        let o = aioctx(case.args);
        assert_eq!(o.status.code(), Some(case.code), "{}", show(case.args, &o));
        let (text, other) = match case.stream {
            Stream::Out => (&o.stdout, &o.stderr),
            Stream::Err => (&o.stderr, &o.stdout),
        };
        let text = String::from_utf8_lossy(text);
        for needle in case.contains {
            assert!(
                text.contains(needle),
                "missing {needle:?}\n{}",
                show(case.args, &o)
            );
        }
        assert!(
            other.is_empty(),
            "output on the other stream\n{}",
            show(case.args, &o)
        );
    }
}

#[test]
fn kickstat_json_reads_back_through_its_schema_with_json_anywhere() {
    for args in [
        &[
            "--json",
            "--scenario",
            "kick-idle",
            "--runs",
            "1",
            "--iterations",
            "100",
        ][..],
        &[
            "kickstat",
            "--scenario",
            "kick-idle",
            "--runs=1",
            "--iterations",
            "100",
            "--json",
        ][..],
    ] {
        let o = aioctx(args);
        assert_eq!(o.status.code(), Some(0), "{}", show(args, &o));
        let r: KickstatReport =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(args, &o)));
        assert_eq!(r.meta.command, "kickstat");
        assert_eq!(r.meta.schema_version, SCHEMA_VERSION);
        assert_eq!(r.meta.crate_version, env!("CARGO_PKG_VERSION"));
        assert!(
            !r.meta.kernel.is_empty() && r.meta.cores >= 1,
            "{:?}",
            r.meta
        );
        assert_eq!(r.runs, 1);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].scenario, "kick-idle");
        assert_eq!(r.rows[0].iterations, 100);
        assert!(r.rows[0].ns_per_op.median.is_some());
        // Writing it again gives the same document: nothing the binary prints is lost
        // or renamed by the schema.
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(again, printed, "{}", show(args, &o));
    }
}

#[test]
fn stress_json_reads_back_through_its_schema_with_json_before_the_command() {
    let args = [
        "--json",
        "stress",
        "--iterations",
        "20",
        "--iothreads",
        "1",
        "--pressure",
        "0",
    ];
    let o = aioctx(&args);
    assert_eq!(o.status.code(), Some(0), "{}", show(&args, &o));
    let r: StressReport =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(&args, &o)));
    assert_eq!(r.meta.command, "stress");
    assert_eq!(r.unlock_kick, "always");
    assert_eq!((r.iothreads, r.pressure), (1, 0));
    let StressOutcome::Completed { cycles, .. } = r.outcome else {
        panic!("not completed: {}", show(&args, &o));
    };
    assert_eq!(cycles, 20);
    let again: serde_json::Value = serde_json::to_value(&r).unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again, printed);
}
