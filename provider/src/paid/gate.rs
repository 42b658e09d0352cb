//! The receipt gate: one per deal, shared by its connections. GETs are authorized by the
//! deal's dataset, and each payload group goes out only while `sent − receipted ≤ window`.

use tracing::Instrument;

use super::*;

/// Gate state of one deal, shared by all its connections.
#[derive(Debug)]
pub(super) struct DealGate {
    pub(super) deal: Deal,
    pub(super) price: u128,
    pub(super) window: u64,
    pub(super) allowed: Arc<HashSet<Hash>>,
    /// The deal's dataset root is a collection (children may be asked for through it).
    pub(super) collection: bool,
    /// Local time at which the deal enters the expiry margin: no group is sent after it.
    pub(super) stop_at: tokio::time::Instant,
    pub(super) state: Mutex<GateState>,
    pub(super) notify: Notify,
}

impl DealGate {
    /// Whether, with receipts covering `receipted_bytes`, another chunk group may be sent.
    pub(super) fn fits(&self, receipted_bytes: u64) -> bool {
        let sent = self.state.lock().expect("gate lock").sent;
        window_allows(sent, bdc_core::protocol::CHUNK_GROUP_BYTES, receipted_bytes, self.window)
    }
}

#[derive(Debug, Default)]
pub(super) struct GateState {
    /// Bytes sent under this deal (since this process started, plus what was receipted before).
    pub(super) sent: u64,
    /// Bytes covered by the newest stored receipt.
    pub(super) receipted_bytes: u64,
    pub(super) receipted_amount: u128,
    /// Persisted upper bound of `sent`.
    pub(super) reserved: u64,
    /// Bytes an earlier process may have sent beyond the receipts it stored (its persisted
    /// bound of `sent` minus the receipted bytes, as found at start): the buyer may pay for
    /// them on top of what this process sends.
    pub(super) carry: u64,
    /// Amount at the last redeem trigger.
    pub(super) last_trigger: u128,
}

/// The unpaid-risk rule: `size` more bytes may go out only if afterwards
/// `sent − receipted ≤ window`.
pub(super) fn window_allows(sent: u64, size: u64, receipted: u64, window: u64) -> bool {
    sent.saturating_add(size) <= receipted.saturating_add(window)
}

/// Gates kept for deals with no open connection before even those of live deals are dropped.
pub(super) const MAX_IDLE_GATES: usize = 10_000;

/// Run when a connection ends and before a new gate is kept. Drops the gates no connection
/// holds whose deal entered its expiry margin (no Hello is
/// admitted for it any more); past [`MAX_IDLE_GATES`], every gate no connection holds. A dropped
/// gate of a live deal is rebuilt from the ledger on its next Hello, as after a restart: what
/// was reserved and not receipted counts as sent, so the provider risks no more than the window.
pub(super) fn prune_gates(gates: &mut HashMap<B256, Arc<DealGate>>, now: tokio::time::Instant) {
    gates.retain(|_, g| Arc::strong_count(g) > 1 || g.stop_at > now);
    if gates.len() > MAX_IDLE_GATES {
        gates.retain(|_, g| Arc::strong_count(g) > 1);
    }
}

/// Event handler: authorize GETs and Observes by the deal's dataset, children only through its
/// collection root (the receipt gate is in [`GatedWriter`]).
pub(super) fn gate_events(shared: Arc<Shared>) -> EventSender {
    let mask = EventMask {
        get: RequestMode::Intercept,
        get_many: RequestMode::Disabled,
        observe: ObserveMode::Intercept,
        ..EventMask::DEFAULT
    };
    let (tx, mut rx) = EventSender::channel(256, mask);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                ProviderMessage::GetRequestReceived(msg) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let ok = match ready_gate(&shared, msg.connection_id).await {
                            Some(g) => crate::access::get_allowed(
                                &msg.request,
                                |h| g.allowed.contains(h),
                                |h| g.collection && h.as_bytes() == &g.deal.terms.datasetRoot.0,
                            ),
                            None => false,
                        };
                        if !ok {
                            tracing::warn!(hash = %msg.request.hash, "refused paid GET: not in the deal's dataset, or children of a non-collection");
                        }
                        msg.tx.send(if ok { Ok(()) } else { Err(AbortReason::Permission) }).await.ok();
                    });
                }
                ProviderMessage::ObserveRequestReceived(msg) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let ok = ready_gate(&shared, msg.connection_id)
                            .await
                            .is_some_and(|g| g.allowed.contains(&msg.request.hash));
                        msg.tx.send(if ok { Ok(()) } else { Err(AbortReason::Permission) }).await.ok();
                    });
                }
                _ => {}
            }
        }
    });
    tx
}

/// Accepts the connection's bi streams and answers each with iroh-blobs' stream handler, its
/// send side wrapped in the receipt gate. Returns once the connection is closed and every stream
/// task has ended, so no task holds the deal's gate any more (the gate can then be pruned).
pub(super) async fn serve_streams(shared: Arc<Shared>, conn: Connection, events: EventSender) {
    let conn_id = conn.stable_id() as u64;
    let mut streams = tokio::task::JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        while streams.try_join_next().is_some() {}
        let writer = GatedWriter { inner: send, shared: shared.clone(), conn_id, gate: None };
        let pair = StreamPair::new(conn_id, recv, writer, events.clone());
        streams.spawn(iroh_blobs::provider::handle_stream(pair, shared.store.clone()).in_current_span());
    }
    // the connection is gone: nothing a stream still writes can arrive
    streams.shutdown().await;
}

/// The send side of a paid GET stream. Payload groups (iroh-blobs writes each 16 KiB leaf with
/// `send_bytes`) pass only while the deal's window allows; the size header and tree nodes
/// (`send`, 0.4% of the payload) are not counted.
pub(super) struct GatedWriter {
    inner: iroh::endpoint::SendStream,
    shared: Arc<Shared>,
    conn_id: u64,
    gate: Option<Arc<DealGate>>,
}

impl GatedWriter {
    async fn admit(&mut self, size: u64) -> std::io::Result<()> {
        if self.gate.is_none() {
            // the GET was authorized, so the Hello was admitted; wait anyway rather than assume
            self.gate = ready_gate(&self.shared, self.conn_id).await;
        }
        let gate = self.gate.as_ref().ok_or_else(|| std::io::Error::other(GateError::NoDeal))?;
        admit_group(&self.shared, self.conn_id, gate, size).await.map_err(std::io::Error::other)?;
        if let Some(rate) = self.shared.cfg.max_rate {
            tokio::time::sleep(Duration::from_secs_f64(size as f64 / rate.max(1) as f64)).await;
        }
        Ok(())
    }
}

impl iroh_blobs::util::SendStream for GatedWriter {
    async fn send_bytes(&mut self, bytes: bytes::Bytes) -> std::io::Result<()> {
        self.admit(bytes.len() as u64).await?;
        self.inner.send_bytes(bytes).await
    }

    async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        iroh_blobs::util::SendStream::send(&mut self.inner, buf).await
    }

    async fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn reset(&mut self, code: VarInt) -> std::io::Result<()> {
        iroh_blobs::util::SendStream::reset(&mut self.inner, code)
    }

    async fn stopped(&mut self) -> std::io::Result<Option<VarInt>> {
        iroh_blobs::util::SendStream::stopped(&mut self.inner).await
    }

    fn id(&self) -> u64 {
        iroh_blobs::util::SendStream::id(&self.inner)
    }
}

/// Waits (up to the hello timeout) for the connection's Hello to be admitted.
pub(super) async fn ready_gate(shared: &Shared, conn_id: u64) -> Option<Arc<DealGate>> {
    let mut rx = shared.conns.lock().expect("conns lock").get(&conn_id)?.ready.clone();
    let res = tokio::time::timeout(shared.cfg.hello_timeout, rx.wait_for(|r| r.is_some())).await;
    match res {
        Ok(Ok(r)) => r.clone().and_then(|r| r.ok()),
        _ => None,
    }
}

/// Admits one payload group of `size` bytes: counts it as sent if afterwards
/// `sent − receipted ≤ window`, else waits for receipts (up to the stall timeout, then closes the
/// connection). Before counting, the ledger's persisted bound of sent bytes is raised if needed,
/// so a restarted provider still accepts receipts for everything that went out.
pub(super) async fn admit_group(shared: &Shared, conn_id: u64, gate: &DealGate, size: u64) -> Result<(), GateError> {
    let res = wait_for_window(shared, gate, size).await;
    if let Err(e @ (GateError::Expiring | GateError::PaymentTimeout)) = &res {
        tracing::warn!(deal = %gate.deal.id, "closing the paid connection: {e}");
        if let Some(c) = shared.conns.lock().expect("conns lock").get(&conn_id) {
            super::close_paid(shared, &c.conn, &c.closed, e.code());
        }
        let _ = shared.redeem_tx.send(gate.deal.id);
    }
    if let Err(e @ GateError::Persist(_)) = &res {
        tracing::error!(deal = %gate.deal.id, "{e}");
    }
    res
}

/// Counts one group of `size` bytes as sent once the window allows it; see [`admit_group`].
async fn wait_for_window(shared: &Shared, gate: &DealGate, size: u64) -> Result<(), GateError> {
    let id = gate.deal.id;
    let deadline = tokio::time::Instant::now() + shared.cfg.stall_timeout;
    loop {
        // also after waiting for a receipt: no group goes out inside the expiry margin
        if tokio::time::Instant::now() >= gate.stop_at {
            return Err(GateError::Expiring);
        }
        let notified = gate.notify.notified();
        let reserve = {
            let mut s = gate.state.lock().expect("gate lock");
            let sent = s.sent.saturating_add(size);
            if window_allows(s.sent, size, s.receipted_bytes, gate.window) {
                if sent <= s.reserved {
                    s.sent = sent;
                    shared.metrics.paid_bytes_sent.inc_by(size);
                    return Ok(());
                }
                Some(sent + gate.window)
            } else {
                None
            }
        };
        if let Some(r) = reserve {
            let ledger = shared.ledger.clone();
            tokio::task::spawn_blocking(move || ledger.update(&id, |e| e.reserved = e.reserved.max(r)))
                .await
                .map_err(crate::paid::ledger::LedgerError::Task)
                .and_then(|r| r)?;
            let mut s = gate.state.lock().expect("gate lock");
            s.reserved = s.reserved.max(r);
            continue;
        }
        shared.metrics.gate_stalls.inc();
        if tokio::time::timeout_at(deadline.min(gate.stop_at), notified).await.is_err() {
            if tokio::time::Instant::now() >= gate.stop_at {
                continue;
            }
            return Err(GateError::PaymentTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::window_allows;

    proptest! {
        /// Whatever the numbers, a group goes out only if afterwards the bytes sent beyond the
        /// receipts are at most the window, and always goes out when they are.
        #[test]
        fn the_window_bounds_unpaid_bytes_exactly(
            sent in any::<u64>(), size in 0u64..(1 << 20), receipted in any::<u64>(), window in 0u64..(1 << 40),
        ) {
            let allowed = window_allows(sent, size, receipted, window);
            let after = sent as u128 + size as u128;
            prop_assert_eq!(allowed, after <= receipted as u128 + window as u128);
        }

        /// A buyer that never pays gets at most the window, in whole groups, however it asks.
        #[test]
        fn a_buyer_that_never_pays_gets_at_most_the_window(window in 0u64..(64 << 20), group in 1u64..(64 << 10)) {
            let mut sent = 0u64;
            while window_allows(sent, group, 0, window) {
                sent += group;
            }
            prop_assert!(sent <= window && window - sent < group);
        }
    }

    #[test]
    fn edges() {
        assert!(window_allows(0, 16 << 10, 0, 16 << 10), "a window of one group lets one group out");
        assert!(!window_allows(16 << 10, 1, 0, 16 << 10), "and not a byte more");
        assert!(window_allows(u64::MAX - 1, 1, u64::MAX, 0), "no overflow at the top");
        assert!(!window_allows(u64::MAX, 1, 0, 0));
    }
}
