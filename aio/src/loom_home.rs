//! loom models of the home-thread fast path ([N5] and [N6] (`notify.rs`)) next to the
//! cross-thread path, on the shared loop model (`loom_loop.rs`), which runs the real
//! `NotifyState`, BH list and sleep decision.

use std::collections::VecDeque;

use crate::bh::BhInner;
use crate::loom_loop::Loop;
use crate::notify::Notified;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// A BH that bumps `ran` and, when `then` is set, schedules `then` from inside its
/// callback (on the home thread, inside `poll`: the fast path).
fn bh(l: &Arc<Loop>, then: Option<Arc<BhInner>>) -> Arc<BhInner> {
    let l = Arc::clone(l);
    BhInner::new(
        Box::new(move || {
            l.ran.fetch_add(1, Ordering::Relaxed);
            if let Some(next) = &then {
                assert!(l.schedule(next));
            }
        }),
        0,
    )
}

/// The home thread schedules BHs itself (before polling, and from inside a BH's
/// callback) while another thread schedules one: every BH runs, none is left behind a
/// sleep, and the home thread's own schedules never write the eventfd.
#[test]
fn home_and_cross_thread_schedules_all_run() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let l = Arc::new(Loop::new());
        l.notify.bind_home();
        let chained = bh(&l, None);
        let home_bh = bh(&l, Some(chained));
        let remote_bh = bh(&l, None);
        let producer = {
            let (l, remote_bh) = (Arc::clone(&l), Arc::clone(&remote_bh));
            loom::thread::spawn(move || {
                assert!(!l.notify.is_home());
                assert!(l.schedule(&remote_bh));
            })
        };
        assert!(l.notify.is_home());
        assert!(l.schedule(&home_bh));
        let mut incoming = VecDeque::new();
        while l.ran.load(Ordering::Relaxed) < 3 {
            l.poll_blocking(&mut incoming);
        }
        producer.join().unwrap();
        assert_eq!(l.ran.load(Ordering::Relaxed), 3);
    });
}

/// A bare notify by the home thread (no work published) keeps its next blocking poll
/// from sleeping, as a cross-thread notify does: with no other thread, a sleep here
/// would be a deadlock loom reports.
#[test]
fn home_bare_notify_keeps_the_next_poll_awake() {
    loom::model(|| {
        let l = Arc::new(Loop::new());
        l.notify.bind_home();
        assert_eq!(l.notify.notify(), Notified::Home);
        let mut incoming = VecDeque::new();
        l.poll_blocking(&mut incoming);
        // Accepted: the next notify is the home thread's again, and cheap.
        assert_eq!(l.notify.notify(), Notified::Home);
        l.poll_blocking(&mut incoming);
    });
}

/// A home-thread notify inside the sleep window (`notify_me` raised: only code the
/// wait itself runs can do that) takes the cross-thread path and asks for the eventfd
/// write, which ends the wait; before or after the window it is the fast path.
#[test]
fn home_notify_inside_the_sleep_window_writes_the_eventfd() {
    loom::model(|| {
        let l = Loop::new();
        l.notify.bind_home();
        assert!(l.notify.prepare_sleep());
        assert_eq!(l.notify.notify(), Notified::Asleep);
        l.notify.finish_sleep();
        l.notify.accept();
        assert_eq!(l.notify.notify(), Notified::Home);
    });
}

/// Another thread that notifies while the home thread's fast-path notify is pending
/// still gets its work seen, and its eventfd write (if any) consumed.
#[test]
fn cross_thread_notify_racing_a_pending_home_notify() {
    loom::model(|| {
        let l = Arc::new(Loop::new());
        l.notify.bind_home();
        let remote_bh = bh(&l, None);
        assert_eq!(l.notify.notify(), Notified::Home);
        let producer = {
            let (l, remote_bh) = (Arc::clone(&l), Arc::clone(&remote_bh));
            loom::thread::spawn(move || assert!(l.schedule(&remote_bh)))
        };
        let mut incoming = VecDeque::new();
        while l.ran.load(Ordering::Relaxed) < 1 {
            l.poll_blocking(&mut incoming);
        }
        producer.join().unwrap();
    });
}

/// The lock-free callback cell (`callback.rs`): a kill from another thread racing the
/// home thread's run drops the closure exactly once, never while it runs, and a run
/// that starts after the kill does not call it.
#[test]
fn callback_kill_racing_its_run_drops_it_once() {
    kill_racing_a_run(|cell| cell.run(|f| f()));
}

/// [CC5]: the same race against `run_once`, which retires the closure after its call.
#[test]
fn callback_kill_racing_its_run_once_drops_it_once() {
    kill_racing_a_run(|cell| cell.run_once(|f| f()));
}

/// A kill from another thread racing `run` on the home thread (see the tests above).
fn kill_racing_a_run(run: fn(&crate::callback::CallbackCell<dyn FnMut() + Send>) -> bool) {
    use crate::sync::atomic::AtomicUsize;
    struct OnDrop(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            // The closure is never dropped while it runs.
            assert_eq!(
                self.1.load(Ordering::Relaxed) % 2,
                0,
                "dropped while running"
            );
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    loom::model(move || {
        let drops = Arc::new(AtomicUsize::new(0));
        // Odd while the closure runs.
        let running = Arc::new(AtomicUsize::new(0));
        let guard = OnDrop(Arc::clone(&drops), Arc::clone(&running));
        let r = Arc::clone(&running);
        let cell: Arc<crate::callback::CallbackCell<dyn FnMut() + Send>> =
            Arc::new(crate::callback::CallbackCell::new(Box::new(move || {
                let _ = &guard;
                r.fetch_add(1, Ordering::Relaxed);
                r.fetch_add(1, Ordering::Relaxed);
            })));
        let killer = {
            let cell = Arc::clone(&cell);
            loom::thread::spawn(move || cell.kill())
        };
        let ran = run(&cell);
        killer.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert!(cell.is_dead());
        assert!(!cell.run(|f| f()), "ran after the kill");
        assert_eq!(running.load(Ordering::Relaxed), if ran { 2 } else { 0 });
    });
}
