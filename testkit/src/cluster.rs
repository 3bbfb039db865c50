//! Cluster mode: see [`TestCluster`].

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

const MAX_LINE: u64 = 64 * 1024;
const MAX_LIMIT: usize = 1 << 20;

/// What a follower says about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The current leader's address (the default).
    Leader,
    /// A bare `error_not_leader`.
    Bare,
    /// This address, whatever the leader is (a stale hint).
    Addr(String),
}

#[derive(Debug, Clone)]
struct Holder {
    token: String,
    conn: u64,
    reference: String,
    expires: Instant,
    ttl: Duration,
    abandoned: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Waiter {
    conn: u64,
    reference: String,
    ttl: Duration,
    abandoned: Option<Instant>,
    /// Granted while waiting: the token, to be collected.
    granted: Option<String>,
}

#[derive(Debug, Default)]
struct Resource {
    limit: usize,
    holders: Vec<Holder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct State {
    leader: Option<usize>,
    hints: Vec<Hint>,
    alive: Vec<bool>,
    term: u64,
    fence: u64,
    resources: HashMap<(bool, String), Resource>,
    orphan_ttl: Duration,
    default_lease: Duration,
    commit: u64,
}

impl State {
    fn expire(&mut self, now: Instant) {
        let orphan = self.orphan_ttl;
        for r in self.resources.values_mut() {
            r.holders.retain(|h| {
                h.expires > now && h.abandoned.is_none_or(|t| now.duration_since(t) <= orphan)
            });
            let holders = &r.holders;
            r.waiters.retain(|w| {
                w.abandoned.is_none_or(|t| now.duration_since(t) <= orphan)
                    && w.granted
                        .as_ref()
                        .is_none_or(|tok| holders.iter().any(|h| &h.token == tok))
            });
        }
        self.promote(now);
    }

    /// Grants queued waiters while there is room, in FIFO order.
    fn promote(&mut self, now: Instant) {
        let mut fence = self.fence;
        for r in self.resources.values_mut() {
            while r.holders.len() < r.limit {
                let Some(pos) = r.waiters.iter().position(|w| w.granted.is_none()) else {
                    break;
                };
                let Some(mut w) = r.waiters.remove(pos) else {
                    break;
                };
                fence += 1;
                let token = token(fence);
                r.holders.push(Holder {
                    token: token.clone(),
                    conn: w.conn,
                    reference: w.reference.clone(),
                    expires: now + w.ttl,
                    ttl: w.ttl,
                    abandoned: w.abandoned,
                });
                w.granted = Some(token);
                // Kept at the back as "granted, not collected" for `w`.
                r.waiters.push_back(w);
            }
        }
        self.fence = fence;
    }
}

fn token(fence: u64) -> String {
    static SALT: AtomicU64 = AtomicU64::new(0x5eed_1234_abcd_0001);
    let salt = SALT
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .rotate_left(17);
    format!("{fence:016x}{salt:016x}")
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    addrs: Vec<SocketAddr>,
    next_conn: AtomicU64,
    accepted: Vec<AtomicUsize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Builds a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    nodes: usize,
    orphan_ttl: Duration,
    default_lease: Duration,
}

impl TestClusterBuilder {
    /// Number of nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(1);
        self
    }

    /// How long a disconnected stable ref's locks and queue places are kept
    /// (`--orphan-ttl`; default 0: released at once).
    pub fn orphan_ttl(mut self, ttl: Duration) -> Self {
        self.orphan_ttl = ttl;
        self
    }

    /// The lease granted when the client names none (default 33 s).
    pub fn default_lease_ttl(mut self, ttl: Duration) -> Self {
        self.default_lease = ttl;
        self
    }

    /// Starts the nodes on ephemeral loopback ports; node 0 leads.
    pub async fn start(self) -> io::Result<TestCluster> {
        let mut listeners = Vec::new();
        for _ in 0..self.nodes {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                leader: Some(0),
                hints: vec![Hint::Leader; self.nodes],
                alive: vec![true; self.nodes],
                term: 1,
                fence: 0,
                resources: HashMap::new(),
                orphan_ttl: self.orphan_ttl,
                default_lease: self.default_lease,
                commit: 1,
            }),
            changed: Notify::new(),
            addrs,
            next_conn: AtomicU64::new(1),
            accepted: (0..self.nodes).map(|_| AtomicUsize::new(0)).collect(),
        });
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            nodes.push(Mutex::new(Some(spawn_node(shared.clone(), i, l))));
        }
        Ok(TestCluster { shared, nodes })
    }
}

/// An in-process stand-in for a dflockd v2 Raft cluster (cluster mode), for
/// fast tests of cluster clients. The real `v2-cluster` server stays the
/// judge (`scripts/cluster-test` in the client repository); this models
/// only what a client sees:
///
/// * N nodes, each its own loopback listener, sharing one lock state (as
///   the replicated state machine would). One node is the leader, or none.
/// * A follower answers every write (`l r n e w sl sr sn se sw barrier`)
///   with `error_not_leader <leader addr>`, or a bare `error_not_leader`
///   when it knows no leader. Its hint can be set stale on purpose
///   ([`TestCluster::set_hint`]). `ping`, `stats`, `auth`, `stable-ref`
///   work on every node; `stats` has a `cluster` object.
/// * `barrier` → `ok` on the leader.
/// * `stable-ref <ref>` once per connection (again → `error`); with an
///   orphan TTL, a disconnected client's locks and queue places are kept
///   that long and a connection presenting the same ref takes them back
///   (acquire/enqueue re-attach, renew rebinds). Release and renew need
///   only the token.
/// * Tokens carry a fencing counter from 1 in their first 16 hex digits,
///   one step per grant, across leader changes.
/// * [`TestCluster::stop_node`] is a crash: the node's connections are cut
///   and nothing is cleaned up (the state survives, as it does in the
///   replicated log); [`TestCluster::set_leader`] is an election.
///
/// Differences from the real cluster, on purpose: no Raft (leadership
/// changes only when the test says so), no persistence, the orphan
/// re-attach does not check the owner's process tag, lock and semaphore
/// limits are not checked against `--max-locks`/`--max-waiters`, and the
/// semaphore limit cap is 1<<20 as on v2.
///
/// Every node stops when the `TestCluster` is dropped.
pub struct TestCluster {
    shared: Arc<Shared>,
    nodes: Vec<Mutex<Option<JoinSet<()>>>>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("addrs", &self.shared.addrs)
            .finish_non_exhaustive()
    }
}

fn spawn_node(shared: Arc<Shared>, i: usize, listener: TcpListener) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    shared.accepted[i].fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(shared.clone(), i, stream));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Dropping `conns` (when this task is aborted) cuts every
        // connection without cleanup: a crash.
    });
    set
}

impl TestCluster {
    /// A builder: 3 nodes, orphan TTL 0, default lease 33 s.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            nodes: 3,
            orphan_ttl: Duration::ZERO,
            default_lease: Duration::from_secs(33),
        }
    }

    /// The nodes' client-facing addresses (`127.0.0.1:<port>`).
    pub fn addrs(&self) -> Vec<String> {
        self.shared.addrs.iter().map(ToString::to_string).collect()
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.shared.addrs[i].to_string()
    }

    /// The leader, if any.
    pub fn leader(&self) -> Option<usize> {
        self.shared.lock().leader
    }

    /// An election: `Some(i)` makes node `i` the leader (a new term), `None`
    /// leaves the cluster without one. Followers' hints follow unless set
    /// otherwise with [`set_hint`](Self::set_hint).
    pub fn set_leader(&self, leader: Option<usize>) {
        let mut s = self.shared.lock();
        s.leader = leader;
        s.term += 1;
        drop(s);
        self.shared.changed.notify_waiters();
    }

    /// What node `i` says about the leader when it refuses a write.
    pub fn set_hint(&self, i: usize, hint: Hint) {
        self.shared.lock().hints[i] = hint;
    }

    /// Crashes node `i`: its listener closes and its connections are cut
    /// without any cleanup. If it led, there is no leader until
    /// [`set_leader`](Self::set_leader); the others keep naming it.
    pub fn stop_node(&self, i: usize) {
        {
            let mut s = self.shared.lock();
            s.alive[i] = false;
            if s.leader == Some(i) {
                s.leader = None;
                for (j, h) in s.hints.iter_mut().enumerate() {
                    if j != i && *h == Hint::Leader {
                        *h = Hint::Addr(self.shared.addrs[i].to_string());
                    }
                }
            }
        }
        if let Some(mut set) = self
            .nodes
            .get(i)
            .and_then(|n| n.lock().ok().and_then(|mut g| g.take()))
        {
            set.abort_all();
        }
        self.shared.changed.notify_waiters();
    }

    /// Restarts a stopped node on its old port.
    pub async fn start_node(&self, i: usize) -> io::Result<()> {
        let listener = TcpListener::bind(self.shared.addrs[i]).await?;
        self.shared.lock().alive[i] = true;
        let set = spawn_node(self.shared.clone(), i, listener);
        if let Ok(mut g) = self.nodes[i].lock() {
            *g = Some(set);
        }
        Ok(())
    }

    /// Sets every hint back to "the current leader".
    pub fn reset_hints(&self) {
        let mut s = self.shared.lock();
        for h in &mut s.hints {
            *h = Hint::Leader;
        }
    }

    /// The fencing counter: the fence of the last grant (0 before any).
    pub fn fence(&self) -> u64 {
        self.shared.lock().fence
    }

    /// Connections node `i` has accepted so far.
    pub fn accepted(&self, i: usize) -> usize {
        self.shared.accepted[i].load(Ordering::Relaxed)
    }

    /// Waiters queued on `key` (a lock) and not yet granted.
    pub fn waiters(&self, key: &str) -> usize {
        let mut s = self.shared.lock();
        s.expire(Instant::now());
        s.resources.get(&(false, key.to_string())).map_or(0, |r| {
            r.waiters.iter().filter(|w| w.granted.is_none()).count()
        })
    }

    /// Holders of `key` (a lock) right now.
    pub fn holders(&self, key: &str) -> usize {
        let mut s = self.shared.lock();
        s.expire(Instant::now());
        s.resources
            .get(&(false, key.to_string()))
            .map_or(0, |r| r.holders.len())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Ok(mut g) = n.lock()
                && let Some(mut set) = g.take()
            {
                set.abort_all();
            }
        }
    }
}

// ---- one connection ------------------------------------------------------------

struct Conn {
    shared: Arc<Shared>,
    node: usize,
    id: u64,
    reference: Option<String>,
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<String> {
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE + 1)
        .read_until(b'\n', &mut buf)
        .await
        .ok()?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return None;
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).ok()
}

async fn serve(shared: Arc<Shared>, node: usize, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut conn = Conn {
        shared,
        node,
        id,
        reference: None,
    };
    loop {
        let (Some(cmd), Some(key), Some(arg)) = (
            read_line(&mut r).await,
            read_line(&mut r).await,
            read_line(&mut r).await,
        ) else {
            break;
        };
        let reply = conn.handle(&cmd, key.trim(), arg.trim()).await;
        if w.write_all(reply.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err() {
            break;
        }
    }
    conn.disconnected();
}

fn parse_secs(s: &str) -> Option<Duration> {
    s.parse::<u64>().ok().map(Duration::from_secs)
}

impl Conn {
    fn not_leader(&self, s: &State) -> Option<String> {
        if s.leader == Some(self.node) {
            return None;
        }
        Some(match &s.hints[self.node] {
            Hint::Bare => "error_not_leader".into(),
            Hint::Addr(a) => format!("error_not_leader {a}"),
            Hint::Leader => match s.leader {
                Some(l) => format!("error_not_leader {}", self.shared.addrs[l]),
                None => "error_not_leader".into(),
            },
        })
    }

    fn reference(&self) -> String {
        self.reference
            .clone()
            .unwrap_or_else(|| format!("conn-{}", self.id))
    }

    async fn handle(&mut self, cmd: &str, key: &str, arg: &str) -> String {
        match cmd {
            "auth" => return "ok".into(),
            "ping" => return "ok".into(),
            "stats" => return self.stats(),
            "stable-ref" => {
                let ok = !key.is_empty()
                    && key.len() <= 64
                    && key.bytes().all(|b| (0x20..=0x7e).contains(&b));
                if !ok || self.reference.is_some() {
                    return "error".into();
                }
                self.reference = Some(key.to_string());
                return "ok".into();
            }
            _ => {}
        }
        let writes = [
            "l", "r", "n", "e", "w", "sl", "sr", "sn", "se", "sw", "barrier",
        ];
        if !writes.contains(&cmd) {
            return "error".into();
        }
        {
            let s = self.shared.lock();
            if let Some(reply) = self.not_leader(&s) {
                return reply;
            }
        }
        if cmd == "barrier" {
            self.shared.lock().commit += 1;
            return "ok".into();
        }
        let sem = cmd.starts_with('s');
        let op = cmd.trim_start_matches('s');
        if key.is_empty() || key.contains(char::is_whitespace) {
            return "error".into();
        }
        let args: Vec<&str> = arg.split_whitespace().collect();
        let res = (sem, key.to_string());
        match op {
            "l" => {
                let (timeout, limit, lease) = match (sem, args.as_slice()) {
                    (false, [t]) => (parse_secs(t), Some(1), None),
                    (false, [t, l]) => (parse_secs(t), Some(1), parse_secs(l)),
                    (true, [t, n]) => (parse_secs(t), n.parse().ok(), None),
                    (true, [t, n, l]) => (parse_secs(t), n.parse().ok(), parse_secs(l)),
                    _ => return "error".into(),
                };
                let (Some(timeout), Some(limit)) = (timeout, limit) else {
                    return "error".into();
                };
                self.acquire(res, limit, lease, Some(timeout)).await
            }
            "e" => {
                let (limit, lease) = match (sem, args.as_slice()) {
                    (false, []) => (Some(1), None),
                    (false, [l]) => (Some(1), parse_secs(l)),
                    (true, [n]) => (n.parse().ok(), None),
                    (true, [n, l]) => (n.parse().ok(), parse_secs(l)),
                    _ => return "error".into(),
                };
                let Some(limit) = limit else {
                    return "error".into();
                };
                self.acquire(res, limit, lease, None).await
            }
            "w" => {
                let [t] = args.as_slice() else {
                    return "error".into();
                };
                let Some(timeout) = parse_secs(t) else {
                    return "error".into();
                };
                self.wait(res, timeout).await
            }
            "r" => {
                let [tok] = args.as_slice() else {
                    return "error".into();
                };
                let mut s = self.shared.lock();
                s.expire(Instant::now());
                let Some(r) = s.resources.get_mut(&res) else {
                    return "error".into();
                };
                let before = r.holders.len();
                r.holders.retain(|h| h.token != *tok);
                let released = r.holders.len() < before;
                s.promote(Instant::now());
                drop(s);
                self.shared.changed.notify_waiters();
                if released { "ok" } else { "error" }.into()
            }
            "n" => {
                let (tok, lease) = match args.as_slice() {
                    [t] => (*t, None),
                    [t, l] => (*t, parse_secs(l)),
                    _ => return "error".into(),
                };
                let now = Instant::now();
                let reference = self.reference();
                let mut s = self.shared.lock();
                s.expire(now);
                let default = s.default_lease;
                let Some(h) = s
                    .resources
                    .get_mut(&res)
                    .and_then(|r| r.holders.iter_mut().find(|h| h.token == tok))
                else {
                    return "error".into();
                };
                let ttl = lease.unwrap_or(default);
                h.ttl = ttl;
                h.expires = now + ttl;
                h.conn = self.id;
                h.reference = reference;
                h.abandoned = None;
                format!("ok {}", ttl.as_secs())
            }
            _ => "error".into(),
        }
    }

    /// `l` (with a timeout) or `e` (without).
    async fn acquire(
        &mut self,
        res: (bool, String),
        limit: usize,
        lease: Option<Duration>,
        timeout: Option<Duration>,
    ) -> String {
        if limit == 0 || limit > MAX_LIMIT {
            return "error".into();
        }
        let now = Instant::now();
        let reference = self.reference();
        let stable = self.reference.is_some();
        let fast = if timeout.is_some() { "ok" } else { "acquired" };
        {
            let mut s = self.shared.lock();
            s.expire(now);
            let ttl = lease.unwrap_or(s.default_lease);
            let mut fence = s.fence;
            let r = s.resources.entry(res.clone()).or_insert_with(|| Resource {
                limit,
                ..Resource::default()
            });
            if r.limit != limit {
                return "error_limit_mismatch".into();
            }
            // Re-attach by stable ref: a held lock or a queue place.
            if stable {
                if let Some(h) = r.holders.iter_mut().find(|h| h.reference == reference) {
                    h.conn = self.id;
                    h.abandoned = None;
                    h.expires = now + ttl;
                    h.ttl = ttl;
                    return format!("{fast} {} {}", h.token, ttl.as_secs());
                }
                if let Some(w) = r.waiters.iter_mut().find(|w| w.reference == reference) {
                    w.conn = self.id;
                    w.abandoned = None;
                    if timeout.is_none() {
                        return "queued".into();
                    }
                }
            }
            let queued = r.waiters.iter().any(|w| w.reference == reference && stable);
            if !queued {
                if r.holders.len() < r.limit && r.waiters.iter().all(|w| w.granted.is_some()) {
                    fence += 1;
                    let tok = token(fence);
                    r.holders.push(Holder {
                        token: tok.clone(),
                        conn: self.id,
                        reference: reference.clone(),
                        expires: now + ttl,
                        ttl,
                        abandoned: None,
                    });
                    s.fence = fence;
                    return format!("{fast} {tok} {}", ttl.as_secs());
                }
                r.waiters.push_back(Waiter {
                    conn: self.id,
                    reference: reference.clone(),
                    ttl,
                    abandoned: None,
                    granted: None,
                });
            }
        }
        match timeout {
            None => "queued".into(),
            Some(t) => self.wait(res, t).await,
        }
    }

    async fn wait(&mut self, res: (bool, String), timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let reference = self.reference();
        let id = self.id;
        loop {
            let notified = self.shared.changed.notified();
            {
                let mut s = self.shared.lock();
                if s.leader != Some(self.node) {
                    // Lost leadership while waiting.
                    return self.not_leader(&s).unwrap_or_else(|| "error".into());
                }
                s.expire(Instant::now());
                let Some(r) = s.resources.get_mut(&res) else {
                    return "error_not_enqueued".into();
                };
                let Some(pos) = r.waiters.iter().position(|w| {
                    w.conn == id || (w.reference == reference && self.reference.is_some())
                }) else {
                    return "error_not_enqueued".into();
                };
                if let Some(tok) = r.waiters[pos].granted.clone() {
                    let ttl = r.waiters[pos].ttl;
                    r.waiters.remove(pos);
                    return format!("ok {tok} {}", ttl.as_secs());
                }
                if Instant::now() >= end {
                    r.waiters.remove(pos);
                    return "timeout".into();
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }

    /// The client closed the connection (not a node crash): release its
    /// holdings, or keep them for its stable ref with an orphan TTL.
    fn disconnected(&mut self) {
        let now = Instant::now();
        let mut s = self.shared.lock();
        let keep = self.reference.is_some() && s.orphan_ttl > Duration::ZERO;
        let id = self.id;
        for r in s.resources.values_mut() {
            if keep {
                for h in r.holders.iter_mut().filter(|h| h.conn == id) {
                    h.abandoned = Some(now);
                }
                for w in r.waiters.iter_mut().filter(|w| w.conn == id) {
                    w.abandoned = Some(now);
                }
            } else {
                r.holders.retain(|h| h.conn != id);
                r.waiters.retain(|w| w.conn != id);
            }
        }
        s.promote(now);
        drop(s);
        self.shared.changed.notify_waiters();
    }

    fn stats(&self) -> String {
        let mut s = self.shared.lock();
        let now = Instant::now();
        s.expire(now);
        let mut locks = String::new();
        let mut sems = String::new();
        for ((sem, key), r) in &s.resources {
            let waiting = r.waiters.iter().filter(|w| w.granted.is_none()).count();
            if *sem {
                let _ = write!(
                    sems,
                    "{}{{\"key\":{key:?},\"limit\":{},\"holders\":{},\"waiters\":{waiting}}}",
                    if sems.is_empty() { "" } else { "," },
                    r.limit,
                    r.holders.len()
                );
            } else if let Some(h) = r.holders.first() {
                let _ = write!(
                    locks,
                    "{}{{\"key\":{key:?},\"owner_conn_id\":{},\"lease_expires_in_s\":{:.3},\"waiters\":{waiting}}}",
                    if locks.is_empty() { "" } else { "," },
                    h.conn,
                    h.expires.saturating_duration_since(now).as_secs_f64()
                );
            }
        }
        let role = if s.leader == Some(self.node) {
            "leader"
        } else {
            "follower"
        };
        let (leader_id, leader_addr) = match s.leader {
            Some(l) => (format!("n{l}"), self.shared.addrs[l].to_string()),
            None => (String::new(), String::new()),
        };
        format!(
            "ok {{\"connections\":1,\"locks\":[{locks}],\"semaphores\":[{sems}],\"idle_locks\":[],\"idle_semaphores\":[],\"cluster\":{{\"node_id\":\"n{}\",\"role\":\"{role}\",\"term\":{},\"leader_id\":{leader_id:?},\"leader_addr\":{leader_addr:?},\"commit_index\":{}}}}}",
            self.node, s.term, s.commit
        )
    }
}
