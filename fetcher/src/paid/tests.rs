//! Unit tests of the paid fetch's pure parts.

use super::*;
use crate::SourceReport;

#[test]
fn only_deals_whose_provider_sent_bytes_that_did_not_verify_are_faulty() {
    let node = |b: u8| iroh::SecretKey::from_bytes(&[b; 32]).public();
    let source = |b: u8, bytes: u64, lied: bool| SourceReport {
        provider: node(b),
        bytes,
        pieces: 0,
        dropped: lied.then(|| "verification failed".to_string()),
        closed: None,
        lied,
    };
    let deal =
        |b: u8| SourceDeal { provider: Address::repeat_byte(b), node: node(b), deal: B256::repeat_byte(b), paid: 7 };
    let fetch = FetchReport {
        root: bdc_core::Hash::new(b"root"),
        provider: node(1),
        total_bytes: 0,
        local_bytes: 0,
        fetched_bytes: 0,
        files: Vec::new(),
        elapsed_ms: 0,
        // 3 lied after 5 bytes verified; 2 was dropped for a stall; 4 has no deal here
        sources: vec![source(1, 10, false), source(2, 3, false), source(3, 5, true), source(4, 9, true)],
    };
    let r = PaidReport { fetch, deal: None, paid: 0, price_per_byte: 1, deals: vec![deal(1), deal(2), deal(3)] };
    assert_eq!(r.faulty_deals(), vec![(B256::repeat_byte(3), 5)]);
}
