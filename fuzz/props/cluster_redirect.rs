//! The cluster client's redirect path: reply lines from fuzzer-made nodes,
//! parsed by the real reply parser, the leader hint kept as the error keeps
//! it ([`LeaderAddr`]) and looked up among the members, then the
//! [`Router`]'s decision.
//!
//! Input: byte 0 picks the member count (1 to 5), byte 1 the redirect
//! budget (1 to 16); the rest is events separated by `\n`: `F` (the node
//! failed), `A` (it answered a write), `S` (a new operation starts), or any
//! other line, taken as the node's reply.
//!
//! Properties: every route names a member; a hint is kept whole (cut only
//! past [`MAX_LEADER_ADDR`] bytes); a zero-delay retry goes only to the
//! member a fresh hint names, never to the node that answered; a bare,
//! stale or foreign hint always waits (no tight loop), and no wait exceeds
//! the policy's maximum; an operation gives up exactly when its attempts
//! reach the budget, never later; after an answered write, the next
//! operation starts at that member.

use core::time::Duration;

use dflockd_client::cluster::{Members, Next, RedirectPolicy, Route, Router};
use dflockd_client::protocol::{Expect, Reply, Status, parse_reply};
use dflockd_client::{LeaderAddr, MAX_LEADER_ADDR};

/// Client-facing addresses, as the servers would advertise them.
const MEMBERS: [&str; 5] = [
    "10.0.0.1:6388",
    "10.0.0.2:6388",
    "node-c.example:7000",
    "[::1]:6388",
    "n5:1",
];

const MAX_WAIT: Duration = Duration::from_secs(1);

/// The target.
pub fn run(data: &[u8]) {
    let (Some(&m), Some(&b)) = (data.first(), data.get(1)) else {
        return;
    };
    let n = 1 + usize::from(m) % MEMBERS.len();
    let members = &MEMBERS[..n];
    let budget = 1 + u32::from(b % 16);
    // The default backoff: 50 ms doubling to MAX_WAIT.
    let policy = RedirectPolicy::DEFAULT.with_budget(budget);
    let Ok(mut router) = Router::new(n, policy) else {
        panic!("{n} members refused");
    };
    let mut route = start(&mut router, n);
    for event in data[2..].split(|&c| c == b'\n') {
        let at = route.member;
        let next = match event {
            b"S" => {
                route = start(&mut router, n);
                continue;
            }
            b"A" => {
                router.answered(at, true);
                assert_eq!(router.leader(), Some(at));
                route = start(&mut router, n);
                assert_eq!(route.member, at, "a new operation starts at the leader");
                continue;
            }
            b"F" => router.failed(at),
            line => {
                let hint = match parse_reply(line, Expect::Ok) {
                    Ok(Reply::Status(Status::NotLeader(addr))) => addr,
                    // Not a redirect: the driver returns or retries
                    // elsewhere; the router is not involved.
                    _ => continue,
                };
                let kept = hint.map(LeaderAddr::new);
                if let (Some(h), Some(k)) = (hint, &kept) {
                    let whole = h.len() <= MAX_LEADER_ADDR;
                    assert!(
                        if whole {
                            k.as_str() == h
                        } else {
                            h.starts_with(k.as_str())
                        },
                        "leader address {h:?} kept as {k:?}"
                    );
                }
                let index = kept.as_ref().and_then(|k| members.find(k));
                let next = router.redirected(at, index);
                if let Next::Retry(r) = next {
                    if r.delay.is_zero() {
                        assert_eq!(
                            Some(r.member),
                            index,
                            "a zero-delay retry without a fresh hint"
                        );
                        assert_ne!(r.member, at, "redirected to the node that answered");
                    }
                    if index.is_none() || index == Some(at) {
                        assert!(!r.delay.is_zero(), "no leader known, but no wait");
                    }
                }
                next
            }
        };
        match next {
            Next::Retry(r) => {
                assert!(r.member < n, "route to member {} of {n}", r.member);
                assert!(r.delay <= MAX_WAIT, "waits {:?}", r.delay);
                assert!(router.attempts() < budget, "retried past the budget");
                route = r;
            }
            Next::GiveUp { attempts } => {
                assert_eq!(attempts, budget, "gave up after {attempts} of {budget}");
                route = start(&mut router, n);
            }
        }
    }
}

fn start(router: &mut Router, n: usize) -> Route {
    let r = router.start();
    assert!(r.member < n && r.delay.is_zero(), "{r:?}");
    assert_eq!(router.attempts(), 0);
    r
}
