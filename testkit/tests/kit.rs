//! The kit's own promises: a watchdog's report names the test it fires in (also from a
//! body on the main-loop thread), `on_main` runs bodies on the main context's home and
//! repeats their panics, the allocation counter counts this thread only.

use std::process::Command;
use std::time::Duration;

use aioctx_aio::main_context;
use aioctx_testkit::{
    CountingAlloc, Watchdog, count_allocs, counting_alloc_installed, on_main, test_name,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Set in the child process: the test named by it arms a short watchdog and hangs.
const HANG_ENV: &str = "AIOCTX_TESTKIT_HANG";

/// Runs this binary's test `name` alone in a child with [`HANG_ENV`] set; its stderr.
fn hang_in_child(name: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1"])
        .env(HANG_ENV, "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hanging child passed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hang_here() {
    let dog = Watchdog::arm(Duration::from_millis(100));
    dog.note(|s| s.push_str("step 3"));
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn watchdog_names_the_test() {
    if std::env::var_os(HANG_ENV).is_some() {
        hang_here();
        return;
    }
    let err = hang_in_child("watchdog_names_the_test");
    assert!(
        err.contains("WATCHDOG: `watchdog_names_the_test` still running after 100ms")
            && err.contains("Last step: step 3"),
        "{err}"
    );
}

#[test]
fn watchdog_on_main_names_the_calling_test() {
    if std::env::var_os(HANG_ENV).is_some() {
        on_main(hang_here);
        return;
    }
    let err = hang_in_child("watchdog_on_main_names_the_calling_test");
    assert!(
        err.contains("WATCHDOG: `watchdog_on_main_names_the_calling_test` still running"),
        "{err}"
    );
}

#[test]
fn a_watchdog_dropped_in_time_stays_silent() {
    for _ in 0..100 {
        let dog = Watchdog::arm(Duration::from_secs(5));
        drop(dog);
    }
}

#[test]
fn on_main_runs_on_the_main_contexts_home() {
    let me = test_name();
    let (home, name) = on_main(|| (main_context().is_home_thread(), test_name()));
    assert!(home);
    assert_eq!(name, me);
    assert_eq!(me, "on_main_runs_on_the_main_contexts_home");
}

#[test]
fn on_main_repeats_the_panic() {
    let err = std::panic::catch_unwind(|| on_main(|| panic!("boom 42"))).unwrap_err();
    let msg = aioctx_testkit::panic_message(&*err);
    assert!(
        msg.contains("on_main_repeats_the_panic") && msg.contains("boom 42"),
        "{msg}"
    );
    // The main loop survives its body's panic.
    assert!(on_main(|| main_context().is_home_thread()));
}

#[test]
fn allocations_are_counted_per_thread() {
    assert!(counting_alloc_installed());
    let (v, n) = count_allocs(|| vec![1u8; 100]);
    assert_eq!((v.len(), n), (100, 1));
    // A first spawn, so that whatever a process's first spawn sets up is set up.
    std::thread::scope(|s| {
        s.spawn(|| ());
    });
    let ((), n) = count_allocs(|| {
        std::thread::scope(|s| {
            s.spawn(|| drop(std::hint::black_box(vec![0u8; 10])));
        })
    });
    // Spawning allocates here; the child's vector is not counted.
    let ((), m) = count_allocs(|| {
        std::thread::scope(|s| {
            s.spawn(|| ());
        })
    });
    assert_eq!(n, m);
}
