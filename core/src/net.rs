//! Endpoint settings shared by every bdc node.
//!
//! bdc runs offline by default: no relay servers, no DNS/pkarr discovery, no port mapping. Peers
//! are dialed by the direct addresses carried in tickets (or market listings). Relays can be
//! turned on for real networks with [`NetConfig::relays`].

use std::net::SocketAddr;

use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey, TransportAddr, endpoint::presets};

/// How a node's iroh endpoint binds and whom it talks to.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Local UDP socket address. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Use n0's default relay servers (off by default: tests and devnets never leave the host).
    pub relays: bool,
}

impl NetConfig {
    /// Loopback on a free port: what tests use.
    pub fn test() -> Self {
        Self { bind: "127.0.0.1:0".parse().expect("static address"), relays: false }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self { bind: "0.0.0.0:0".parse().expect("static address"), relays: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid bind address {addr}: {source}")]
    BadBind {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot bind iroh endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Binds an endpoint per `cfg` with the given key and ALPNs.
pub async fn bind_endpoint(cfg: &NetConfig, key: SecretKey, alpns: Vec<Vec<u8>>) -> Result<Endpoint, NetError> {
    let relay = if cfg.relays { RelayMode::Default } else { RelayMode::Disabled };
    let builder = Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .alpns(alpns)
        .relay_mode(relay)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(cfg.bind)
        .map_err(|e| NetError::BadBind { addr: cfg.bind, source: Box::new(e) })?;
    builder.bind().await.map_err(|e| NetError::Bind { addr: cfg.bind, source: Box::new(e) })
}

/// The address others should dial: the endpoint's own view, plus its bound sockets (with an
/// unspecified IP replaced by loopback) when the endpoint reports no direct address.
pub fn dialable_addr(ep: &Endpoint) -> EndpointAddr {
    let mut addr = ep.addr();
    let has_ip = addr.addrs.iter().any(|a| matches!(a, TransportAddr::Ip(_)));
    if !has_ip {
        for mut s in ep.bound_sockets() {
            if s.ip().is_unspecified() {
                s.set_ip(if s.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            addr.addrs.insert(TransportAddr::Ip(s));
        }
    }
    addr
}
