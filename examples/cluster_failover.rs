//! Holds a lock on a dflockd v2 cluster while leaders come and go.
//!
//! ```sh
//! # against a real cluster (stop its leader meanwhile, e.g. with kill):
//! DFLOCKD_CLUSTER=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!     cargo run --example cluster_failover -- --lease 4 --secs 20
//! # without DFLOCKD_CLUSTER: three in-process testkit nodes in cluster
//! # mode, whose leader this example crashes every quarter of --secs
//! cargo run --example cluster_failover
//! ```
//!
//! Takes the lock `cluster-failover-demo` with a short lease, prints every
//! renew with the node that served it and the fence, and keeps the lock
//! for `--secs` seconds. Its last line is
//! `cluster_failover: held across N leader changes, fence F, lost 0`.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dflockd_client::tokio::ClusterClient;
use dflockd_testkit::TestCluster;

#[derive(Parser)]
#[command(about = "Hold a lock on a dflockd v2 cluster across leader changes")]
struct Args {
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 4)]
    lease: u64,
    /// How long to hold the lock, in seconds.
    #[arg(long, default_value_t = 20)]
    secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (members, local) = match std::env::var("DFLOCKD_CLUSTER") {
        Ok(list) => {
            let members: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            println!("cluster: {}", members.join(", "));
            (members, None)
        }
        Err(_) => {
            let cluster = Arc::new(TestCluster::builder().start().await?);
            println!(
                "no DFLOCKD_CLUSTER: three in-process testkit nodes {}",
                cluster.addrs().join(", ")
            );
            (cluster.addrs(), Some(cluster))
        }
    };
    let client = ClusterClient::builder(members).build()?;
    let mut guard = client
        .lock("cluster-failover-demo")
        .lease_ttl(Duration::from_secs(args.lease))
        .acquire()
        .await?
        .ok_or("lock not granted within the acquire timeout")?;
    let fence = guard.fence().ok_or("lost at once")?;
    println!(
        "acquired on {} with fence {fence} (lease {} s, stable ref {})",
        guard.granted_by(),
        args.lease,
        client.stable_ref()
    );

    // In-process: crash the leader every quarter of the run, elect the
    // next node half a second later, and bring the crashed one back.
    if let Some(cluster) = local.clone() {
        let every = Duration::from_secs(args.secs) / 4;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(old) = cluster.leader() else {
                    continue;
                };
                cluster.stop_node(old);
                println!("  (testkit: node {} crashed)", cluster.addr(old));
                tokio::time::sleep(Duration::from_millis(500)).await;
                let new = (old + 1) % 3;
                cluster.set_leader(Some(new));
                cluster.reset_hints();
                println!("  (testkit: node {} elected)", cluster.addr(new));
                let _ = cluster.start_node(old).await;
            }
        });
    }

    let end = tokio::time::Instant::now() + Duration::from_secs(args.secs);
    let mut serving = guard.granted_by().to_string();
    let mut changes = 0u32;
    let mut lost = 0u32;
    loop {
        tokio::select! {
            renewal = guard.next_renewal() => match renewal {
                Some(r) => {
                    if r.member != serving {
                        changes += 1;
                        serving = r.member.clone();
                    }
                    println!(
                        "renew #{} on {} fence {} ({} s lease)",
                        r.count,
                        r.member,
                        r.fence,
                        r.remaining.as_secs()
                    );
                    if r.fence != fence {
                        return Err("the fence changed under a held lease".into());
                    }
                }
                None => {
                    lost = 1;
                    println!("lease lost");
                    break;
                }
            },
            () = tokio::time::sleep_until(end) => break,
        }
    }
    if lost == 0 {
        guard.release().await?;
    }
    println!("cluster_failover: held across {changes} leader changes, fence {fence}, lost {lost}");
    drop(local);
    if lost == 0 {
        Ok(())
    } else {
        Err("lease lost".into())
    }
}
