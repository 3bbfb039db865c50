//! What the tokio and blocking cluster clients share: the builder, the
//! settings, the renewal report and the random stable ref.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::marker::PhantomData;
use std::string::String;
use std::sync::Arc;
use std::time::Duration;
use std::vec::Vec;

use super::HostTls;
use crate::cluster::{RedirectPolicy, StableRef, validate_members};
use crate::lock::{DEFAULT_IO_TIMEOUT, Rng};
use crate::runtime::AuthToken;
use crate::{Error, Fence};

/// Line buffer of cluster lane connections: room for the longest
/// `error_not_leader` reply ([`CLUSTER_MIN_LINE_BUF`](crate::cluster::CLUSTER_MIN_LINE_BUF)).
pub(crate) const CLUSTER_LINE: usize = 512;

/// Largest `stats` reply the cluster clients read.
pub(crate) const STATS_BUF: usize = 256 * 1024;

/// One successful renew of a cluster lease, as reported by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The member that served the renew (the leader at the time).
    pub member: String,
    /// The lease's fence (the same for the life of the lease).
    pub fence: Fence,
    /// The lease time the server granted with this renew.
    pub remaining: Duration,
    /// How many renews succeeded so far (1 for the first).
    pub count: u64,
}

/// Everything a cluster client needs; shared by its lanes and guards.
#[derive(Debug)]
pub struct ClusterSettings {
    pub(crate) members: Arc<[String]>,
    pub(crate) auth_token: Option<AuthToken>,
    pub(crate) stable_ref: StableRef,
    pub(crate) policy: RedirectPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) tls: Option<HostTls>,
}

pub(crate) mod sealed {
    pub trait FromClusterSettings: Sized {
        fn from_settings(
            settings: super::ClusterSettings,
        ) -> Result<Self, crate::Error<std::io::Error>>;
    }
}

/// Builds a cluster client (tokio or blocking): members, authentication,
/// stable ref, redirect policy, timeouts, TLS.
///
/// ```no_run
/// # fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
/// use dflockd_client::blocking::ClusterClient;
///
/// let client = ClusterClient::builder(["10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"])
///     .stable_ref("billing-worker-7") // default: random, kept for the client's life
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
pub struct ClusterBuilder<C> {
    members: Vec<String>,
    auth_token: Option<AuthToken>,
    stable_ref: Option<String>,
    policy: RedirectPolicy,
    connect_timeout: Duration,
    io_timeout: Duration,
    tls: Option<HostTls>,
    _target: PhantomData<fn() -> C>,
}

impl<C> core::fmt::Debug for ClusterBuilder<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("members", &self.members)
            .field("auth_token", &self.auth_token)
            .field("stable_ref", &self.stable_ref)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<C: sealed::FromClusterSettings> ClusterBuilder<C> {
    pub(crate) fn new<I, S>(members: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            members: members.into_iter().map(Into::into).collect(),
            auth_token: None,
            stable_ref: None,
            policy: RedirectPolicy::DEFAULT,
            connect_timeout: crate::runtime::DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            tls: None,
            _target: PhantomData,
        }
    }

    /// Sends `auth` with this token on every new connection. Never logged.
    pub fn auth_token(mut self, token: impl Into<AuthToken>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// The client's stable ref (1 to 64 bytes of printable ASCII; checked
    /// by [`build`](Self::build)). Default: a random ref, kept for the
    /// client's lifetime. Set it to get locks back across a process
    /// restart (with `--orphan-ttl`); never share one between clients.
    pub fn stable_ref(mut self, reference: impl Into<String>) -> Self {
        self.stable_ref = Some(reference.into());
        self
    }

    /// The redirect budget and backoff (default [`RedirectPolicy::DEFAULT`]).
    pub fn redirect_policy(mut self, policy: RedirectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Gives up dialling a member after this long (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reply timeout beyond any server-side blocking, also for the
    /// `auth` / `stable-ref` handshake, `barrier`, `ping`, `stats`
    /// (default 10 s).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// TLS to every member (feature `rustls`), each checked against the
    /// connector's server name.
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, connector: super::rustls::RustlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Builds the client. Connects lazily.
    ///
    /// [`Error::InvalidArgument`] for an empty or over-long member list
    /// (at most [`MAX_MEMBERS`](crate::cluster::MAX_MEMBERS)) or an invalid
    /// stable ref.
    pub fn build(self) -> Result<C, Error<io::Error>> {
        validate_members(&self.members)?;
        let stable_ref = match &self.stable_ref {
            Some(r) => StableRef::new(r)?,
            None => StableRef::random(&mut OsHashRng::default()),
        };
        C::from_settings(ClusterSettings {
            members: self.members.into(),
            auth_token: self.auth_token,
            stable_ref,
            policy: self.policy,
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            tls: self.tls,
        })
    }
}

/// Random numbers from std's randomly keyed SipHash (`RandomState`, seeded
/// by the OS per process), mixed with a counter and the clock: enough to
/// keep the stable refs of different clients apart.
#[derive(Default)]
struct OsHashRng {
    n: u64,
}

impl Rng for OsHashRng {
    fn next_u32(&mut self) -> u32 {
        self.n += 1;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.n);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        (h.finish() >> 16) as u32
    }
}

/// The JSON of a `stats` reply read into `buf`, as an owned string.
pub(crate) fn owned_stats(json: &str) -> String {
    String::from(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_refs_differ() {
        let mut rng = OsHashRng::default();
        let a = StableRef::random(&mut rng);
        let b = StableRef::random(&mut OsHashRng::default());
        assert_ne!(a, b);
    }
}
