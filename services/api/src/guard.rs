//! Keeping refused credentials cheap: a bad bearer token or deploy-hook key
//! should cost berth less than it costs the caller to send.
//!
//! A credential the read model does not know may only be too new for it
//! (an API key created a moment ago), so before refusing, the API checks
//! that the read model has caught up with the log: one request on the bus.
//! Two things bound how often that happens:
//!
//! - [`AuthGuard::recently_refused`]: a credential refused in the last
//!   [`REFUSED_TTL`] is refused again from memory. Keys are random and made
//!   by berth, so a credential refused once cannot become valid later
//!   (a key is shown to its owner only after it is in the log).
//! - a token bucket of failures per client address: every refused
//!   credential takes a token; with none left, the address's refusals are
//!   answered 429 with `Retry-After`, and nothing it sends that the read
//!   model does not already accept causes bus work. A valid key from that
//!   address still works, so clients sharing an address (NAT, a CI runner)
//!   with a misbehaving one are not locked out.
//!
//! Both tables are bounded, so an attacker cycling tokens or addresses
//! cannot grow memory: the refused set drops its oldest entries, and
//! addresses beyond [`MAX_ADDRESSES`] share one bucket.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a refused credential is refused from memory.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Most refused credentials remembered (about 100 bytes each).
pub const MAX_REFUSED: usize = 8192;
/// Most client addresses with a bucket of their own (about 60 bytes each).
pub const MAX_ADDRESSES: usize = 16384;
/// Least time between two sweeps of a full address table for buckets
/// that have refilled: a sweep walks the whole table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many failed authentications an address may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimits {
    /// Failures allowed at once (the bucket's size).
    pub burst: u32,
    /// Failures allowed per minute after that (the refill rate).
    pub per_minute: u32,
}

impl Default for FailureLimits {
    fn default() -> Self {
        Self {
            burst: 20,
            per_minute: 10,
        }
    }
}

impl FailureLimits {
    fn refill_per_sec(&self) -> f64 {
        f64::from(self.per_minute.max(1)) / 60.0
    }
}

/// A credential as the refused set knows it: a SHA-256 of what was
/// presented and where, never the credential itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A bearer token.
    pub fn bearer(token: &str) -> Self {
        Self::of(&[b"bearer", token.as_bytes()])
    }

    /// A deploy-hook key presented for a service.
    pub fn hook(service: &str, key: &str) -> Self {
        Self::of(&[b"hook", service.as_bytes(), key.as_bytes()])
    }

    fn of(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Self(h.finalize().into())
    }
}

/// The bucket key of a client: IPv4 addresses as they are, IPv6 by /64
/// (one host usually holds a whole /64), `None` when unknown (a router
/// served without the peer address: all such requests share one bucket).
fn client_key(addr: Option<IpAddr>) -> Option<IpAddr> {
    match addr? {
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        }),
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limits: &FailureLimits, now: Instant) -> Self {
        Self {
            tokens: f64::from(limits.burst),
            at: now,
        }
    }

    fn refill(&mut self, limits: &FailureLimits, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * limits.refill_per_sec()).min(f64::from(limits.burst));
        self.at = now;
    }

    /// How long until a token is back, when there is none.
    fn wait(&self, limits: &FailureLimits) -> Option<Duration> {
        (self.tokens < 1.0)
            .then(|| Duration::from_secs_f64((1.0 - self.tokens) / limits.refill_per_sec()))
    }
}

/// Failure buckets per client address, bounded.
#[derive(Debug)]
struct Limiter {
    limits: FailureLimits,
    buckets: HashMap<Option<IpAddr>, Bucket>,
    /// Shared by every address that found the table full.
    overflow: Bucket,
    swept: Option<Instant>,
}

impl Limiter {
    fn new(limits: FailureLimits, now: Instant) -> Self {
        Self {
            limits,
            buckets: HashMap::new(),
            overflow: Bucket::full(&limits, now),
            swept: None,
        }
    }

    /// `client`'s wait, if it has no failure left (creates nothing).
    fn blocked(&mut self, client: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let limits = self.limits;
        let full = self.buckets.len() >= MAX_ADDRESSES;
        let bucket = match self.buckets.get_mut(&client) {
            Some(b) => b,
            None if full => &mut self.overflow,
            None => return None,
        };
        bucket.refill(&limits, now);
        bucket.wait(&limits)
    }

    /// Records a failure of `client`: `Err(wait)` when it had none left.
    fn fail(&mut self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let limits = self.limits;
        if !self.buckets.contains_key(&client) && self.buckets.len() >= MAX_ADDRESSES {
            self.sweep(now);
        }
        let bucket = if self.buckets.len() < MAX_ADDRESSES || self.buckets.contains_key(&client) {
            self.buckets
                .entry(client)
                .or_insert_with(|| Bucket::full(&limits, now))
        } else {
            &mut self.overflow
        };
        bucket.refill(&limits, now);
        match bucket.wait(&limits) {
            Some(wait) => Err(wait),
            None => {
                bucket.tokens -= 1.0;
                Ok(())
            }
        }
    }

    /// Forgets buckets that have refilled (the same as having none).
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        let limits = self.limits;
        self.buckets.retain(|_, b| {
            b.refill(&limits, now);
            b.tokens < f64::from(limits.burst)
        });
    }
}

/// Credentials refused lately, oldest first; bounded.
#[derive(Debug, Default)]
struct Refused {
    until: HashMap<Fingerprint, Instant>,
    order: VecDeque<(Fingerprint, Instant)>,
}

impl Refused {
    fn expire(&mut self, now: Instant) {
        while let Some(&(print, until)) = self.order.front() {
            if until > now && self.order.len() <= MAX_REFUSED {
                break;
            }
            self.order.pop_front();
            if self.until.get(&print) == Some(&until) {
                self.until.remove(&print);
            }
        }
    }

    fn contains(&mut self, print: &Fingerprint, now: Instant) -> bool {
        self.expire(now);
        self.until.contains_key(print)
    }

    fn insert(&mut self, print: Fingerprint, now: Instant) {
        let until = now + REFUSED_TTL;
        self.until.insert(print, until);
        self.order.push_back((print, until));
        self.expire(now);
    }
}

/// The API's memory of refused credentials and failing addresses.
#[derive(Debug)]
pub struct AuthGuard {
    refused: Mutex<Refused>,
    limiter: Mutex<Limiter>,
}

impl Default for AuthGuard {
    fn default() -> Self {
        Self::new(FailureLimits::default())
    }
}

impl AuthGuard {
    /// A guard allowing each address `limits`.
    pub fn new(limits: FailureLimits) -> Self {
        Self {
            refused: Mutex::default(),
            limiter: Mutex::new(Limiter::new(limits, Instant::now())),
        }
    }

    /// Whether `print` was refused in the last [`REFUSED_TTL`].
    pub fn recently_refused(&self, print: &Fingerprint) -> bool {
        // A poisoned lock only means a panic elsewhere mid-update of a cache:
        // the data is still a valid cache.
        let mut r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        r.contains(print, Instant::now())
    }

    /// Remembers that `print` was refused after checking against the log.
    pub fn remember_refused(&self, print: Fingerprint) {
        let mut r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        r.insert(print, Instant::now());
    }

    /// How long `client` must wait, when it has used up its failures.
    pub fn blocked(&self, client: Option<IpAddr>) -> Option<Duration> {
        let mut l = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        l.blocked(client_key(client), Instant::now())
    }

    /// Records a refused credential from `client`: `Err(wait)` when it had
    /// no failure left, to be answered 429 instead of the refusal.
    pub fn failed(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let mut l = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        l.fail(client_key(client), Instant::now())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const LIMITS: FailureLimits = FailureLimits {
        burst: 3,
        per_minute: 6,
    };

    #[test]
    fn an_address_fails_its_burst_then_waits_for_the_refill() {
        let t0 = Instant::now();
        let mut l = Limiter::new(LIMITS, t0);
        let a = client_key(ip("10.0.0.1"));
        for _ in 0..3 {
            assert_eq!(l.blocked(a, t0), None);
            assert_eq!(l.fail(a, t0), Ok(()));
        }
        // 6 a minute: one token every 10 s.
        let secs = |d: Duration| d.as_secs_f64().round();
        assert_eq!(l.fail(a, t0).map_err(secs), Err(10.0));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(l.blocked(a, at(4000)).map(secs), Some(6.0));
        assert_eq!(l.fail(a, at(10_500)), Ok(()));
        assert!(l.fail(a, at(11_000)).is_err());
        // Another address is not affected.
        assert_eq!(l.fail(client_key(ip("10.0.0.2")), t0), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(None), None);
    }

    #[test]
    fn a_full_address_table_forgets_refilled_buckets_or_shares_one() {
        let t0 = Instant::now();
        let mut l = Limiter::new(LIMITS, t0);
        for i in 0..MAX_ADDRESSES as u32 {
            let a = Some(IpAddr::V4(i.into()));
            l.fail(a, t0).unwrap();
        }
        assert_eq!(l.buckets.len(), MAX_ADDRESSES);
        // Full and nothing refilled: newcomers share the overflow bucket.
        let (x, y) = (client_key(ip("203.0.113.1")), client_key(ip("203.0.113.2")));
        for _ in 0..3 {
            l.fail(x, t0).unwrap();
        }
        assert!(l.fail(y, t0).is_err(), "the overflow bucket is shared");
        assert_eq!(l.buckets.len(), MAX_ADDRESSES, "the table did not grow");
        // Once the old buckets have refilled, a sweep makes room.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.fail(y, later), Ok(()));
        assert_eq!(l.buckets.len(), 1);
    }

    #[test]
    fn refused_credentials_expire_and_the_set_is_bounded() {
        let t0 = Instant::now();
        let mut r = Refused::default();
        let a = Fingerprint::bearer("a");
        r.insert(a, t0);
        assert!(r.contains(&a, t0 + REFUSED_TTL - Duration::from_millis(1)));
        assert!(!r.contains(&a, t0 + REFUSED_TTL));
        for i in 0..(MAX_REFUSED + 100) {
            r.insert(Fingerprint::bearer(&i.to_string()), t0);
        }
        assert!(r.until.len() <= MAX_REFUSED && r.order.len() <= MAX_REFUSED);
        // The oldest went first.
        assert!(!r.contains(&Fingerprint::bearer("0"), t0));
        assert!(r.contains(&Fingerprint::bearer(&(MAX_REFUSED + 99).to_string()), t0));
    }

    #[test]
    fn fingerprints_separate_kinds_and_parts() {
        assert_ne!(Fingerprint::bearer("k"), Fingerprint::hook("", "k"));
        assert_ne!(Fingerprint::hook("ab", "c"), Fingerprint::hook("a", "bc"));
        assert_eq!(Fingerprint::hook("a", "b"), Fingerprint::hook("a", "b"));
    }
}
