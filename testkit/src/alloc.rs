//! A per-thread counting global allocator, for the "allocates nothing" claims.
//!
//! A test binary installs it once:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: aioctx_testkit::CountingAlloc = aioctx_testkit::CountingAlloc;
//! ```
//!
//! and then counts what a piece of code allocates on the calling thread with
//! [`count_allocs`] (or [`allocs`] before and after). The count is per thread, so tests
//! running in parallel do not see each other's allocations; allocations made by other
//! threads (a woken iothread) are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Allocations (and reallocations) made by this thread so far.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: an allocation during thread-local teardown is not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// The system allocator, counting each thread's allocations and reallocations
/// (frees are not counted). Install it with `#[global_allocator]`; read the count with
/// [`allocs`] or [`count_allocs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialized thread-local `Cell` that never allocates itself.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc_zeroed`
        // requires.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through here)
        // with `layout`; the caller guarantees `new_size` as `GlobalAlloc::realloc`
        // requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// How many allocations the calling thread has made so far (0 forever when
/// [`CountingAlloc`] is not the global allocator).
pub fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Runs `f` and returns its value with the number of allocations it made on the
/// calling thread.
///
/// # Panics
/// When [`CountingAlloc`] is not the binary's global allocator: a count of zero would
/// then prove nothing.
pub fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    assert!(
        counting_alloc_installed(),
        "count_allocs: install `aioctx_testkit::CountingAlloc` with #[global_allocator] \
         in this test binary"
    );
    let before = allocs();
    let r = f();
    (r, allocs() - before)
}

/// Whether [`CountingAlloc`] is this binary's global allocator (it counts a test
/// allocation).
pub fn counting_alloc_installed() -> bool {
    let before = allocs();
    drop(std::hint::black_box(Box::new(0u64)));
    allocs() > before
}
