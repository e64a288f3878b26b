//! Cross-thread wake-up round trip: a bottom-half ping-pong between two IoThreads,
//! against raw eventfds, std park/unpark, two tokio runtimes and io_uring MSG_RING.
//! One iteration is one round trip (A → B → A). The peers block at once, like IoThreads
//! with busy polling off; `eventfd_pingpong_spinning` busy-polls, like default IoThreads.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::Instant;

use aioctx_aio::{AioContext, IOTHREAD_POLL_MAX_NS};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common/pingpong.rs"]
mod pingpong;
use io_uring::{IoUring, opcode, squeue, types};

/// `poll_max_ns`: IoThreads' default busy polling, or 0 (block at once, like the peers).
fn aioctx_bh(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    poll_max_ns: u64,
) {
    let builder =
        AioContext::builder().poll_params(aioctx_aio::PollParams::from_qemu(poll_max_ns, 0, 0));
    pingpong::bench(c, name, &builder);
}

fn eventfd() -> i32 {
    // SAFETY: creating an eventfd has no memory preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    fd
}

fn efd_write(fd: i32) {
    let one = 1u64;
    // SAFETY: `one` is a live 8-byte value, as eventfd writes require.
    let r = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    assert_eq!(r, 8);
}

fn efd_read(fd: i32) {
    let mut v = 0u64;
    // SAFETY: `v` is a live, writable 8-byte buffer.
    let r = unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
    assert_eq!(r, 8);
}

fn raw_eventfd(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let (fa, fb) = (eventfd(), eventfd());
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let pong = thread::spawn(move || {
        loop {
            efd_read(fb);
            // Relaxed: the eventfd write that follows the store orders it.
            if s.load(Ordering::Relaxed) {
                break;
            }
            efd_write(fa);
        }
    });
    c.bench_function("eventfd_pingpong", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                efd_write(fb);
                efd_read(fa);
            }
            t.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    efd_write(fb);
    pong.join().unwrap();
    // SAFETY: both fds are ours and no longer used.
    unsafe {
        libc::close(fa);
        libc::close(fb);
    }
}

/// The busy-polling peer of the default IoThreads: the same eventfd ping-pong, but each
/// side polls its non-blocking eventfd with `read(2)` until the token is there instead of
/// blocking, so neither thread ever sleeps while its partner answers — as a busy-polling
/// IoThread does not.
fn spinning_eventfd(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let nonblocking = || {
        // SAFETY: creating an eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        fd
    };
    let spin_read = |fd: i32| {
        let mut v = 0u64;
        // SAFETY: `v` is a live, writable 8-byte buffer.
        while unsafe { libc::read(fd, (&raw mut v).cast(), 8) } != 8 {
            std::hint::spin_loop();
        }
    };
    let (fa, fb) = (nonblocking(), nonblocking());
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let pong = thread::spawn(move || {
        loop {
            spin_read(fb);
            // Relaxed: the eventfd write that follows the store orders it.
            if s.load(Ordering::Relaxed) {
                break;
            }
            efd_write(fa);
        }
    });
    c.bench_function("eventfd_pingpong_spinning", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                efd_write(fb);
                spin_read(fa);
            }
            t.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    efd_write(fb);
    pong.join().unwrap();
    // SAFETY: both fds are ours and no longer used.
    unsafe {
        libc::close(fa);
        libc::close(fb);
    }
}

fn std_park(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // 0: ping's turn, 1: pong's turn, 2: stop.
    let turn = Arc::new(AtomicU32::new(0));
    let t2 = Arc::clone(&turn);
    let ping = thread::current();
    let pong = thread::spawn(move || {
        loop {
            // Acquire: pairs with ping's Release store of the turn.
            match t2.load(Ordering::Acquire) {
                1 => {
                    // Release: pairs with ping's Acquire load.
                    t2.store(0, Ordering::Release);
                    ping.unpark();
                }
                2 => break,
                _ => thread::park(),
            }
        }
    });
    let pong_t = pong.thread().clone();
    c.bench_function("std_park_unpark", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                // Release: pairs with pong's Acquire load.
                turn.store(1, Ordering::Release);
                pong_t.unpark();
                // Acquire: pairs with pong's Release store.
                while turn.load(Ordering::Acquire) != 0 {
                    thread::park();
                }
            }
            t.elapsed()
        })
    });
    // Release: pairs with pong's Acquire load.
    turn.store(2, Ordering::Release);
    pong_t.unpark();
    pong.join().unwrap();
}

fn tokio_notify(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let na = Arc::new(tokio::sync::Notify::new());
    let nb = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (na2, nb2, s) = (Arc::clone(&na), Arc::clone(&nb), Arc::clone(&stop));
    let pong = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            loop {
                nb2.notified().await;
                // Relaxed: the notify that follows the store orders it.
                if s.load(Ordering::Relaxed) {
                    break;
                }
                na2.notify_one();
            }
        });
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("tokio_notify_runtimes", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    nb.notify_one();
                    na.notified().await;
                }
                t.elapsed()
            })
        })
    });
    stop.store(true, Ordering::Relaxed);
    nb.notify_one();
    pong.join().unwrap();
}

const STOP: u64 = u64::MAX;

fn msg_ring(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let mut ring_a = IoUring::new(64).unwrap();
    let mut ring_b = IoUring::new(64).unwrap();
    let (fd_a, fd_b) = (ring_a.as_raw_fd(), ring_b.as_raw_fd());
    let msg = |to: i32, data: u64| {
        opcode::MsgRingData::new(types::Fd(to), 0, data, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
    };
    let pong = thread::spawn(move || {
        loop {
            ring_b.submit_and_wait(1).unwrap();
            let data = ring_b.completion().next().unwrap().user_data();
            if data == STOP {
                break;
            }
            // SAFETY: MSG_RING names only a ring fd, which outlives the operation.
            unsafe { ring_b.submission().push(&msg(fd_a, 1)).unwrap() };
        }
        ring_b
    });
    c.bench_function("uring_msg_ring", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: MSG_RING names only a ring fd, which outlives the operation.
                unsafe { ring_a.submission().push(&msg(fd_b, 1)).unwrap() };
                ring_a.submit_and_wait(1).unwrap();
                let cqe = ring_a.completion().next().unwrap();
                assert!(cqe.result() >= 0, "MSG_RING: {}", cqe.result());
            }
            t.elapsed()
        })
    });
    // SAFETY: as above.
    unsafe { ring_a.submission().push(&msg(fd_b, STOP)).unwrap() };
    ring_a.submit().unwrap();
    drop(pong.join().unwrap());
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("wake");
    raw_eventfd(&mut g);
    spinning_eventfd(&mut g);
    aioctx_bh(&mut g, "aioctx_bh_iothreads", IOTHREAD_POLL_MAX_NS);
    aioctx_bh(&mut g, "aioctx_bh_iothreads_no_busy_poll", 0);
    std_park(&mut g);
    tokio_notify(&mut g);
    msg_ring(&mut g);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
