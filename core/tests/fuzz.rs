//! Property fuzzing of every wire decoder and parser in `bdc-core` (stable Rust, proptest):
//! arbitrary bytes and mutations of valid messages must decode to a value or a typed error —
//! never a panic — and no single input may make the decoder allocate more than
//! [`MAX_ALLOC_PER_INPUT`] (a length prefix that claims 4 GiB must not be believed).
//!
//! `make test` runs `PROPTEST_CASES` (default 256) cases per property; `make reliability` runs
//! 20,000. Figures: docs/RELIABILITY.md.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use bdc_core::{
    jobs::{self, JobRequest, JobSpec, JobUpdate, ResultFormat},
    manifest::DatasetManifest,
    paid::{Hello, MAX_MESSAGE_BYTES, Offer, PaidMessage, SignedReceipt},
};
use proptest::prelude::*;

/// Counts the bytes live on the heap and the largest single allocation, for the whole process.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are plain atomics
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout, as GlobalAlloc requires
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from alloc with this layout
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// No decoder may allocate a block larger than this for one input of at most a few KiB.
const MAX_ALLOC_PER_INPUT: usize = 8 << 20;

/// Runs `f` and fails if any single allocation during it exceeded the bound. Allocation sizes
/// are process-wide, so the fuzz properties run one at a time (`--test-threads` is not needed:
/// each property's cases run sequentially, and a concurrent test allocating > 8 MiB at once
/// would only make this stricter).
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= MAX_ALLOC_PER_INPUT, "{what}: one allocation of {largest} bytes");
    out
}

fn hello() -> PaidMessage {
    PaidMessage::Hello(Hello {
        version: 2,
        deal_id: [1; 32],
        terms: vec![7; 416],
        buyer_node: [2; 32],
        sig: vec![3; 65],
    })
}

fn receipt() -> PaidMessage {
    PaidMessage::Receipt(SignedReceipt { deal_id: [4; 32], cumulative: 1 << 40, sig: vec![5; 65] })
}

fn job_request() -> JobRequest {
    JobRequest {
        version: jobs::JOBS_PROTOCOL_VERSION,
        dataset: bdc_core::Hash::new(b"d"),
        spec: JobSpec::Sql {
            query: "SELECT count(*) FROM trades".into(),
            format: ResultFormat::Parquet,
            engine: Default::default(),
        },
        payment: None,
    }
}

const MANIFEST: &str = r#"{"version": 1, "name": "BTC trades", "description": "ticks", "tags": ["btc"],
  "files": [{"name": "trades.parquet", "size": 4096, "hash": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", "media_type": "application/vnd.apache.parquet",
             "columns": [{"name": "ts", "type": "Int64"}]}]}"#;

/// A valid encoding with some bytes overwritten, some cut, or some appended.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (proptest::collection::vec((0..n.max(1), any::<u8>()), 0..8), 0..=n, proptest::collection::vec(any::<u8>(), 0..16))
        .prop_map(move |(edits, cut, tail)| {
            let mut v = valid.clone();
            for (i, b) in edits {
                if i < v.len() {
                    v[i] = b;
                }
            }
            v.truncate(cut.max(1));
            v.extend(tail);
            v
        })
}

proptest! {
    #[test]
    fn paid_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        bounded("PaidMessage", || { let _ = PaidMessage::decode(&bytes); });
    }

    #[test]
    fn mutated_paid_messages_never_panic(
        bytes in mutated(hello().frame()[2..].to_vec()),
        more in mutated(receipt().frame()[2..].to_vec()),
    ) {
        bounded("PaidMessage", || {
            let _ = PaidMessage::decode(&bytes);
            let _ = PaidMessage::decode(&more);
        });
    }

    #[test]
    fn job_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        bounded("job messages", || {
            let _ = jobs::decode::<JobRequest>(&bytes, jobs::MAX_REQUEST_BYTES);
            let _ = jobs::decode::<JobUpdate>(&bytes, jobs::MAX_UPDATE_BYTES);
            let _ = jobs::decode::<SignedReceipt>(&bytes, jobs::MAX_REQUEST_BYTES);
        });
    }

    #[test]
    fn mutated_job_requests_never_panic(bytes in mutated(postcard::to_stdvec(&job_request()).unwrap())) {
        bounded("JobRequest", || { let _ = jobs::decode::<JobRequest>(&bytes, jobs::MAX_REQUEST_BYTES); });
    }

    #[test]
    fn offers_and_tickets_never_panic(s in "\\PC{0,300}", b in "blob[a-z0-9]{0,200}") {
        bounded("offers and tickets", || {
            let _ = s.parse::<Offer>();
            let _ = b.parse::<Offer>();
            let _ = bdc_core::ticket::parse_ticket(&s);
            let _ = bdc_core::ticket::parse_ticket(&b);
        });
    }

    #[test]
    fn manifests_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        edited in mutated(MANIFEST.as_bytes().to_vec()),
    ) {
        bounded("DatasetManifest", || {
            let _ = DatasetManifest::from_bytes(&bytes);
            let _ = DatasetManifest::from_bytes(&edited);
        });
    }
}

#[test]
fn valid_messages_still_decode_and_oversized_ones_are_refused() {
    for m in [hello(), receipt()] {
        let f = m.frame();
        assert_eq!(PaidMessage::decode(&f[2..]).unwrap(), m);
    }
    assert!(PaidMessage::decode(&vec![0; MAX_MESSAGE_BYTES + 1]).is_err());
    let r = job_request();
    assert_eq!(jobs::decode::<JobRequest>(&postcard::to_stdvec(&r).unwrap(), jobs::MAX_REQUEST_BYTES).unwrap(), r);
    DatasetManifest::from_bytes(MANIFEST.as_bytes()).expect("the base manifest of the mutations is valid");
    // a Vec length prefix claiming 2^32 elements is not believed
    let lie = [0u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
    bounded("length prefix", || assert!(PaidMessage::decode(&lie).is_err()));
}
