//! Bounds on listing intake, so throwaway keys cannot flood the book (MARKET.md, "Listing
//! intake under abuse").
//!
//! A listing costs its signer nothing but a signature, so a stranger can make 10,000 keys and
//! list a popular root from each. Three bounds keep honest offers visible:
//! - **per signer**: a token bucket of [`IntakeLimits::burst`] listings refilled at
//!   [`IntakeLimits::per_minute`] a minute, and at most [`IntakeLimits::per_provider`] stored
//!   listings;
//! - **per root**: at most [`IntakeLimits::per_root`] stored listings (expired ones are dropped
//!   first). When a root is full a provider *with standing* (a completed deal or a measured
//!   throughput on chain, which cost real tokens) takes the place of the oldest listing by a
//!   provider without; a provider without standing is refused until listings expire;
//! - **at match time** the book prefers providers with standing when a root has more offers
//!   than one match scans ([`crate::book::OfferBook::candidates`]).
//!
//! Replacing one's own listing is always allowed (within the signer's rate).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The bounds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntakeLimits {
    /// Listings one signer may post in a burst.
    pub burst: f64,
    /// Listings one signer may post a minute, sustained.
    pub per_minute: f64,
    /// Listings stored for one root.
    pub per_root: i64,
    /// Listings stored for one provider (a root must be registered on chain to be listed, so
    /// this mostly bounds one key's share of the table).
    pub per_provider: i64,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self { burst: 120.0, per_minute: 60.0, per_root: 1_000, per_provider: 10_000 }
    }
}

/// Signers tracked at once; past it, buckets idle long enough to be full again are forgotten.
const MAX_TRACKED: usize = 100_000;

/// The bounds and the per-signer token buckets.
#[derive(Debug, Default)]
pub struct Gate {
    pub limits: IntakeLimits,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Gate {
    pub fn new(limits: IntakeLimits) -> Self {
        Self { limits, buckets: Mutex::default() }
    }

    /// Takes one listing from `signer`'s bucket; how long to wait if it is empty.
    pub fn take(&self, signer: &str) -> Result<(), Duration> {
        self.take_at(signer, Instant::now())
    }

    fn take_at(&self, signer: &str, now: Instant) -> Result<(), Duration> {
        let IntakeLimits { burst, per_minute, .. } = self.limits;
        let per_minute = per_minute.max(1e-3);
        let mut b = self.buckets.lock().expect("intake lock");
        if b.len() >= MAX_TRACKED {
            let full_after = Duration::from_secs_f64(burst / per_minute * 60.0);
            b.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = b.entry(signer.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_minute / 60.0).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - *tokens) * 60.0 / per_minute));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_gets_its_burst_then_its_rate() {
        let g = Gate::default();
        let t = Instant::now();
        for _ in 0..g.limits.burst as usize {
            g.take_at("a", t).unwrap();
        }
        let wait = g.take_at("a", t).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO, "{wait:?}");
        // another signer is not affected; one second refills one listing
        g.take_at("b", t).unwrap();
        g.take_at("a", t + Duration::from_secs(1)).unwrap();
        assert!(g.take_at("a", t + Duration::from_secs(1)).is_err());
    }
}
