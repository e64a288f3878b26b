//! Ring setup flags: each accepted setup runs a full loop round (BH, timer, raw NOP,
//! typed pipe I/O, fd handler), wakes from another thread's notify, and shows a
//! completion to a non-blocking poll without a sleep (the lost wake-up that
//! `DEFER_TASKRUN`/`COOP_TASKRUN` invite when the loop does not enter with
//! `GETEVENTS`). Setups the kernel refuses are skipped with a printed line; refused
//! combinations carry the kernel's errno and name the flags. Sizes and `IOPOLL` are
//! checked on both back ends.
#![cfg(not(loom))]

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aioctx::aio::io_uring::{opcode, types};
use aioctx::aio::{
    AioContext, AioContextBuilder, Backend, ClockType, EventNotifier, RingFeatures, RingSetupError,
};
use common::{Watchdog, pipe, say_skipped, write_fd};

/// The setups under test: a name, the builder, and the flags that must be on.
fn setups() -> Vec<(&'static str, AioContextBuilder, RingFeatures)> {
    // COOP_TASKRUN off; TASKRUN_FLAG then only where a flag implies it.
    let b = || AioContext::builder().coop_taskrun(false);
    vec![
        ("none", b(), RingFeatures::NONE),
        ("default", AioContext::builder(), RingFeatures::NONE),
        (
            "coop_taskrun without taskrun_flag",
            b().coop_taskrun(true).taskrun_flag(false),
            RingFeatures::COOP_TASKRUN,
        ),
        (
            "coop_taskrun+taskrun_flag",
            b().coop_taskrun(true).taskrun_flag(true),
            RingFeatures::COOP_TASKRUN | RingFeatures::TASKRUN_FLAG,
        ),
        (
            "single_issuer",
            b().single_issuer(true),
            RingFeatures::SINGLE_ISSUER,
        ),
        (
            "defer_taskrun (implies single_issuer, taskrun_flag)",
            b().defer_taskrun(true),
            RingFeatures::DEFER_TASKRUN | RingFeatures::SINGLE_ISSUER | RingFeatures::TASKRUN_FLAG,
        ),
        (
            "defer_taskrun without taskrun_flag",
            b().defer_taskrun(true).taskrun_flag(false),
            RingFeatures::DEFER_TASKRUN | RingFeatures::SINGLE_ISSUER,
        ),
        (
            "single_issuer+coop_taskrun+taskrun_flag",
            b().single_issuer(true)
                .coop_taskrun(true)
                .taskrun_flag(true),
            RingFeatures::SINGLE_ISSUER | RingFeatures::COOP_TASKRUN | RingFeatures::TASKRUN_FLAG,
        ),
        (
            "sqpoll",
            AioContext::builder().sqpoll(Duration::from_millis(20)),
            RingFeatures::SQPOLL,
        ),
    ]
}

/// The context of one setup, or `None` with a printed line when this run is on epoll
/// or the kernel refuses the setup.
fn build(test: &str, name: &str, builder: AioContextBuilder) -> Option<Arc<AioContext>> {
    let what = format!("{test} [{name}]");
    match common::try_uring_ctx(&what, builder) {
        Ok(ctx) => ctx,
        Err(e) => {
            let refusal = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<RingSetupError>())
                .unwrap_or_else(|| panic!("{what}: not a RingSetupError: {e}"));
            say_skipped(&format!(
                "skipped {what}: the kernel refuses {} (errno {}): {e}",
                refusal.requested(),
                refusal.errno()
            ));
            None
        }
    }
}

/// Every setup, each on a fresh context, with `run` on the context's home thread.
fn each_setup(test: &str, run: impl Fn(&str, Arc<AioContext>)) {
    for (name, builder, must) in setups() {
        let Some(ctx) = build(test, name, builder) else {
            continue;
        };
        assert!(
            ctx.ring_features().contains(must),
            "{test} [{name}]: ring runs with {}, wanted at least {must}",
            ctx.ring_features()
        );
        run(name, ctx);
    }
}

#[test]
fn full_round_on_each_setup() {
    each_setup("full_round_on_each_setup", |name, ctx| {
        let _dog = Watchdog::for_ctx(name, &ctx);
        // BH
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        ctx.schedule_oneshot(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        // Timer
        let r = Arc::clone(&ran);
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        timer.modify(ClockType::Realtime.now_ns() + 1_000_000);
        // Raw NOP
        let r = Arc::clone(&ran);
        // SAFETY: a NOP names no memory and no descriptor.
        unsafe {
            ctx.submit_raw(
                opcode::Nop::new().build(),
                Box::new(move |res, _| {
                    assert_eq!(res, 0);
                    r.fetch_add(1, Ordering::Relaxed);
                }),
            )
        }
        .unwrap();
        // fd handler
        let e = Arc::new(EventNotifier::new().unwrap());
        let e2 = Arc::clone(&e);
        let r = Arc::clone(&ran);
        ctx.set_fd_handler(
            e.fd(),
            Some(Box::new(move || {
                if e2.test_and_clear().unwrap() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            })),
            None,
        )
        .unwrap();
        e.set().unwrap();
        while ran.load(Ordering::Relaxed) < 4 {
            ctx.poll(true);
        }
        ctx.set_fd_handler(e.fd(), None, None).unwrap();
        // Typed I/O on a pipe, in a task.
        let (rd, wr) = pipe();
        let c = Arc::clone(&ctx);
        let fd = rd.as_raw_fd();
        let task = ctx.spawn(async move { c.read_at(fd, vec![0u8; 3], 0).await });
        write_fd(wr.as_raw_fd(), b"abc");
        let (res, buf) = ctx.block_on(task).unwrap();
        assert_eq!(res.unwrap(), 3, "[{name}]");
        assert_eq!(&buf, b"abc");
    });
}

/// Arms a raw read of one byte on `fd`; `done` is set by its completion.
fn arm_read(ctx: &AioContext, fd: i32, done: &Arc<AtomicBool>) {
    let mut buf = Box::new([0u8; 1]);
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 1).build();
    let done = Arc::clone(done);
    // SAFETY: the buffer is a heap box moved into the callback, which the loop keeps
    // until the CQE; `fd` is the test's pipe, open until after the completion.
    unsafe {
        ctx.submit_raw(
            entry,
            Box::new(move |res, _| {
                drop(buf);
                // A cancel at drop reports ECANCELED; only the read counts.
                done.store(res == 1, Ordering::Relaxed);
            }),
        )
    }
    .unwrap();
}

/// The lost wake-up class of setup rule [S2]: a completion the kernel holds until the
/// home thread enters with GETEVENTS must be seen by one non-blocking poll, whether the
/// data came from this thread or another one.
#[test]
fn nonblocking_poll_sees_a_completion_without_a_sleep() {
    each_setup("nonblocking_poll_sees_a_completion", |name, ctx| {
        let _dog = Watchdog::for_ctx(name, &ctx);
        for from_other_thread in [false, true] {
            let (rd, wr) = pipe();
            let done = Arc::new(AtomicBool::new(false));
            arm_read(&ctx, rd.as_raw_fd(), &done);
            // Submit it: the pipe is empty, so the kernel parks the read on a poll.
            ctx.poll(false);
            assert!(!done.load(Ordering::Relaxed));
            let wfd = wr.as_raw_fd();
            if from_other_thread {
                std::thread::scope(|s| {
                    s.spawn(|| write_fd(wfd, b"x"));
                });
            } else {
                write_fd(wfd, b"x");
            }
            // The completion is due now; SQPOLL's kernel thread may still be on its way
            // to post it, every other setup has it queued for this thread.
            let mut polls = 0;
            while !done.load(Ordering::Relaxed) {
                assert!(
                    polls < 1 || ctx.ring_features().contains(RingFeatures::SQPOLL),
                    "[{name}] (writer on {} thread): poll(false) did not see a due \
                     completion; features {}",
                    if from_other_thread { "another" } else { "this" },
                    ctx.ring_features()
                );
                ctx.poll(false);
                polls += 1;
                if polls > 1 {
                    std::thread::yield_now();
                }
            }
        }
    });
}

#[test]
fn notify_from_another_thread_wakes_a_sleeping_loop_on_each_setup() {
    each_setup("notify_wakes_each_setup", |name, ctx| {
        let _dog = Watchdog::for_ctx(name, &ctx);
        ctx.poll(false); // bind home
        for round in 0..20u64 {
            let ran = Arc::new(AtomicBool::new(false));
            let bh = {
                let ran = Arc::clone(&ran);
                ctx.bh_new(move || ran.store(true, Ordering::Relaxed))
            };
            let sleeps = ctx.stats().sleeps;
            let c = Arc::clone(&ctx);
            let t = std::thread::spawn(move || {
                // Kick while the loop sleeps, or is about to: either way it must wake.
                common::wait_until("loop asleep", || c.stats().sleeps > sleeps);
                if round % 2 == 0 {
                    bh.schedule();
                } else {
                    c.notify();
                    bh.schedule();
                }
                bh
            });
            while !ran.load(Ordering::Relaxed) {
                ctx.poll(true);
            }
            drop(t.join().unwrap());
            let _ = name;
        }
    });
}

#[test]
fn bad_combinations_are_refused_with_the_kernels_reason() {
    if let Ok(v) = std::env::var(aioctx::aio::RING_SETUP_ENV) {
        // It sets every builder's flags: "taskrun_flag alone" is not alone then.
        say_skipped(&format!(
            "skipped bad_combinations_are_refused_with_the_kernels_reason: {}={v} changes the \
             flags of the combinations under test",
            aioctx::aio::RING_SETUP_ENV
        ));
        return;
    }
    let Some(_probe) = common::uring_ctx("bad_combinations", AioContext::builder()) else {
        return;
    };
    // The kernel rejects DEFER_TASKRUN without SINGLE_ISSUER, and TASKRUN_FLAG alone.
    for (what, builder) in [
        (
            "defer_taskrun without single_issuer",
            AioContext::builder()
                .defer_taskrun(true)
                .single_issuer(false),
        ),
        (
            "taskrun_flag alone",
            AioContext::builder().coop_taskrun(false).taskrun_flag(true),
        ),
        (
            "sqpoll with coop_taskrun",
            AioContext::builder()
                .sqpoll(Duration::from_millis(10))
                .coop_taskrun(true),
        ),
    ] {
        let e = builder.backend(Backend::IoUring).build().expect_err(what);
        let refusal = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<RingSetupError>())
            .unwrap_or_else(|| panic!("{what}: not a RingSetupError: {e}"));
        assert_eq!(refusal.errno(), libc::EINVAL, "{what}: {e}");
        assert!(e.to_string().contains("EINVAL") || e.to_string().contains("Invalid argument"));
        assert!(
            e.to_string().contains(&refusal.requested().to_string()),
            "{what}: the message names the flags: {e}"
        );
        // `Auto` does not fall back to epoll for flags the caller asked for.
        if std::env::var(aioctx::aio::BACKEND_ENV).is_err() {
            assert!(
                builder_auto(what).is_err(),
                "{what}: Auto fell back instead of refusing"
            );
        }
    }
}

fn builder_auto(what: &str) -> std::io::Result<Arc<AioContext>> {
    let b = match what {
        "defer_taskrun without single_issuer" => AioContext::builder()
            .defer_taskrun(true)
            .single_issuer(false),
        "taskrun_flag alone" => AioContext::builder().coop_taskrun(false).taskrun_flag(true),
        _ => AioContext::builder()
            .sqpoll(Duration::from_millis(10))
            .coop_taskrun(true),
    };
    b.build()
}

/// Checked before any kernel call, so both back ends say the same.
#[test]
fn sizes_and_iopoll_are_checked_on_every_backend() {
    for backend in [Backend::Epoll, Backend::Auto] {
        let err = |b: AioContextBuilder| b.backend(backend).build().expect_err("refused");
        let e = err(AioContext::builder().ring_entries(64).cq_entries(32));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("CQ size 32"), "{e}");
        let e = err(AioContext::builder().cq_entries(70_000));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let e = err(AioContext::builder().iopoll(true));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("IOPOLL"), "{e}");
        let e = err(AioContext::builder().sqpoll_cpu(0));
        assert!(e.to_string().contains("SQPOLL"), "{e}");
    }
    let ctx = AioContext::builder()
        .backend(Backend::Epoll)
        .build()
        .unwrap();
    assert_eq!(ctx.ring_features(), RingFeatures::NONE);
    assert_eq!(ctx.ring_features().to_string(), "none");
}

#[test]
fn cq_size_is_applied() {
    let Some(ctx) = common::uring_ctx(
        "cq_size_is_applied",
        AioContext::builder().ring_entries(16).cq_entries(100),
    ) else {
        return;
    };
    assert_eq!(ctx.ring_entries(), (16, 128));
}

/// A single-issuer context polled on one thread and dropped on another with an
/// operation in flight: the drop cannot enter the ring, and must neither panic nor free
/// the buffer under the kernel (it leaks it instead; setup rule [S3]).
#[test]
fn single_issuer_context_dropped_on_another_thread() {
    let Some(ctx) = common::uring_ctx(
        "single_issuer_dropped_elsewhere",
        AioContext::builder().single_issuer(true),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("single_issuer_dropped_elsewhere", &ctx);
    let (rd, _wr) = pipe();
    let done = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&ctx);
    let fd = rd.as_raw_fd();
    let d = Arc::clone(&done);
    std::thread::spawn(move || {
        arm_read(&c, fd, &d);
        c.poll(false);
    })
    .join()
    .unwrap();
    drop(ctx);
    // Leaked, not completed: nothing ran the callback, nothing freed its buffer.
    assert!(!done.load(Ordering::Relaxed));
}

#[test]
fn features_display() {
    assert_eq!(
        (RingFeatures::COOP_TASKRUN | RingFeatures::TASKRUN_FLAG).to_string(),
        "coop_taskrun+taskrun_flag"
    );
    assert_eq!(RingFeatures::NONE.to_string(), "none");
    assert_eq!(
        RingFeatures::DEFAULT.difference(RingFeatures::DEFAULT),
        RingFeatures::NONE
    );
}

#[test]
fn iothread_pinned_to_a_cpu_runs_there() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
    let it = aioctx::aio::IoThread::with_builder("pinned", AioContext::builder().iothread_cpu(cpu))
        .unwrap();
    assert_eq!(it.cpu(), Some(cpu));
    let (tx, rx) = std::sync::mpsc::channel();
    it.ctx().schedule_oneshot(move || {
        // SAFETY: an all-zero cpu_set_t is valid; the call fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
        let res =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(res, 0);
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: in range of the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect();
        // SAFETY: sched_getcpu has no preconditions.
        tx.send((cpus, unsafe { libc::sched_getcpu() })).unwrap();
    });
    let (cpus, on) = rx
        .recv_timeout(common::HANG_LIMIT)
        .expect("the pinned IoThread ran the BH");
    assert_eq!(cpus, vec![cpu]);
    assert_eq!(usize::try_from(on).unwrap(), cpu);
}

#[test]
fn iothread_pinned_to_a_missing_cpu_is_refused() {
    for cpu in [4095, 1 << 20] {
        let e = aioctx::aio::IoThread::with_builder(
            "pinned-missing",
            AioContext::builder().iothread_cpu(cpu),
        )
        .expect_err("no such CPU");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("CPU {cpu}")) && msg.contains("allowed"),
            "{msg}"
        );
    }
}
