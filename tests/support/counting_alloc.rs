//! A global allocator that counts the allocations made on the current
//! thread while counting is on. Shared by the allocation tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts allocations of the threads that called [`start`].
pub struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts counting this thread's allocations from zero.
pub fn start() {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
}

/// Stops counting and returns this thread's allocations since [`start`].
pub fn stop() -> u64 {
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

/// Allocations this thread makes while `f` runs.
pub fn allocations(f: impl FnOnce()) -> u64 {
    start();
    f();
    stop()
}
