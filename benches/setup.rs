//! The ring's setup flags, measured one against another on the same work: each row runs
//! once per setup (`none`, a plain ring; `coop_taskrun+taskrun_flag`;
//! `single_issuer`; `defer_taskrun`, which implies `single_issuer+taskrun_flag`;
//! `single_issuer+coop_taskrun+taskrun_flag`). Setups the kernel refuses are left out
//! with a printed line. `coop_taskrun+taskrun_flag` is the library's default
//! ([`RingFeatures::DEFAULT`]). The rows:
//!
//! - `nop_b1`, `nop_b32`: NOPs through the callback API (`submit_raw` + a callback,
//!   `poll(true)` until all completed), 1 or 32 per submission. NOPs complete inline
//!   at submission: the floor of what a flag can change.
//! - `pipe_read`: a read on an empty pipe is queued, then a byte is written to the pipe
//!   and `poll(true)` runs until the read completed. The read completes from the
//!   pipe's wake-up, through the kernel's task work: what `COOP_TASKRUN` and
//!   `DEFER_TASKRUN` change.
//! - `pingpong`: a bottom-half round trip between two IoThreads built with the setup,
//!   busy polling off (each thread sleeps in `io_uring_enter` while it waits): the
//!   cross-thread wake-up of a sleeping loop.
//!
//! One iteration is one NOP, one pipe read, or one round trip.
//!
//! [`RingFeatures::DEFAULT`]: aioctx_aio::RingFeatures::DEFAULT

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aioctx_aio::{AioContext, AioContextBuilder, Backend, PollParams};
use aioctx_testkit::{pipe, write_fd};
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use io_uring::{opcode, types};

#[path = "common/pingpong.rs"]
mod pingpong;

/// The setups compared, by the name the report uses.
fn setups() -> Vec<(&'static str, AioContextBuilder)> {
    // `COOP_TASKRUN` off: a plain ring (its `TASKRUN_FLAG` default goes with it).
    let b = || {
        AioContext::builder()
            .backend(Backend::IoUring)
            .coop_taskrun(false)
    };
    vec![
        ("none", b()),
        (
            "coop_taskrun+taskrun_flag",
            b().coop_taskrun(true).taskrun_flag(true),
        ),
        ("single_issuer", b().single_issuer(true)),
        ("defer_taskrun", b().defer_taskrun(true)),
        (
            "single_issuer+coop_taskrun+taskrun_flag",
            b().single_issuer(true)
                .coop_taskrun(true)
                .taskrun_flag(true),
        ),
    ]
}

/// Submits `n` NOPs with callbacks and polls until they all completed.
fn nops(ctx: &AioContext, done: &Arc<AtomicU64>, n: u64) {
    let target = done.load(Ordering::Relaxed) + n;
    for _ in 0..n {
        let d = Arc::clone(done);
        // SAFETY: a NOP names no memory.
        unsafe {
            ctx.submit_raw(
                opcode::Nop::new().build(),
                Box::new(move |res, _| {
                    assert_eq!(res, 0);
                    // Relaxed: read back on this thread, after the poll that ran it.
                    d.fetch_add(1, Ordering::Relaxed);
                }),
            )
        }
        .expect("submit_raw on an io_uring context");
    }
    while done.load(Ordering::Relaxed) < target {
        ctx.poll(true);
    }
}

fn nop_rows(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, ctx: &AioContext) {
    let done = Arc::new(AtomicU64::new(0));
    for batch in [1u64, 32] {
        g.bench_function(format!("{name}/nop_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(batch);
                    nops(ctx, &done, n);
                    left -= n;
                }
                t.elapsed()
            })
        });
    }
}

fn pipe_row(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, ctx: &AioContext) {
    let (r, w) = pipe();
    // The read's target: lives for the whole row, and every read completes (polled
    // below) before the next is queued and before this function returns.
    let mut buf = Box::new([0u8; 8]);
    let done = Arc::new(AtomicU64::new(0));
    g.bench_function(format!("{name}/pipe_read"), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let target = done.load(Ordering::Relaxed) + 1;
                let d = Arc::clone(&done);
                let sqe = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
                // SAFETY: `buf` outlives the read: the loop below polls until its
                // completion ran, before `buf` is touched again or dropped.
                unsafe {
                    ctx.submit_raw(
                        sqe,
                        Box::new(move |res, _| {
                            assert_eq!(res, 1);
                            // Relaxed: read back on this thread, after the poll that ran it.
                            d.fetch_add(1, Ordering::Relaxed);
                        }),
                    )
                }
                .expect("submit_raw on an io_uring context");
                // Let the read reach the kernel and find the pipe empty first.
                ctx.poll(false);
                write_fd(w.as_raw_fd(), b"x");
                while done.load(Ordering::Relaxed) < target {
                    ctx.poll(true);
                }
            }
            t.elapsed()
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("setup");
    for (name, builder) in setups() {
        let ctx = match builder.clone().build() {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("setup bench: {name} left out: {e}");
                continue;
            }
        };
        eprintln!(
            "setup bench: {name}: ring runs with {}",
            ctx.ring_features()
        );
        nop_rows(&mut g, name, &ctx);
        pipe_row(&mut g, name, &ctx);
        drop(ctx);
        pingpong::bench(
            &mut g,
            &format!("{name}/pingpong"),
            &builder.poll_params(PollParams::OFF),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
