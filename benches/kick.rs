//! `aio_wait` kick: with no waiter, with a waiter whose main loop is busy, and with one
//! whose main loop is blocked in the kernel; against the primitives a kick could be built
//! from. Waking a sleeper is timed as a whole hand-off — the wake-up until the woken
//! thread signals back — for the loop and for its peers alike (an eventfd reader blocked
//! in `read(2)`, a futex waiter blocked in `FUTEX_WAIT`), and each of those wake-ups
//! happens only once the sleeper's procfs state is `S` (checked outside the timed part).
//! The sleepers' voluntary context switches per wake-up go to
//! `<target>/criterion/kick/slept.json` as the proof that they slept.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use aioctx_aio::main_context;
use criterion::{Criterion, criterion_group, criterion_main};

#[allow(dead_code)]
#[path = "../cli/src/thread_probe.rs"]
mod thread_probe;
use thread_probe::ThreadProbe;

/// How long a sleeper may take to block before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// A thread that sleeps in the kernel between wake-ups and counts them.
struct Sleeper {
    probe: ThreadProbe,
    wakeups: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// Run by `drop` after `stop` is set, to wake the thread a last time.
    unblock: Box<dyn Fn()>,
    /// Wake-ups timed, and the sleeper's voluntary context switches over them.
    woken: Cell<u64>,
    switches: Cell<u64>,
}

impl Sleeper {
    /// Spawns `body(stop, wakeups)` on a thread of its own; `body` must bump `wakeups`
    /// after each wake-up and sleep again.
    fn spawn(
        name: &str,
        body: impl FnOnce(Arc<AtomicBool>, Arc<AtomicU64>) + Send + 'static,
        unblock: impl Fn() + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let wakeups = Arc::new(AtomicU64::new(0));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&wakeups));
        let (probe_tx, probe_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                probe_tx
                    .send(ThreadProbe::current().expect("procfs"))
                    .unwrap();
                body(s, w);
            })
            .unwrap();
        Self {
            probe: probe_rx.recv().unwrap(),
            wakeups,
            stop,
            thread: Some(thread),
            unblock: Box::new(unblock),
            woken: Cell::new(0),
            switches: Cell::new(0),
        }
    }

    fn wakeups(&self) -> u64 {
        // Acquire: pairs with the sleeper's Release increment after it woke.
        self.wakeups.load(Ordering::Acquire)
    }

    /// Wakes the sleeper `iters` times with `wake`, each time once it is blocked in the
    /// kernel; times each wake-up until the sleeper signals back.
    fn time_wakes(&self, iters: u64, wake: impl Fn()) -> Duration {
        let before = self.probe.voluntary_switches().unwrap();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let seen = self.wakeups();
            self.probe.wait_asleep("the sleeper", PATIENCE).unwrap();
            let t = Instant::now();
            wake();
            while self.wakeups() == seen {
                std::hint::spin_loop();
            }
            total += t.elapsed();
        }
        let after = self.probe.voluntary_switches().unwrap();
        self.woken.set(self.woken.get() + iters);
        self.switches.set(self.switches.get() + (after - before));
        total
    }

    /// Voluntary context switches of the sleeper per timed wake-up.
    fn slept_per_wake(&self) -> f64 {
        self.switches.get() as f64 / self.woken.get().max(1) as f64
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        // Relaxed: `unblock` wakes the thread, which then sees the flag.
        self.stop.store(true, Ordering::Relaxed);
        (self.unblock)();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The main loop on a thread of its own, inside `wait_while`, counting its wake-ups.
fn main_loop() -> Sleeper {
    let sleeper = Sleeper::spawn(
        "main-loop",
        |stop, wakeups| {
            main_context().make_current();
            aioctx_wait::wait_while(None, || {
                // Release: pairs with the Acquire load in `Sleeper::wakeups`.
                wakeups.fetch_add(1, Ordering::Release);
                // Relaxed: the kick that follows the store carries the wake-up.
                !stop.load(Ordering::Relaxed)
            });
        },
        aioctx_wait::kick,
    );
    while aioctx_wait::num_waiters() == 0 {
        thread::yield_now();
    }
    sleeper
}

fn eventfd() -> i32 {
    // SAFETY: creating an eventfd has no memory preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    fd
}

fn efd_write(fd: i32) -> isize {
    let one = 1u64;
    // SAFETY: `one` is a live 8-byte value, as eventfd writes require.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) }
}

/// A thread blocked in `read(2)` on a blocking eventfd.
fn eventfd_reader(fd: i32) -> Sleeper {
    Sleeper::spawn(
        "eventfd-reader",
        move |stop, wakeups| {
            loop {
                let mut v = 0u64;
                // SAFETY: `v` is a live, writable 8-byte buffer.
                let r = unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
                assert_eq!(r, 8);
                // Relaxed: the eventfd write that follows the store orders it.
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Release: pairs with the Acquire load in `Sleeper::wakeups`.
                wakeups.fetch_add(1, Ordering::Release);
            }
        },
        move || assert_eq!(efd_write(fd), 8),
    )
}

fn futex(word: &AtomicU32, op: i32, val: u32) -> i64 {
    // SAFETY: FUTEX_WAIT / FUTEX_WAKE only read the address of a live AtomicU32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    }
}

/// A thread blocked in `FUTEX_WAIT` on `word` while it is 0.
fn futex_waiter(word: &'static AtomicU32) -> Sleeper {
    Sleeper::spawn(
        "futex-waiter",
        move |stop, wakeups| {
            loop {
                // Acquire: pairs with the Release store in `futex_post`.
                while word.load(Ordering::Acquire) == 0 {
                    futex(word, libc::FUTEX_WAIT, 0);
                }
                // Relaxed: only this thread and `futex_post` (after the wake-up count
                // moved) touch the word.
                word.store(0, Ordering::Relaxed);
                // Relaxed: `futex_post`'s Release store orders it.
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Release: pairs with the Acquire load in `Sleeper::wakeups`.
                wakeups.fetch_add(1, Ordering::Release);
            }
        },
        move || futex_post(word),
    )
}

fn futex_post(word: &AtomicU32) {
    // Release: pairs with the waiter's Acquire load.
    word.store(1, Ordering::Release);
    futex(word, libc::FUTEX_WAKE, 1);
}

/// Writes the sleepers' voluntary context switches per timed wake-up next to criterion's
/// estimates, for `benches/report.sh`.
fn write_slept(rows: &[(&str, f64)]) {
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("criterion/kick");
    let body: Vec<String> = rows
        .iter()
        .map(|(name, s)| format!("\"{name}\": {s:.3}"))
        .collect();
    let text = format!("{{{}}}\n", body.join(", "));
    eprintln!("kick: sleepers' voluntary context switches per wake-up: {text}");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("slept.json"), text);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kick");

    // Floor: what `kick` is with no waiter, written by hand.
    let waiters = AtomicU32::new(0);
    g.bench_function("fence_load", |b| {
        b.iter(|| {
            fence(Ordering::SeqCst);
            black_box(waiters.load(Ordering::Relaxed))
        })
    });

    g.bench_function("aioctx_no_waiter", |b| b.iter(aioctx_wait::kick));

    let mut slept = Vec::new();
    {
        let waiter = main_loop();
        // Busy: the main loop spins for up to 1 s before it would sleep; only the
        // `kick()` call is timed, after the loop consumed the previous kick.
        main_context().set_poll_params(aioctx_aio::PollParams::up_to(
            std::time::Duration::from_secs(1),
        ));
        g.bench_function("aioctx_busy_loop", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let seen = waiter.wakeups();
                    let t = Instant::now();
                    aioctx_wait::kick();
                    total += t.elapsed();
                    while waiter.wakeups() == seen {
                        std::hint::spin_loop();
                    }
                }
                total
            })
        });
        main_context().set_poll_params(aioctx_aio::PollParams::OFF);
        g.bench_function("aioctx_sleeping_loop", |b| {
            b.iter_custom(|iters| waiter.time_wakes(iters, aioctx_wait::kick))
        });
        slept.push(("aioctx_sleeping_loop", waiter.slept_per_wake()));
    }

    {
        let fd = eventfd();
        let reader = eventfd_reader(fd);
        g.bench_function("eventfd_wake_blocked_reader", |b| {
            b.iter_custom(|iters| reader.time_wakes(iters, || assert_eq!(efd_write(fd), 8)))
        });
        slept.push(("eventfd_wake_blocked_reader", reader.slept_per_wake()));
        drop(reader);
        // SAFETY: `fd` is ours and its reader has exited.
        unsafe { libc::close(fd) };
    }

    {
        let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let waiter = futex_waiter(word);
        g.bench_function("futex_wake_blocked_waiter", |b| {
            b.iter_custom(|iters| waiter.time_wakes(iters, || futex_post(word)))
        });
        slept.push(("futex_wake_blocked_waiter", waiter.slept_per_wake()));
    }
    write_slept(&slept);

    // The syscalls alone, waking nobody: what a kick to a loop that is awake is spared.
    let efd = eventfd();
    g.bench_function("eventfd_write", |b| b.iter(|| black_box(efd_write(efd))));
    // SAFETY: `efd` is ours and no longer used.
    unsafe { libc::close(efd) };

    let word = AtomicU32::new(0);
    g.bench_function("futex_wake_no_waiter", |b| {
        b.iter(|| black_box(futex(&word, libc::FUTEX_WAKE, 1)))
    });

    let me = thread::current();
    g.bench_function("std_unpark", |b| b.iter(|| me.unpark()));
    thread::park_timeout(Duration::ZERO);

    let notify = tokio::sync::Notify::new();
    g.bench_function("tokio_notify_one", |b| b.iter(|| notify.notify_one()));

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
