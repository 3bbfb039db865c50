//! The cluster client against a real 3-node dflockd v2 Raft cluster on
//! loopback, started (and stopped) by each test from the
//! `dflockd-v2-cluster` binary: `DFLOCKD_V2_CLUSTER=/path/to/binary`, else
//! `target/dflockd-servers/dflockd-v2-cluster` (built by
//! `scripts/real-servers`). Without the binary every test prints why it
//! skips. Run by `scripts/cluster-test`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::cluster::RedirectPolicy;
use dflockd_client::tokio::ClusterClient;

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("DFLOCKD_V2_CLUSTER").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/dflockd-servers/dflockd-v2-cluster")
        },
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

macro_rules! need_cluster {
    ($orphan_ttl:expr) => {
        match binary() {
            Some(bin) => RealCluster::start(bin, $orphan_ttl),
            None => {
                println!(
                    "SKIP: no dflockd-v2-cluster binary (set DFLOCKD_V2_CLUSTER or run scripts/real-servers)"
                );
                return;
            }
        }
    };
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Three v2 nodes on loopback; killed when dropped.
struct RealCluster {
    bin: PathBuf,
    dir: PathBuf,
    ids: [&'static str; 3],
    client_ports: [u16; 3],
    raft_ports: [u16; 3],
    orphan_ttl: u32,
    children: [Option<Child>; 3],
}

impl RealCluster {
    fn start(bin: PathBuf, orphan_ttl: u32) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dflockd-cluster-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("secret"),
            "0123456789abcdef0123456789abcdef-test-secret\n",
        )
        .unwrap();
        let mut c = RealCluster {
            bin,
            dir,
            ids: ["a", "b", "c"],
            client_ports: [free_port(), free_port(), free_port()],
            raft_ports: [free_port(), free_port(), free_port()],
            orphan_ttl,
            children: [None, None, None],
        };
        for i in 0..3 {
            c.spawn(i);
        }
        c.wait_leader(Duration::from_secs(20));
        c
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[i])
    }

    fn members(&self) -> Vec<String> {
        (0..3).map(|i| self.addr(i)).collect()
    }

    fn spawn(&mut self, i: usize) {
        let peers: Vec<String> = (0..3)
            .map(|j| {
                format!(
                    "{}=127.0.0.1:{}@127.0.0.1:{}",
                    self.ids[j], self.raft_ports[j], self.client_ports[j]
                )
            })
            .collect();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.ids[i]))).unwrap();
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.client_ports[i].to_string())
            .args(["--node-id", self.ids[i], "--raft-dir"])
            .arg(self.dir.join(self.ids[i]))
            .arg("--raft-addr")
            .arg(format!("127.0.0.1:{}", self.raft_ports[i]))
            .arg("--advertise-addr")
            .arg(self.addr(i))
            .arg("--raft-auth-token-file")
            .arg(self.dir.join("secret"))
            .arg("--cluster-peers")
            .arg(peers.join(","))
            .arg("--orphan-ttl")
            .arg(self.orphan_ttl.to_string())
            .args(["--shutdown-timeout", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dflockd-v2-cluster");
        self.children[i] = Some(child);
    }

    /// SIGKILL, as a crash: no graceful leadership transfer.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One raw request to node `i`; the reply line.
    fn raw(&self, i: usize, req: &str) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(self.addr(i)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// The index of the node that says it is the leader.
    fn leader(&self) -> Option<usize> {
        (0..3).find(|&i| {
            self.children[i].is_some()
                && self
                    .raw(i, "stats\n_\n\n")
                    .is_some_and(|s| s.contains("\"role\":\"leader\""))
        })
    }

    fn wait_leader(&self, within: Duration) -> usize {
        let end = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                // A leader whose barrier passes is serving writes.
                if self.raw(l, "barrier\n_\n_\n").as_deref() == Some("ok") {
                    return l;
                }
            }
            assert!(Instant::now() < end, "no leader within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waiters on `key` as the leader's stats report them.
    fn waiters(&self, leader: usize, key: &str) -> u64 {
        let Some(line) = self.raw(leader, "stats\n_\n\n") else {
            return 0;
        };
        let json: serde_json::Value =
            serde_json::from_str(line.trim_start_matches("ok ")).unwrap_or_default();
        json["locks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["key"] == key)
            .filter_map(|l| l["waiters"].as_u64())
            .sum()
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client(members: Vec<String>) -> ClusterClient {
    ClusterClient::builder(members)
        .connect_timeout(Duration::from_secs(2))
        .io_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// Polls `cond` every 20 ms until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_follower_are_redirected_to_the_leader() {
    let cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    // The follower itself refuses writes and names the leader.
    assert_eq!(
        cluster.raw(follower, "barrier\n_\n_\n"),
        Some(format!("error_not_leader {}", cluster.addr(leader)))
    );
    // A client whose first member is that follower lands on the leader.
    let mut members = cluster.members();
    members.rotate_left(follower);
    let c = client(members);
    let guard = c
        .lock("redirect")
        .acquire()
        .await
        .unwrap()
        .expect("free lock");
    assert_eq!(guard.granted_by(), cluster.addr(leader));
    assert_eq!(c.leader(), Some(cluster.addr(leader).as_str()));
    assert_eq!(c.dials(), 2, "one dial to the follower, one to the leader");
    // barrier, then stats from the leader: a linearizable read that sees
    // the lock just granted.
    c.barrier().await.unwrap();
    let stats = c.stats().await.unwrap();
    assert!(stats.contains("\"role\":\"leader\""), "{stats}");
    assert!(stats.contains("\"key\":\"redirect\""), "{stats}");
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_a_leader_crash_and_renews_on_the_new_leader() {
    let mut cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let c = client(cluster.members());
    let mut guard = c
        .lock("held")
        .lease_ttl(Duration::from_secs(6))
        .acquire()
        .await
        .unwrap()
        .expect("free lock");
    let fence = guard.fence().unwrap();
    assert_eq!(guard.granted_by(), cluster.addr(leader));
    cluster.kill(leader);
    // The next renews land on the new leader, same token, same fence.
    let renewal = tokio::time::timeout(Duration::from_secs(12), async {
        loop {
            match guard.next_renewal().await {
                Some(r) if r.member != cluster.addr(leader) => return r,
                Some(_) => continue,
                None => panic!("lease lost across the failover"),
            }
        }
    })
    .await
    .expect("a renew on the new leader");
    assert_eq!(renewal.fence, fence);
    assert_eq!(guard.fence(), Some(fence));
    assert!(!guard.is_lost());
    // Someone else still cannot take the lock.
    let other = client(cluster.members());
    assert!(other.lock("held").try_acquire().await.unwrap().is_none());
    guard.release().await.unwrap();
    assert!(other.lock("held").try_acquire().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_leader_dies_completes_on_the_new_leader_within_its_timeout() {
    let mut cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let holder = client(cluster.members());
    let mut held = holder
        .lock("queue")
        .lease_ttl(Duration::from_secs(6))
        .acquire()
        .await
        .unwrap()
        .expect("free lock");
    let waiter = client(cluster.members());
    let timeout = Duration::from_secs(25);
    let started = Instant::now();
    let wait = tokio::spawn({
        let lock = waiter.lock("queue").lease_ttl(Duration::from_secs(6));
        async move { lock.acquire_within(timeout).await }
    });
    eventually(Duration::from_secs(5), "the waiter is queued", || {
        cluster.waiters(leader, "queue") == 1
    })
    .await;
    cluster.kill(leader);
    // The holder keeps its lock on the new leader, then lets go.
    tokio::time::timeout(Duration::from_secs(12), async {
        while let Some(r) = held.next_renewal().await {
            if r.member != cluster.addr(leader) {
                return;
            }
        }
        panic!("holder lost its lease");
    })
    .await
    .expect("holder renewed on the new leader");
    let first = held.fence().unwrap();
    held.release().await.unwrap();
    let got = tokio::time::timeout(timeout, wait)
        .await
        .expect("wait finished")
        .unwrap()
        .unwrap()
        .expect("granted before the timeout");
    assert!(started.elapsed() < timeout);
    assert!(got.fence().unwrap() > first);
    assert_ne!(got.granted_by(), cluster.addr(leader));
    got.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_the_client_gives_up_with_a_typed_error_and_no_busy_loop() {
    let mut cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let survivor = (leader + 1) % 3;
    cluster.kill(leader);
    cluster.kill((leader + 2) % 3);
    let budget = 8;
    let c = ClusterClient::builder(cluster.members())
        .connect_timeout(Duration::from_secs(1))
        .io_timeout(Duration::from_secs(2))
        .redirect_policy(RedirectPolicy::DEFAULT.with_budget(budget))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.barrier().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::NoLeader { attempts } if attempts == budget),
        "{err:?}"
    );
    // Every attempt is at most one dial: no tight reconnect loop. And the
    // client backed off between rounds instead of spinning.
    let dials = c.dials();
    println!("no quorum: {dials} dials over {elapsed:?} for a budget of {budget}");
    assert!(dials <= budget, "{dials} dials for a budget of {budget}");
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    // The survivor is up and answers reads.
    assert!(cluster.raw(survivor, "ping\n_\n_\n").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_ttl_gives_the_lock_back_to_the_same_stable_ref() {
    let cluster = need_cluster!(30);
    cluster.wait_leader(Duration::from_secs(10));
    let build = |r: &str| {
        ClusterClient::builder(cluster.members())
            .stable_ref(r)
            .build()
            .unwrap()
    };
    let first = build("orphan-test-client");
    let guard = first
        .lock("orphaned")
        .lease_ttl(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap()
        .expect("free lock");
    let token = guard.token().unwrap();
    // Cut the client's connections: the server keeps the lock for the ref.
    first.disconnect().await;
    std::mem::forget(guard); // no release: the process "crashed"
    let stranger = build("someone-else");
    assert!(
        stranger
            .lock("orphaned")
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "the orphaned lock must not be free"
    );
    // A new connection presenting the same ref takes it back: same token.
    let again = build("orphan-test-client");
    let back = again
        .lock("orphaned")
        .lease_ttl(Duration::from_secs(20))
        .try_acquire()
        .await
        .unwrap()
        .expect("re-attached");
    assert_eq!(back.token(), Some(token));
    back.release().await.unwrap();
    assert!(
        stranger
            .lock("orphaned")
            .try_acquire()
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_strictly_increase_across_failover() {
    let mut cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let c = client(cluster.members());
    let mut fences = Vec::new();
    for _ in 0..3 {
        let g = c.lock("fenced").try_acquire().await.unwrap().unwrap();
        fences.push(g.fence().unwrap());
        g.release().await.unwrap();
    }
    cluster.kill(leader);
    for _ in 0..3 {
        let g = c
            .lock("fenced")
            .acquire_within(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(g.granted_by(), cluster.addr(leader));
        fences.push(g.fence().unwrap());
        g.release().await.unwrap();
    }
    println!("fences: {fences:?}");
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
}

#[test]
fn blocking_client_keeps_a_lease_across_a_leader_crash() {
    use dflockd_client::blocking::ClusterClient as Blocking;
    let mut cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let c = Blocking::builder(cluster.members())
        .connect_timeout(Duration::from_secs(2))
        .io_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let guard = c
        .lock("blocking-held")
        .lease_ttl(Duration::from_secs(6))
        .acquire()
        .unwrap()
        .expect("free lock");
    let fence = guard.fence().unwrap();
    cluster.kill(leader);
    let end = Instant::now() + Duration::from_secs(12);
    loop {
        if let Some(r) = guard.last_renewal()
            && r.member != cluster.addr(leader)
        {
            assert_eq!(r.fence, fence);
            break;
        }
        assert!(!guard.wait_lost_timeout(Duration::from_millis(50)), "lost");
        assert!(Instant::now() < end, "no renew on the new leader");
    }
    let other = Blocking::builder(cluster.members()).build().unwrap();
    assert!(other.lock("blocking-held").try_acquire().unwrap().is_none());
    guard.release().unwrap();
}

/// On v1.x servers tokens are random: `fence()` returns a number that
/// carries no order (documented on `Fence`). 24 grants in a row would be
/// increasing by chance with probability 1/24!, about 1e-24.
#[test]
fn v1_fences_carry_no_order() {
    use dflockd_client::Kind;
    use dflockd_client::blocking::{BlockingConnection, ConnectOptions};
    let bin = std::env::var_os("DFLOCKD_V1_SERVER").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/dflockd-servers/dflockd-v1.14-signals")
        },
        PathBuf::from,
    );
    if !bin.is_file() {
        println!("SKIP-V1: no dflockd-v1.14-signals binary (set DFLOCKD_V1_SERVER)");
        return;
    }
    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match BlockingConnection::<256, 0>::connect(addr.as_str(), &ConnectOptions::default()) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "v1 server did not start: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut fences = Vec::new();
    for _ in 0..24 {
        let g = conn
            .acquire(Kind::Lock, "v1-fence", 0, None)
            .unwrap()
            .unwrap();
        fences.push(g.token.fence());
        conn.release(Kind::Lock, "v1-fence", &g.token).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !fences.windows(2).all(|w| w[0] < w[1]),
        "v1 fences looked ordered: {fences:?}"
    );
}

/// Issue 12 defect 8: v2 refuses semaphore limits above 1<<20 with a bare
/// `error`; the client refuses them before sending, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_limits_above_the_v2_cap_are_refused_before_sending() {
    use dflockd_client::protocol::validate::MAX_SEMAPHORE_LIMIT;
    let cluster = need_cluster!(0);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let over = MAX_SEMAPHORE_LIMIT + 1;
    assert_eq!(
        cluster
            .raw(leader, &format!("sl\ncap\n0 {over}\n"))
            .as_deref(),
        Some("error"),
        "what the server does"
    );
    let c = client(cluster.members());
    let err = c.semaphore("cap", over).try_acquire().await.unwrap_err();
    assert_eq!(err.to_string(), "invalid limit: larger than 1048576");
    assert_eq!(c.dials(), 0, "refused before connecting");
    let at_cap = c
        .semaphore("cap", MAX_SEMAPHORE_LIMIT)
        .try_acquire()
        .await
        .unwrap();
    at_cap
        .expect("the cap itself is accepted")
        .release()
        .await
        .unwrap();
}
