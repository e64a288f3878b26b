//! `aioctx stress`: the iotest `iothreads-create` shape under CPU pressure — iothreads
//! take and drop the graph read lock over and over while the main thread takes and
//! drops the write lock (drained), with a watchdog that turns a hang into exit code 3
//! and a diagnosis.
//!
//! To reproduce e3082ab3b3 on demand rather than hope for it, each reader holds its
//! lock until the writer is registered as a waiter and its main loop
//! sleeps, and only then unlocks: exactly the commit's interleaving. With
//! `--unlock-kick always` the unlock kicks and the writer wakes; with
//! `--unlock-kick when-writer-seen` the unlock sees `has_writer == 0` (the writer zeroes
//! it while polling), skips the kick, and the writer sleeps forever.
//!
//! `--fences symmetric|asymmetric` picks the process's fence mode (default: as
//! `AIOCTX_FENCES` says, else asymmetric where `membarrier` works): both modes must
//! complete with the fix and hang without it.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aioctx::aio::{IoThread, main_context, sleep};
use aioctx::graph::graph_lock;

use crate::cli::{EXIT_FAILURE, EXIT_HANG, EXIT_USAGE, Policy, StressOptions};
use crate::progress::Progress;
use crate::schema::{Meta, StressOutcome, StressReport};

/// How long a reader or the writer naps between looks at the other side: sleeping, not
/// spinning, so the pressure threads alone make the CPU pressure and hand-offs do not
/// queue behind spinning waiters.
const NAP: Duration = Duration::from_micros(20);

/// What the watchdog saw when the writer stopped making progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub has_writer: bool,
    pub num_waiters: u32,
    pub readers: u32,
    pub main_loop_asleep: bool,
    pub seconds_stuck: u64,
    pub cycles_done: u64,
}

/// Runs the stress and prints its result (text, or with `json` the [`StressReport`]
/// schema); returns the process exit code (0 done, 1 a thread could not be started, 2
/// the iothreads could not be created, 3 writer stuck).
pub fn run(o: &StressOptions, json: bool) -> u8 {
    let main = main_context();
    main.make_current();
    let lock = graph_lock();
    lock.set_unlock_kick(o.unlock_kick.into());
    let pressure_threads = o.pressure();

    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let reader_ops = Arc::new(AtomicU64::new(0));

    // Before the pressure threads, so that a failure has nothing to stop.
    let iothreads: Vec<IoThread> = match (0..o.iothreads)
        .map(|i| IoThread::new(&format!("iothread{i}")))
        .collect()
    {
        Ok(threads) => threads,
        Err(e) => {
            eprintln!("aioctx stress: cannot create the reader iothreads: {e}");
            return EXIT_USAGE;
        }
    };
    // CPU pressure, like `stress-ng --cpu N`. A thread the system refuses is an error
    // (exit 1) after the ones already started are stopped, not a panic.
    let mut pressure = Vec::with_capacity(pressure_threads);
    for i in 0..pressure_threads {
        let flag = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name(format!("pressure{i}"))
            .spawn(move || {
                let mut x = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
        match spawned {
            Ok(t) => pressure.push(t),
            Err(e) => {
                eprintln!(
                    "aioctx stress: cannot start pressure thread {} of {pressure_threads}: {e}",
                    i + 1
                );
                return stop_and_fail(&stop, pressure);
            }
        }
    }

    for t in &iothreads {
        let (stop, reader_ops, cycles) = (
            Arc::clone(&stop),
            Arc::clone(&reader_ops),
            Arc::clone(&cycles),
        );
        t.ctx()
            .spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let guard = graph_lock().rdlock().await;
                    // The commit's interleaving: unlock only once the writer waits and
                    // its main loop sleeps (bounded, so phases without a writer go on).
                    let deadline = Instant::now() + Duration::from_millis(2);
                    while !(aioctx::wait::num_waiters() > 0 && main_context().is_sleeping())
                        && Instant::now() < deadline
                        && !stop.load(Ordering::Relaxed)
                    {
                        sleep(NAP).await;
                    }
                    drop(guard);
                    reader_ops.fetch_add(1, Ordering::Relaxed);
                    // Let the writer through before reading again (bounded): readers that
                    // re-lock at once could starve it, and drain does not stop them.
                    let seen = cycles.load(Ordering::Relaxed);
                    let deadline = Instant::now() + Duration::from_millis(1);
                    while cycles.load(Ordering::Relaxed) == seen
                        && Instant::now() < deadline
                        && !stop.load(Ordering::Relaxed)
                    {
                        sleep(NAP).await;
                    }
                }
            })
            .detach();
    }

    // The watchdog: no finished cycle for `watchdog_secs` means the writer is stuck.
    let watchdog = {
        let (stop, cycles) = (Arc::clone(&stop), Arc::clone(&cycles));
        let (secs, shape) = (o.watchdog_secs, Shape::of(o, pressure_threads));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut last = cycles.load(Ordering::Relaxed);
                let mut since = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let now = cycles.load(Ordering::Relaxed);
                    if now != last {
                        (last, since) = (now, Instant::now());
                    } else if since.elapsed() >= Duration::from_secs(secs) {
                        let d = Diagnosis {
                            has_writer: graph_lock().has_writer(),
                            num_waiters: aioctx::wait::num_waiters(),
                            readers: graph_lock().readers(),
                            main_loop_asleep: main_context().is_sleeping(),
                            seconds_stuck: since.elapsed().as_secs(),
                            cycles_done: now,
                        };
                        report_stuck(&d, &shape, json);
                        std::process::exit(EXIT_HANG.into());
                    }
                }
            })
    };
    let watchdog = match watchdog {
        Ok(t) => t,
        Err(e) => {
            eprintln!("aioctx stress: cannot start the watchdog thread: {e}");
            return stop_and_fail(&stop, pressure);
        }
    };

    // Start writing only once every reader is at work.
    let started = Instant::now();
    while reader_ops.load(Ordering::Relaxed) < o.iothreads {
        if started.elapsed() >= Duration::from_secs(o.watchdog_secs) {
            eprintln!(
                "aioctx stress: the reader tasks did not start within {} s",
                o.watchdog_secs
            );
            let _ = watchdog.join();
            return stop_and_fail(&stop, pressure);
        }
        std::thread::yield_now();
    }

    let progress = Progress::new(!json);
    let sleeps_before = main.stats().sleeps;
    let start = Instant::now();
    for i in 0..o.iterations {
        // Come when a reader holds the lock (bounded), so that every cycle waits.
        let deadline = Instant::now() + Duration::from_millis(2);
        while lock.readers() == 0 && Instant::now() < deadline {
            std::thread::sleep(NAP);
        }
        let w = lock.wrlock_drained();
        drop(w);
        cycles.store(i + 1, Ordering::Relaxed);
        if progress.is_on() && (i % 100 == 0 || i + 1 == o.iterations) {
            progress.bar(i + 1, o.iterations, "write-lock cycles");
        }
    }
    progress.clear();
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    watchdog.join().expect("the watchdog thread");
    drop(iothreads);
    for p in pressure {
        p.join().expect("a pressure thread");
    }
    let reads = reader_ops.load(Ordering::Relaxed);
    // How often the writer slept waiting for readers: each is one run of the seed
    // commit's window, survived.
    let writer_sleeps = main.stats().sleeps - sleeps_before;
    let shape = Shape::of(o, pressure_threads);
    if json {
        shape.print_json(StressOutcome::Completed {
            cycles: o.iterations,
            reader_cycles: reads,
            writer_sleeps,
            seconds: elapsed.as_secs_f64(),
        });
    } else {
        println!(
            "stress: completed {} write-lock cycles (unlock-kick {}, {} fences, {} iothreads, {} pressure \
             threads) in {:.2} s; readers took and dropped the lock {reads} times; the writer \
             slept waiting for readers {writer_sleeps} times",
            o.iterations,
            shape.policy.name(),
            aioctx::wait::fence_mode(),
            shape.iothreads,
            shape.pressure,
            elapsed.as_secs_f64()
        );
    }
    0
}

/// Stops and joins the threads started so far; the exit code of a failed run.
fn stop_and_fail(stop: &AtomicBool, threads: Vec<std::thread::JoinHandle<()>>) -> u8 {
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    EXIT_FAILURE
}

/// What a run was asked to do, for its report.
struct Shape {
    policy: Policy,
    iothreads: u64,
    pressure: usize,
}

impl Shape {
    fn of(o: &StressOptions, pressure: usize) -> Self {
        Self {
            policy: o.unlock_kick,
            iothreads: o.iothreads,
            pressure,
        }
    }

    fn print_json(&self, outcome: StressOutcome) {
        let report = StressReport {
            meta: Meta::collect("stress", main_context()),
            unlock_kick: self.policy.name().to_owned(),
            iothreads: self.iothreads,
            pressure: self.pressure,
            outcome,
        };
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &report);
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

fn report_stuck(d: &Diagnosis, shape: &Shape, json: bool) {
    let missed_wakeup = d.readers == 0 && d.num_waiters > 0 && !d.has_writer;
    if json {
        shape.print_json(StressOutcome::WriterStuck {
            cycles_done: d.cycles_done,
            has_writer: d.has_writer,
            num_waiters: d.num_waiters,
            readers: d.readers,
            main_loop_asleep: d.main_loop_asleep,
            seconds_stuck: d.seconds_stuck,
            missed_wakeup,
        });
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nstress: WRITER STUCK after {} cycles (unlock-kick {}, {} fences):\n  has_writer       = {}\n  \
         num_waiters      = {}\n  readers()        = {}\n  main loop asleep = {}\n  \
         stuck for        = {} s\n{}",
        d.cycles_done,
        shape.policy.name(),
        aioctx::wait::fence_mode(),
        d.has_writer,
        d.num_waiters,
        d.readers,
        d.main_loop_asleep,
        d.seconds_stuck,
        if missed_wakeup {
            "  no reader holds the lock and the writer waits asleep with has_writer = 0: \
             the last reader skipped its kick — the missed wake-up of QEMU e3082ab3b3."
        } else {
            "  (not the e3082ab3b3 state: readers still hold the lock or no writer waits)"
        }
    );
    let _ = out.flush();
}
