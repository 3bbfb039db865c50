//! The renewal thread's schedule, with stand-in renewal loops on a thread
//! of their own.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Instant;

use super::*;

const BOUND: Duration = Duration::from_secs(20);

/// A renewal loop that suspends once, due at once (as a renew that is
/// due), and counts its end.
fn due_now(w: &Arc<Worker>, ends: &Arc<AtomicUsize>) -> Loop {
    let (w, ends) = (w.clone(), ends.clone());
    Box::pin(async move {
        w.wake_at(Instant::now());
        suspend().await;
        ends.fetch_add(1, SeqCst);
    })
}

/// The hand-off race: the thread polls a loop that ends (or finds none)
/// just as the next lease's loop is handed over, which schedules the
/// thread for it. Nothing the thread concludes from its poll may undo that
/// schedule, or the new lease is never renewed. Each loop here ends on the
/// thread's poll and the next one is handed over the moment it did (the
/// caller spinning on the count), so every round goes through that window;
/// a thread that writes "nothing to do" after such a poll misses a loop
/// within some 20,000 rounds here.
#[test]
fn a_loop_handed_over_as_the_thread_finds_none_is_still_polled() {
    let w = Arc::<Worker>::default();
    let thread = std::thread::spawn({
        let w = w.clone();
        move || work(&w)
    });
    let ends = Arc::new(AtomicUsize::new(0));
    let mut next = due_now(&w, &ends);
    for round in 1..=100_000 {
        w.start(next);
        next = due_now(&w, &ends);
        let start = Instant::now();
        for spin in 0u32.. {
            if ends.load(SeqCst) == round {
                break;
            }
            assert!(start.elapsed() < BOUND, "loop {round} never polled");
            match spin < 1_000 {
                true => std::hint::spin_loop(),
                false => std::thread::yield_now(),
            }
        }
    }
    w.close();
    thread.join().unwrap();
}
