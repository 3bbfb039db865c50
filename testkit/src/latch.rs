//! A one-shot, level-triggered event usable from sync and async code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use tokio::sync::Notify;

/// Once triggered, stays triggered; `wait` returns immediately afterwards.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    flag: AtomicBool,
    notify: Notify,
    blocking: Mutex<bool>,
    cond: Condvar,
}

impl Latch {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets the latch and wakes every waiter. Never blocks.
    pub(crate) fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        let mut set = self.blocking.lock().unwrap_or_else(|p| p.into_inner());
        *set = true;
        self.cond.notify_all();
    }

    /// Blocks the calling thread until the latch is triggered.
    pub(crate) fn wait_blocking(&self) {
        let mut set = self.blocking.lock().unwrap_or_else(|p| p.into_inner());
        while !*set {
            set = self.cond.wait(set).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once the latch has been triggered.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}
