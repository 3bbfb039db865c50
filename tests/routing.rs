//! Routing across several servers: the PROTOCOL.md vectors, and host locks
//! landing on the server the strategy picks (three testkit servers).

use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::blocking;
use dflockd_client::routing::{Crc32Mod, Rendezvous, RouteError, crc32, route};
use dflockd_testkit::TestServer;

#[test]
fn protocol_vectors() {
    let three = ["a", "b", "c"];
    for (key, crc, index) in [
        ("my-key", 0xD6E3_3AC1, 2),
        ("alpha", 0xD0E0_396A, 1),
        ("user:42", 0x646F_0D86, 1),
    ] {
        assert_eq!(crc32(key), crc, "{key}");
        assert_eq!(route(&Crc32Mod, key, &three), Ok(index), "{key}");
    }
    assert_eq!(route(&Crc32Mod, "k", &[]), Err(RouteError::NoServers));
}

fn held_on(servers: &[TestServer], key: &str) -> Vec<usize> {
    servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.stats().locks.iter().any(|l| l.key == key))
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_locks_follow_the_default_strategy() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::builder().start().await.unwrap());
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    for (key, index) in [("my-key", 2), ("alpha", 1), ("user:42", 1)] {
        let lock = dflockd_client::tokio::DistributedLock::builder(key)
            .servers(&addrs)
            .build();
        let guard = lock.acquire().await.unwrap().unwrap();
        assert_eq!(held_on(&servers, key), vec![index], "{key}");
        guard.release().await.unwrap();
    }

    // Rendezvous: the address with the highest score owns the key.
    let lock = dflockd_client::tokio::DistributedLock::builder("my-key")
        .servers(&addrs)
        .strategy(Rendezvous)
        .build();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let expect = route(&Rendezvous, "my-key", &list).unwrap();
    let guard = lock.acquire().await.unwrap().unwrap();
    assert_eq!(held_on(&servers, "my-key"), vec![expect]);
    guard.release().await.unwrap();

    // A custom strategy's index is checked.
    let bad = dflockd_client::tokio::DistributedLock::builder("k")
        .servers(&addrs)
        .strategy(|_: &str, s: &[&str]| s.len())
        .build();
    match bad.acquire().await {
        Err(Error::Config(c)) => assert_eq!(c.option, "strategy", "{c}"),
        other => panic!("{other:?}"),
    }
    let first = dflockd_client::tokio::DistributedLock::builder("k")
        .servers(&addrs)
        .strategy(|_: &str, _: &[&str]| 0)
        .build();
    let guard = first.acquire().await.unwrap().unwrap();
    assert_eq!(held_on(&servers, "k"), vec![0]);
    guard.release().await.unwrap();
}

#[test]
fn blocking_semaphores_follow_the_default_strategy() {
    let servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::builder().start_blocking().unwrap())
        .collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    for (key, index) in [("my-key", 2), ("alpha", 1), ("user:42", 1)] {
        let sem = blocking::DistributedSemaphore::builder(key, 3)
            .servers(&addrs)
            .acquire_timeout(Duration::from_secs(1))
            .build();
        let guard = sem.acquire().unwrap().unwrap();
        let on: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.stats().semaphores.iter().any(|l| l.key == key))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(on, vec![index], "{key}");
        guard.release().unwrap();
    }
}
