//! Lock and semaphore state: FIFO queues, leases, two-phase enqueue.
//!
//! Everything here runs under one `std::sync::Mutex` held for short,
//! IO-free critical sections. A grant is O(1) (plus an O(log n) push onto
//! the lease deadline heap).

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::protocol::Space;
use crate::stats::{IdleInfo, LockInfo, SemaphoreInfo};

pub(crate) type ConnId = u64;

/// Cap for blocking timeouts (timer arithmetic stays far from overflow).
pub(crate) const FAR_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Far-future fallback for deadlines that overflow `Instant`.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Reply statuses that carry no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxLocks,
    MaxWaiters,
    LimitMismatch,
    AlreadyEnqueued,
}

impl Refusal {
    pub(crate) fn line(self) -> &'static [u8] {
        match self {
            Refusal::MaxLocks => b"error_max_locks\n",
            Refusal::MaxWaiters => b"error_max_waiters\n",
            Refusal::LimitMismatch => b"error_limit_mismatch\n",
            Refusal::AlreadyEnqueued => b"error_already_enqueued\n",
        }
    }
}

struct Holder {
    conn: ConnId,
    expires: Instant,
}

enum WaiterKind {
    /// Blocking `l`/`sl`: the token is sent to the waiting request.
    Single(oneshot::Sender<String>),
    /// Two-phase `e`/`se`: the token is parked in the connection's enqueue entry.
    TwoPhase,
}

struct Waiter {
    id: u64,
    conn: ConnId,
    lease: Duration,
    kind: WaiterKind,
}

struct Resource {
    limit: usize,
    holders: HashMap<String, Holder>,
    waiters: VecDeque<Waiter>,
    last_activity: Instant,
}

enum EnqState {
    Queued { waiter: u64 },
    Granted(String),
}

struct Enq {
    lease: Duration,
    state: EnqState,
    wake: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct ConnLocks {
    owned: HashSet<(Space, String, String)>,
    enq: HashMap<(Space, String), Enq>,
    waiting: Option<(Space, String, u64)>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Expiry {
    at: Instant,
    space: Space,
    key: String,
    token: String,
}

/// Book-keeping shared by all keys (split from the key maps for borrowing).
struct Book {
    conns: HashMap<ConnId, ConnLocks>,
    heap: BinaryHeap<Reverse<Expiry>>,
    holders: usize,
    next_waiter: u64,
    token_seq: u64,
    rand: RandomState,
    /// Set when a new earliest deadline was pushed; the expiry task is woken.
    wake_expiry: bool,
}

/// All lock and semaphore state.
pub(crate) struct Locks {
    res: [HashMap<String, Resource>; 2],
    book: Book,
    max_locks: usize,
    max_waiters: usize,
}

/// Result of `l`/`sl`.
pub(crate) enum Acquire {
    Granted(String),
    Queued(u64, oneshot::Receiver<String>),
    Timeout,
    Refused(Refusal),
}

/// Result of `e`/`se`.
pub(crate) enum Enqueue {
    Acquired(String, Duration),
    Queued,
    Refused(Refusal),
}

/// Result of `w`/`sw` (or a step of it).
pub(crate) enum Wait {
    Granted(String, Duration),
    LeaseExpired,
    NotEnqueued,
    Timeout,
    Block(oneshot::Receiver<()>),
}

impl Book {
    fn new_token(&mut self) -> String {
        self.token_seq += 1;
        let mut h = self.rand.build_hasher();
        h.write_u64(self.token_seq);
        format!("{:016x}{:016x}", self.token_seq, h.finish())
    }

    fn push_expiry(&mut self, at: Instant, space: Space, key: &str, token: &str) {
        let earliest = self.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        self.heap.push(Reverse(Expiry {
            at,
            space,
            key: key.to_owned(),
            token: token.to_owned(),
        }));
        if earliest {
            self.wake_expiry = true;
        }
    }

    fn compact_heap(&mut self, res: &[HashMap<String, Resource>; 2]) {
        if self.heap.len() <= 2 * self.holders + 1024 {
            return;
        }
        let live: Vec<Reverse<Expiry>> = std::mem::take(&mut self.heap)
            .into_iter()
            .filter(|Reverse(e)| {
                res[e.space.index()]
                    .get(&e.key)
                    .and_then(|r| r.holders.get(&e.token))
                    .is_some_and(|h| h.expires == e.at)
            })
            .collect();
        self.heap = BinaryHeap::from(live);
    }

    fn add_holder(
        &mut self,
        r: &mut Resource,
        space: Space,
        key: &str,
        token: &str,
        conn: ConnId,
        expires: Instant,
    ) {
        r.holders.insert(token.to_owned(), Holder { conn, expires });
        self.holders += 1;
        self.push_expiry(expires, space, key, token);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.owned.insert((space, key.to_owned(), token.to_owned()));
        }
    }

    /// Removes a holder's bookkeeping (the caller removed it from the map).
    /// A grant that `w` never collected goes with its enqueue record, as
    /// the real server's lease sweep drops both: a later `w` gets
    /// `error_not_enqueued`.
    fn forget_holder(&mut self, space: Space, key: &str, token: &str, conn: ConnId) {
        self.holders = self.holders.saturating_sub(1);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.owned.remove(&(space, key.to_owned(), token.to_owned()));
            let ek = (space, key.to_owned());
            let matches = c
                .enq
                .get(&ek)
                .is_some_and(|e| matches!(&e.state, EnqState::Granted(t) if t == token));
            if matches
                && let Some(e) = c.enq.remove(&ek)
                && let Some(w) = e.wake
            {
                let _ = w.send(());
            }
        }
    }

    /// Grants free slots to waiters in FIFO order.
    fn grant(&mut self, r: &mut Resource, space: Space, key: &str, now: Instant) {
        while r.holders.len() < r.limit {
            let Some(w) = r.waiters.pop_front() else {
                break;
            };
            let token = self.new_token();
            match w.kind {
                WaiterKind::Single(tx) => {
                    if tx.send(token.clone()).is_err() {
                        // The waiting request is gone; skip it.
                        continue;
                    }
                    if let Some(c) = self.conns.get_mut(&w.conn) {
                        c.waiting = None;
                    }
                    self.add_holder(r, space, key, &token, w.conn, deadline(now, w.lease));
                }
                WaiterKind::TwoPhase => {
                    let Some(e) = self
                        .conns
                        .get_mut(&w.conn)
                        .and_then(|c| c.enq.get_mut(&(space, key.to_owned())))
                    else {
                        continue;
                    };
                    e.state = EnqState::Granted(token.clone());
                    if let Some(wk) = e.wake.take() {
                        let _ = wk.send(());
                    }
                    self.add_holder(r, space, key, &token, w.conn, deadline(now, w.lease));
                }
            }
            r.last_activity = now;
        }
    }
}

impl Locks {
    pub(crate) fn new(max_locks: usize, max_waiters: usize) -> Self {
        Self {
            res: [HashMap::new(), HashMap::new()],
            book: Book {
                conns: HashMap::new(),
                heap: BinaryHeap::new(),
                holders: 0,
                next_waiter: 0,
                token_seq: 0,
                rand: RandomState::new(),
                wake_expiry: false,
            },
            max_locks,
            max_waiters,
        }
    }

    /// Returns (and clears) whether the expiry task must recompute its deadline.
    pub(crate) fn take_expiry_wake(&mut self) -> bool {
        std::mem::take(&mut self.book.wake_expiry)
    }

    pub(crate) fn register_conn(&mut self, conn: ConnId) {
        self.book.conns.insert(conn, ConnLocks::default());
    }

    fn key_count(&self) -> usize {
        self.res[0].len() + self.res[1].len()
    }

    fn get_or_create(
        &mut self,
        space: Space,
        key: &str,
        limit: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(r) = self.res[space.index()].get_mut(key) {
            if r.limit != limit {
                return Err(Refusal::LimitMismatch);
            }
            r.last_activity = now;
            return Ok(());
        }
        if self.key_count() >= self.max_locks {
            return Err(Refusal::MaxLocks);
        }
        self.res[space.index()].insert(
            key.to_owned(),
            Resource {
                limit,
                holders: HashMap::new(),
                waiters: VecDeque::new(),
                last_activity: now,
            },
        );
        Ok(())
    }

    /// Expires every lease whose deadline has passed; returns the next deadline.
    pub(crate) fn expire_due(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let Reverse(top) = self.book.heap.peek()?;
            if top.at > now {
                return Some(top.at);
            }
            let Reverse(e) = self.book.heap.pop()?;
            let Some(r) = self.res[e.space.index()].get_mut(&e.key) else {
                continue;
            };
            let live = r.holders.get(&e.token).is_some_and(|h| h.expires == e.at);
            if !live {
                continue;
            }
            if let Some(h) = r.holders.remove(&e.token) {
                self.book.forget_holder(e.space, &e.key, &e.token, h.conn);
                r.last_activity = now;
                self.book.grant(r, e.space, &e.key, now);
            }
        }
    }

    /// Prunes key state with no holder and no waiter idle for longer than `max_idle`.
    pub(crate) fn gc(&mut self, now: Instant, max_idle: Duration) {
        for map in &mut self.res {
            map.retain(|_, r| {
                !(r.holders.is_empty()
                    && r.waiters.is_empty()
                    && now.duration_since(r.last_activity) > max_idle)
            });
        }
        self.book.compact_heap(&self.res);
    }

    pub(crate) fn acquire(
        &mut self,
        conn: ConnId,
        space: Space,
        key: &str,
        lease: Duration,
        limit: usize,
        may_block: bool,
    ) -> Acquire {
        let now = Instant::now();
        self.expire_due(now);
        if let Err(e) = self.get_or_create(space, key, limit, now) {
            return Acquire::Refused(e);
        }
        let max_waiters = self.max_waiters;
        let Locks { res, book, .. } = self;
        let Some(r) = res[space.index()].get_mut(key) else {
            return Acquire::Timeout;
        };
        if r.holders.len() < r.limit && r.waiters.is_empty() {
            let token = book.new_token();
            book.add_holder(r, space, key, &token, conn, deadline(now, lease));
            book.compact_heap(res);
            return Acquire::Granted(token);
        }
        if max_waiters > 0 && r.waiters.len() >= max_waiters {
            return Acquire::Refused(Refusal::MaxWaiters);
        }
        if !may_block {
            return Acquire::Timeout;
        }
        book.next_waiter += 1;
        let id = book.next_waiter;
        let (tx, rx) = oneshot::channel();
        r.waiters.push_back(Waiter {
            id,
            conn,
            lease,
            kind: WaiterKind::Single(tx),
        });
        if let Some(c) = book.conns.get_mut(&conn) {
            c.waiting = Some((space, key.to_owned(), id));
        }
        Acquire::Queued(id, rx)
    }

    fn remove_waiter(&mut self, space: Space, key: &str, id: u64) {
        if let Some(r) = self.res[space.index()].get_mut(key) {
            if let Some(pos) = r.waiters.iter().position(|w| w.id == id) {
                r.waiters.remove(pos);
            }
            r.last_activity = Instant::now();
        }
    }

    /// Cancels a blocking acquire. Returns the token if it was granted meanwhile.
    pub(crate) fn cancel_acquire(
        &mut self,
        conn: ConnId,
        space: Space,
        key: &str,
        id: u64,
        rx: &mut oneshot::Receiver<String>,
    ) -> Option<String> {
        if let Ok(token) = rx.try_recv() {
            return Some(token);
        }
        self.remove_waiter(space, key, id);
        if let Some(c) = self.book.conns.get_mut(&conn) {
            c.waiting = None;
        }
        None
    }

    /// Releases `token` on `key`; true when it was held (and not expired).
    pub(crate) fn release(&mut self, space: Space, key: &str, token: &str) -> bool {
        let now = Instant::now();
        self.expire_due(now);
        let Locks { res, book, .. } = self;
        let Some(r) = res[space.index()].get_mut(key) else {
            return false;
        };
        r.last_activity = now;
        let Some(h) = r.holders.remove(token) else {
            return false;
        };
        book.forget_holder(space, key, token, h.conn);
        book.grant(r, space, key, now);
        book.compact_heap(res);
        true
    }

    /// Renews a lease; returns the new lease in whole seconds.
    pub(crate) fn renew(
        &mut self,
        space: Space,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Option<u64> {
        let now = Instant::now();
        self.expire_due(now);
        let Locks { res, book, .. } = self;
        let r = res[space.index()].get_mut(key)?;
        r.last_activity = now;
        let h = r.holders.get_mut(token)?;
        h.expires = deadline(now, lease);
        let at = h.expires;
        book.push_expiry(at, space, key, token);
        book.compact_heap(res);
        Some(lease.as_secs())
    }

    pub(crate) fn enqueue(
        &mut self,
        conn: ConnId,
        space: Space,
        key: &str,
        lease: Duration,
        limit: usize,
    ) -> Enqueue {
        let now = Instant::now();
        self.expire_due(now);
        let ek = (space, key.to_owned());
        if self
            .book
            .conns
            .get(&conn)
            .is_some_and(|c| c.enq.contains_key(&ek))
        {
            return Enqueue::Refused(Refusal::AlreadyEnqueued);
        }
        if let Err(e) = self.get_or_create(space, key, limit, now) {
            return Enqueue::Refused(e);
        }
        let max_waiters = self.max_waiters;
        let Locks { res, book, .. } = self;
        let Some(r) = res[space.index()].get_mut(key) else {
            return Enqueue::Refused(Refusal::MaxLocks);
        };
        if r.holders.len() < r.limit && r.waiters.is_empty() {
            let token = book.new_token();
            if let Some(c) = book.conns.get_mut(&conn) {
                c.enq.insert(
                    ek,
                    Enq {
                        lease,
                        state: EnqState::Granted(token.clone()),
                        wake: None,
                    },
                );
            }
            book.add_holder(r, space, key, &token, conn, deadline(now, lease));
            return Enqueue::Acquired(token, lease);
        }
        if max_waiters > 0 && r.waiters.len() >= max_waiters {
            return Enqueue::Refused(Refusal::MaxWaiters);
        }
        book.next_waiter += 1;
        let id = book.next_waiter;
        r.waiters.push_back(Waiter {
            id,
            conn,
            lease,
            kind: WaiterKind::TwoPhase,
        });
        if let Some(c) = book.conns.get_mut(&conn) {
            c.enq.insert(
                ek,
                Enq {
                    lease,
                    state: EnqState::Queued { waiter: id },
                    wake: None,
                },
            );
        }
        Enqueue::Queued
    }

    /// One step of `w`: collects a grant, or registers a wake-up (`may_block`),
    /// or gives up (`Timeout`, removing the waiter).
    pub(crate) fn wait(&mut self, conn: ConnId, space: Space, key: &str, may_block: bool) -> Wait {
        let now = Instant::now();
        self.expire_due(now);
        let ek = (space, key.to_owned());
        let Locks { res, book, .. } = self;
        let Some(c) = book.conns.get_mut(&conn) else {
            return Wait::NotEnqueued;
        };
        let Some(e) = c.enq.get_mut(&ek) else {
            return Wait::NotEnqueued;
        };
        match &e.state {
            EnqState::Granted(token) => {
                let token = token.clone();
                let lease = e.lease;
                c.enq.remove(&ek);
                let held = res[space.index()]
                    .get_mut(key)
                    .and_then(|r| {
                        r.last_activity = now;
                        r.holders.get_mut(&token)
                    })
                    .filter(|h| h.expires > now);
                match held {
                    Some(h) => {
                        // The lease starts when `w` returns.
                        h.expires = deadline(now, lease);
                        let at = h.expires;
                        book.push_expiry(at, space, key, &token);
                        Wait::Granted(token, lease)
                    }
                    None => Wait::LeaseExpired,
                }
            }
            EnqState::Queued { waiter } => {
                if may_block {
                    let (tx, rx) = oneshot::channel();
                    e.wake = Some(tx);
                    return Wait::Block(rx);
                }
                let id = *waiter;
                c.enq.remove(&ek);
                self.remove_waiter(space, key, id);
                Wait::Timeout
            }
        }
    }

    /// Cleans up after a closed connection.
    pub(crate) fn cleanup_conn(&mut self, conn: ConnId, auto_release: bool) {
        let now = Instant::now();
        let Some(c) = self.book.conns.remove(&conn) else {
            return;
        };
        if let Some((space, key, id)) = c.waiting {
            self.remove_waiter(space, &key, id);
        }
        for ((space, key), e) in c.enq {
            if let EnqState::Queued { waiter } = e.state {
                self.remove_waiter(space, &key, waiter);
            }
        }
        if !auto_release {
            return;
        }
        for (space, key, token) in c.owned {
            let Locks { res, book, .. } = self;
            if let Some(r) = res[space.index()].get_mut(&key) {
                if r.holders.remove(&token).is_some() {
                    book.holders = book.holders.saturating_sub(1);
                }
                r.last_activity = now;
                book.grant(r, space, &key, now);
            }
        }
    }

    /// Stats snapshot (sorted by key). As the real server, a key is
    /// reported by its limit, not its command family: limit 1 under
    /// `locks`/`idle_locks` (so a semaphore of limit 1 too), larger limits
    /// under `semaphores`/`idle_semaphores`.
    pub(crate) fn stats(
        &self,
    ) -> (
        Vec<LockInfo>,
        Vec<SemaphoreInfo>,
        Vec<IdleInfo>,
        Vec<IdleInfo>,
    ) {
        let now = Instant::now();
        let mut locks = Vec::new();
        let mut idle_locks = Vec::new();
        let mut sems = Vec::new();
        let mut idle_sems = Vec::new();
        for (key, r) in self.res.iter().flatten() {
            let idle = r.holders.is_empty() && r.waiters.is_empty();
            if idle {
                let info = IdleInfo {
                    key: key.clone(),
                    idle_s: now.duration_since(r.last_activity).as_secs_f64(),
                };
                if r.limit == 1 {
                    idle_locks.push(info);
                } else {
                    idle_sems.push(info);
                }
            } else if r.limit == 1 {
                let holder = r.holders.values().next();
                locks.push(LockInfo {
                    key: key.clone(),
                    owner_conn_id: holder.map_or(0, |h| h.conn),
                    lease_expires_in_s: holder.map_or(0.0, |h| {
                        h.expires.saturating_duration_since(now).as_secs_f64()
                    }),
                    waiters: r.waiters.len(),
                });
            } else {
                sems.push(SemaphoreInfo {
                    key: key.clone(),
                    limit: r.limit,
                    holders: r.holders.len(),
                    waiters: r.waiters.len(),
                });
            }
        }
        locks.sort_by(|a, b| a.key.cmp(&b.key));
        sems.sort_by(|a, b| a.key.cmp(&b.key));
        idle_locks.sort_by(|a, b| a.key.cmp(&b.key));
        idle_sems.sort_by(|a, b| a.key.cmp(&b.key));
        (locks, sems, idle_locks, idle_sems)
    }
}
