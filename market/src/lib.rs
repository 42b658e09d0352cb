//! bdc-market: the market service (index, listings, search, matchmaking, reputation, HTTP API).
//!
//! Not built yet: see the "Market" issue and docs/ARCHITECTURE.md. The crate exists so the
//! workspace layering (core below; provider, fetcher, market side by side) is checked from day one.
