//! fd handlers: level-triggered read and write callbacks on pipes and
//! sockets, handlers added, replaced and removed from other threads (a sleeping loop is
//! woken to apply the change), and a handler removing itself.
#![cfg(not(loom))]

mod common;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use aioctx::aio::{AioContext, EventNotifier};
use common::{Watchdog, new_ctx, wait_asleep};

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let res = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(res, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two descriptors; nobody else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (r.into(), w.into())
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count_cb(c: &Arc<AtomicUsize>) -> Box<dyn FnMut() + Send> {
    let c = Arc::clone(c);
    Box::new(move || {
        c.fetch_add(1, Ordering::Relaxed);
    })
}

fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}

/// Fills a non-blocking pipe or socket until the kernel says it is full.
fn fill(w: &mut impl Write) {
    let buf = [0u8; 65536];
    loop {
        match w.write(&buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("fill: {e}"),
        }
    }
}

/// Reads everything available from a non-blocking pipe or socket.
fn drain(r: &mut impl Read) {
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("drain: {e}"),
        }
    }
}

#[test]
fn write_handler_is_level_triggered_on_a_pipe() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (mut r, mut w) = pipe();
    let writes = counter();
    ctx.set_fd_handler(w.as_raw_fd(), None, Some(count_cb(&writes)))
        .unwrap();

    // An empty pipe is writable: the handler runs on every poll while it stays so.
    for i in 1..=5 {
        assert!(
            ctx.poll(false),
            "poll {i}: a writable pipe's handler did not run"
        );
        assert_eq!(get(&writes), i);
    }

    // A full pipe is not writable: nothing runs.
    fill(&mut w);
    while ctx.poll(false) {}
    let n = get(&writes);
    for _ in 0..5 {
        assert!(!ctx.poll(false));
    }
    assert_eq!(get(&writes), n);

    // Room again: the armed poll completes and the handler runs again, every poll.
    drain(&mut r);
    for i in 1..=3 {
        assert!(ctx.poll(true), "a writable pipe's handler did not run");
        assert_eq!(get(&writes), n + i);
    }

    ctx.set_fd_handler(w.as_raw_fd(), None, None).unwrap();
    let n = get(&writes);
    assert!(!ctx.poll(false));
    assert!(!ctx.poll(false));
    assert_eq!(get(&writes), n);
}

#[test]
fn read_handler_is_level_triggered_on_a_pipe() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (mut r, mut w) = pipe();
    let reads = counter();
    ctx.set_fd_handler(r.as_raw_fd(), Some(count_cb(&reads)), None)
        .unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(get(&reads), 0);

    w.write_all(b"x").unwrap();
    // Unread data keeps the fd readable: the handler runs on every poll.
    for i in 1..=5 {
        assert!(ctx.poll(i % 2 == 0));
        assert_eq!(get(&reads), i);
    }
    drain(&mut r);
    while ctx.poll(false) {}
    let n = get(&reads);
    assert!(!ctx.poll(false));
    assert_eq!(get(&reads), n);

    // Hang-up counts as readable (the handler sees EOF).
    drop(w);
    assert!(ctx.poll(true));
    assert_eq!(get(&reads), n + 1);
    ctx.set_fd_handler(r.as_raw_fd(), None, None).unwrap();
    assert!(!ctx.poll(false));
}

#[test]
fn read_and_write_handlers_on_one_socket() {
    let ctx = new_ctx();
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let (reads, writes) = (counter(), counter());
    ctx.set_fd_handler(
        a.as_raw_fd(),
        Some(count_cb(&reads)),
        Some(count_cb(&writes)),
    )
    .unwrap();

    assert!(ctx.poll(false));
    assert_eq!((get(&reads), get(&writes)), (0, 1));
    b.write_all(b"ping").unwrap();
    assert!(ctx.poll(false));
    assert_eq!((get(&reads), get(&writes)), (1, 2));

    // Replace with a read-only handler: writability no longer dispatches anything.
    let reads2 = counter();
    ctx.set_fd_handler(a.as_raw_fd(), Some(count_cb(&reads2)), None)
        .unwrap();
    assert!(ctx.poll(false));
    assert_eq!(get(&reads2), 1);
    let mut a = a;
    drain(&mut a);
    while ctx.poll(false) {}
    let n = get(&reads2);
    assert!(!ctx.poll(false));
    assert_eq!(get(&reads2), n);
    assert_eq!(
        (get(&reads), get(&writes)),
        (1, 2),
        "a replaced handler ran"
    );
    ctx.set_fd_handler(a.as_raw_fd(), None, None).unwrap();
}

#[test]
fn handler_replaced_and_removed_from_another_thread() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let e = EventNotifier::new().unwrap();
    e.set().unwrap(); // stays readable: level-triggered handlers keep firing
    let (old, new) = (counter(), counter());
    ctx.set_fd_handler(e.fd(), Some(count_cb(&old)), None)
        .unwrap();
    for i in 1..=3 {
        assert!(ctx.poll(false));
        assert_eq!(get(&old), i);
    }

    thread::scope(|s| {
        s.spawn(|| {
            ctx.set_fd_handler(e.fd(), Some(count_cb(&new)), None)
                .unwrap()
        });
    });
    // Once the replacing call returned, the old callbacks never run again.
    let old_final = get(&old);
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert_eq!(
        get(&old),
        old_final,
        "a replaced handler ran after the replacement"
    );
    assert!(
        get(&new) >= 4,
        "the new handler did not take over: {}",
        get(&new)
    );

    thread::scope(|s| {
        s.spawn(|| ctx.set_fd_handler(e.fd(), None, None).unwrap());
    });
    assert!(!ctx.has_fd_handler(e.fd()));
    let new_final = get(&new);
    for _ in 0..5 {
        assert!(!ctx.poll(false));
    }
    assert_eq!(get(&new), new_final, "a removed handler ran");
    assert!(e.test_and_clear().unwrap());
}

#[test]
fn handler_added_from_another_thread_wakes_a_sleeping_loop() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let e = Arc::new(EventNotifier::new().unwrap());
    e.set().unwrap();
    let runs = counter();

    let (ctx2, runs2) = (Arc::clone(&ctx), Arc::clone(&runs));
    let sleeper = thread::spawn(move || {
        while ctx2.poll(false) {}
        let mut polls = 0;
        while get(&runs2) == 0 {
            ctx2.poll(true);
            polls += 1;
        }
        polls
    });
    wait_asleep(&ctx, 1);
    let before = ctx.stats();
    let e2 = Arc::clone(&e);
    let r = Arc::clone(&runs);
    ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            e2.test_and_clear().unwrap();
            r.fetch_add(1, Ordering::Relaxed);
        })),
        None,
    )
    .unwrap();
    let polls = sleeper.join().expect("sleeper panicked");
    assert_eq!(get(&runs), 1);
    // The woken poll applies nothing (it was asleep past that point); the next one arms
    // the handler, whose fd is already readable.
    assert!(polls <= 2, "took {polls} polls");
    assert_eq!(ctx.stats().eventfd_writes - before.eventfd_writes, 1);
    ctx.set_fd_handler(e.fd(), None, None).unwrap();
}

#[test]
fn handler_removing_itself_never_runs_again() {
    let ctx = new_ctx();
    let e = Arc::new(EventNotifier::new().unwrap());
    e.set().unwrap();
    let runs = counter();
    let (weak, r, fd) = (Arc::downgrade(&ctx), Arc::clone(&runs), e.fd());
    ctx.set_fd_handler(
        fd,
        Some(Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
            let ctx: Arc<AioContext> = weak.upgrade().unwrap();
            ctx.set_fd_handler(fd, None, None).unwrap();
        })),
        None,
    )
    .unwrap();
    assert!(ctx.poll(false));
    for _ in 0..5 {
        assert!(!ctx.poll(false));
    }
    assert_eq!(get(&runs), 1);
    assert_eq!(
        Arc::strong_count(&runs),
        1,
        "the removed handler was not freed"
    );
    assert!(!ctx.has_fd_handler(fd));
}

#[test]
fn handler_churn_from_other_threads() {
    // Threads keep adding, replacing and removing handlers of always-readable eventfds
    // while the home thread polls; then final handlers are set. Every final handler must
    // fire (no lost arm), no replaced handler may run after its replacement, and once
    // all are removed the loop is quiet. (How much of the churn overlaps the home
    // thread's polls depends on scheduling; the checks do not.)
    const FDS: usize = 8;
    const OPS: usize = 3000;
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let notifiers: Vec<EventNotifier> = (0..FDS)
        .map(|_| {
            let e = EventNotifier::new().unwrap();
            e.set().unwrap();
            e
        })
        .collect();
    let churn_runs = counter();
    let done = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..3u64 {
            let (ctx, notifiers, churn_runs, done) = (&ctx, &notifiers, &churn_runs, &done);
            s.spawn(move || {
                let mut x = t + 1;
                for _ in 0..OPS {
                    // xorshift: a cheap, seeded sequence of (fd, action).
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let fd = notifiers[(x % FDS as u64) as usize].fd();
                    match (x >> 8) % 3 {
                        0 => ctx.set_fd_handler(fd, None, None).unwrap(),
                        1 => ctx
                            .set_fd_handler(fd, Some(count_cb(churn_runs)), None)
                            .unwrap(),
                        _ => ctx
                            .set_fd_handler(
                                fd,
                                Some(count_cb(churn_runs)),
                                Some(count_cb(churn_runs)),
                            )
                            .unwrap(),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while done.load(Ordering::Relaxed) < 3 {
            ctx.poll(false);
        }
    });

    let finals: Vec<Arc<AtomicUsize>> = (0..FDS).map(|_| counter()).collect();
    for (e, c) in notifiers.iter().zip(&finals) {
        ctx.set_fd_handler(e.fd(), Some(count_cb(c)), None).unwrap();
    }
    let churn_final = get(&churn_runs);
    while finals.iter().any(|c| get(c) < 3) {
        ctx.poll(true);
    }
    assert_eq!(get(&churn_runs), churn_final, "a replaced handler ran");
    for e in &notifiers {
        ctx.set_fd_handler(e.fd(), None, None).unwrap();
    }
    while ctx.poll(false) {}
    let totals: Vec<usize> = finals.iter().map(|c| get(c)).collect();
    for _ in 0..10 {
        assert!(!ctx.poll(false));
    }
    assert_eq!(totals, finals.iter().map(|c| get(c)).collect::<Vec<_>>());
}

/// A regular file (poll(2) calls it always readable and writable), unlinked at once.
fn regular_file(tag: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("aioctx-fd-{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create a temp file");
    std::fs::remove_file(&path).expect("unlink the temp file");
    f
}

#[test]
fn regress_handler_on_a_regular_file_runs_every_poll() {
    // poll(2) reports a regular file always ready, and io_uring's POLL_ADD completes at
    // once on it; epoll refuses it (EPERM). Both back ends must run its handlers every
    // poll, and a blocking poll must not sleep while it is ready.
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let file = regular_file("handler");
    let (reads, writes) = (counter(), counter());
    ctx.set_fd_handler(
        file.as_raw_fd(),
        Some(count_cb(&reads)),
        Some(count_cb(&writes)),
    )
    .expect("a regular file takes a handler");
    for n in 1..=5 {
        assert!(ctx.poll(n % 2 == 0), "poll {n} ran nothing");
        assert_eq!((get(&reads), get(&writes)), (n, n), "after poll {n}");
    }
    assert!(ctx.has_fd_handler(file.as_raw_fd()));
    // Read handler only: the write callback is not run.
    let only_read = counter();
    ctx.set_fd_handler(file.as_raw_fd(), Some(count_cb(&only_read)), None)
        .unwrap();
    assert!(ctx.poll(true));
    assert_eq!(get(&only_read), 1);
    assert_eq!(get(&writes), 5);
    ctx.set_fd_handler(file.as_raw_fd(), None, None).unwrap();
    ctx.poll(false);
    assert!(!ctx.poll(false), "a removed handler ran");
    assert_eq!(get(&only_read), 1);
}

#[test]
fn regress_handler_on_a_closed_regular_file_is_removed() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let file = regular_file("closed");
    let fd = file.as_raw_fd();
    let reads = counter();
    ctx.set_fd_handler(fd, Some(count_cb(&reads)), None)
        .unwrap();
    assert!(ctx.poll(false));
    assert_eq!(get(&reads), 1);
    drop(file); // closed while registered
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert!(
        !ctx.has_fd_handler(fd),
        "the handler of a closed file stayed"
    );
    let after = get(&reads);
    assert!(after <= 2, "ran {after} times, closed after the first");
    assert!(!ctx.poll(false));
}
