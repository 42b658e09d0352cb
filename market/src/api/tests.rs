//! Handler tests without sockets: the real router (with its tower stack) answers requests built
//! in memory (`oneshot`), over a real SQLite database; answers decode into the API's types.

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use bdc_market_api::{DatasetDetail, DealRecord, ErrorBody, MatchResponse, ProviderRecord, SearchPage, Status};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use super::*;

const ROOT: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const DEAL: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";
const PROVIDER: &str = "0x3333333333333333333333333333333333333333";
const VENDOR: &str = "0x4444444444444444444444444444444444444444";

async fn app() -> (Router, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}?mode=rwc", tmp.path().join("m.db").display())).await.unwrap();
    let sql = [
        format!(
            "INSERT INTO datasets (root, vendor, royalty_bps, manifest_hash, price_hint, block) VALUES \
             ('{ROOT}', '{VENDOR}', 1000, '{:#x}', '1000000000', 1)",
            B256::ZERO
        ),
        format!(
            "INSERT INTO dataset_meta (root, name, description, tags, size, files, manifest_verified, manifest_hash) \
             VALUES ('{ROOT}', 'kaiko trades', 'BTC trades', 'btc,trades', 3221225472, \
             '[{{\"name\":\"trades.csv\",\"size\":1536,\"media_type\":\"text/csv\",\"columns\":[{{\"name\":\"price\",\"type\":\"Float64\"}}]}}]', 0, '')"
        ),
        format!("INSERT INTO terms (term, root, name) VALUES ('kaiko', '{ROOT}', 'kaiko trades')"),
        format!(
            "INSERT INTO listings (provider, root, node_id, addrs, region, price_per_byte, price_gib, window_bytes, \
             capacity_mibps, issued_at, expires_at, signature, arbiters) VALUES ('{PROVIDER}', '{ROOT}', '{DEAL}', \
             '127.0.0.1:4000', 'eu', '1000000000', 1.073741824, 4194304, 100, {}, {}, '0x{}', '{VENDOR}')",
            now() - 10,
            now() + 3600,
            "ab".repeat(65)
        ),
        format!(
            "INSERT INTO deals (id, buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, \
             opened_block, redeemed, refunded, state, buyer_won, arbiter, opened_at) VALUES ('{DEAL}', '{VENDOR}', \
             '{PROVIDER}', '{ROOT}', '1000000000', '99999023037963261130', 4194304, 1796661375, 7, \
             '500000000000000000', '0', 'open', 0, '{VENDOR}', 1796601700)"
        ),
        format!(
            "INSERT INTO redemptions (deal, block, log_index, cumulative, block_time) VALUES \
             ('{DEAL}', 9, 0, '100000000000000000', 1796661000), ('{DEAL}', 12, 0, '500000000000000000', 1796661300)"
        ),
    ];
    for q in sql {
        sqlx::query(&q).execute(&db.pool).await.unwrap();
    }
    let st = AppState {
        db,
        chain_id: 31337,
        registry: Address::ZERO,
        metrics: Arc::default(),
        index: Arc::new(Mutex::new((20, 18))),
        book: OfferBook::new(),
        intake: Default::default(),
    };
    (router(st, Limits::default()), tmp)
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (status, axum::body::to_bytes(res.into_body(), 1 << 24).await.unwrap().to_vec())
}

async fn get<T: DeserializeOwned>(app: &Router, uri: &str) -> T {
    let (status, body) = call(app, "GET", uri, None).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body)))
}

#[tokio::test]
async fn every_answer_decodes_into_its_type() {
    let (app, _tmp) = app().await;
    let page: SearchPage = get(&app, "/datasets?q=kai").await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].size, 3 << 30);
    assert_eq!(page.items[0].offers, 1);
    let d: DatasetDetail = get(&app, &format!("/datasets/{ROOT}")).await;
    assert_eq!((d.royalty_bps, d.files[0].columns[0].data_type.as_str()), (1000, "Float64"));
    assert_eq!(d.offers[0].price_per_byte.0, 1_000_000_000);
    assert_eq!(d.sales.len(), 1, "one day of sales");
    let p: ProviderRecord = get(&app, &format!("/providers/{PROVIDER}")).await;
    assert_eq!((p.listings.len(), p.deals.len()), (1, 1));
    let deal: DealRecord = get(&app, &format!("/deals/{DEAL}")).await;
    assert_eq!(deal.max_amount.0, 99_999_023_037_963_261_130, "amounts above 2^64 survive the trip");
    assert_eq!(deal.redemptions.iter().map(|r| r.time).collect::<Vec<_>>(), [1_796_661_000, 1_796_661_300]);
    assert_eq!(deal.provider_at_risk.0, 4_194_304 * 1_000_000_000);
    let status: Status = get(&app, "/status").await;
    assert_eq!((status.head, status.indexed, status.lag_blocks), (20, 18, 2));
    let m: MatchResponse = get_post(&app, "/match", &format!("{{\"root\":\"{ROOT}\"}}")).await;
    assert_eq!(m.offers.len(), 1);
    assert_eq!(format!("{:#x}", m.offers[0].provider), PROVIDER);
    assert_eq!(m.offers[0].listing.dataset_root, ROOT.parse::<B256>().unwrap());
}

async fn get_post<T: DeserializeOwned>(app: &Router, uri: &str, body: &str) -> T {
    let (status, bytes) = call(app, "POST", uri, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn errors_are_one_json_shape_with_a_reason() {
    let (app, _tmp) = app().await;
    for (method, uri, body, want) in [
        ("GET", "/deals/0x12", None, StatusCode::BAD_REQUEST),
        ("GET", format!("/deals/{ROOT}").as_str(), None, StatusCode::NOT_FOUND),
        ("GET", "/datasets?limit=1000", None, StatusCode::BAD_REQUEST),
        ("GET", "/nowhere", None, StatusCode::NOT_FOUND),
        ("POST", "/match", Some("{\"rank\":{\"x\":\"region\"}}"), StatusCode::BAD_REQUEST),
        ("POST", "/match", Some("{\"unknown\":1}"), StatusCode::BAD_REQUEST),
        ("POST", "/listings", Some("{\"listing\":{}}"), StatusCode::BAD_REQUEST),
        ("POST", "/reports", Some("not json"), StatusCode::BAD_REQUEST),
    ] {
        let (status, bytes) = call(&app, method, uri, body).await;
        assert_eq!(status, want, "{method} {uri}: {}", String::from_utf8_lossy(&bytes));
        let e: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert!(!e.error.is_empty(), "{method} {uri}");
    }
}

#[tokio::test]
async fn the_openapi_document_names_every_route_and_its_types() {
    let (app, _tmp) = app().await;
    let doc: serde_json::Value = get(&app, "/openapi.json").await;
    for (path, method) in [
        ("/datasets", "get"),
        ("/datasets/{root}", "get"),
        ("/providers/{id}", "get"),
        ("/deals/{id}", "get"),
        ("/listings", "post"),
        ("/reports", "post"),
        ("/match", "post"),
        ("/status", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    let schemas = &doc["components"]["schemas"];
    for t in ["DealRecord", "DatasetDetail", "SignedListing", "MatchRequest", "MatchResponse", "Amount", "ErrorBody"] {
        assert!(schemas[t].is_object(), "schema {t} missing");
    }
    // an amount is a decimal string, not a number that loses precision
    assert_eq!(schemas["Amount"]["type"], "string");
    assert_eq!(schemas["DealRecord"]["properties"]["max_amount"]["$ref"], "#/components/schemas/Amount");
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern() {
    let (app, _tmp) = app().await;
    call(&app, "GET", &format!("/deals/{DEAL}"), None).await;
    call(&app, "GET", &format!("/deals/{ROOT}"), None).await;
    let (status, text) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("bdc_market_requests_total{route=\"/deals/{id}\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("bdc_market_requests_total{route=\"/deals/{id}\",status=\"404\"} 1"), "{text}");
    assert!(text.contains("bdc_market_request_seconds_count{route=\"/deals/{id}\"} 2"), "{text}");
    assert!(text.contains("bdc_market_deals 1") && text.contains("bdc_market_chain_head 20"), "{text}");
    assert!(!text.contains(DEAL), "ids never become label values: {text}");
}

#[tokio::test]
async fn pages_render_from_the_same_records() {
    let (app, _tmp) = app().await;
    for uri in [
        "/?q=kaiko".to_string(),
        format!("/ui/datasets/{ROOT}"),
        format!("/ui/providers/{PROVIDER}"),
        format!("/ui/deals/{DEAL}"),
    ] {
        let (status, body) = call(&app, "GET", &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        let html = String::from_utf8(body).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{uri}");
        assert!(!html.contains("99999023037963261130"), "{uri}: base units on a page");
    }
    let (status, body) = call(&app, "GET", "/ui/deals/0xnothex", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8(body).unwrap().contains("deal id must be 32 bytes"));
}

#[tokio::test]
async fn rows_from_older_versions_or_damaged_cost_only_themselves() {
    let (app, tmp) = app().await;
    let db = Db::connect(&format!("sqlite://{}?mode=rwc", tmp.path().join("m.db").display())).await.unwrap();
    const OTHER: &str = "0x5555555555555555555555555555555555555555";
    const OLD_DEAL: &str = "0x6666666666666666666666666666666666666666666666666666666666666666";
    for q in [
        // a listing whose stored signature does not parse
        format!(
            "INSERT INTO listings (provider, root, node_id, addrs, region, price_per_byte, price_gib, window_bytes, \
             capacity_mibps, issued_at, expires_at, signature, arbiters) VALUES ('{OTHER}', '{ROOT}', '{DEAL}', \
             '127.0.0.1:4001', 'eu', '1', 0.000000001, 4194304, 100, {}, {}, 'garbage', '{VENDOR}')",
            now() - 10,
            now() + 3600,
        ),
        // a deal indexed before deals recorded their arbiter (and their opening time)
        format!(
            "INSERT INTO deals (id, buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, \
             opened_block, redeemed, refunded, state, buyer_won) VALUES ('{OLD_DEAL}', '{VENDOR}', \
             '{PROVIDER}', '{ROOT}', '1', '100', 0, 0, 1, '7', '0', 'open', 0)"
        ),
        // a second sale on the day of the first, one on the day before, one long before the window
        format!(
            "INSERT INTO deals (id, buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, \
             opened_block, redeemed, refunded, state, buyer_won, arbiter, opened_at) VALUES \
             ('0x01{0}', '{VENDOR}', '{PROVIDER}', '{ROOT}', '1', '100', 0, 0, 1, '3', '0', 'open', 0, '{VENDOR}', 1796601800), \
             ('0x02{0}', '{VENDOR}', '{PROVIDER}', '{ROOT}', '1', '100', 0, 0, 1, '5', '0', 'open', 0, '{VENDOR}', 1796601700 - 86400), \
             ('0x03{0}', '{VENDOR}', '{PROVIDER}', '{ROOT}', '1', '100', 0, 0, 1, '9', '0', 'open', 0, '{VENDOR}', 1796601700 - 91 * 86400)",
            "7".repeat(62)
        ),
    ] {
        sqlx::query(&q).execute(&db.pool).await.unwrap();
    }
    let old: DealRecord = get(&app, &format!("/deals/{OLD_DEAL}")).await;
    assert_eq!((old.arbiter, old.redeemed.0), (Address::ZERO, 7), "no arbiter recorded reads as the zero address");
    let d: DatasetDetail = get(&app, &format!("/datasets/{ROOT}")).await;
    assert_eq!(d.offers.len(), 2, "the damaged listing's provider and node id still parse");
    let days: Vec<(u64, u64, u128)> = d.sales.iter().map(|s| (s.day, s.deals, s.redeemed.0)).collect();
    let day = 1_796_601_700 / 86_400 * 86_400;
    assert_eq!(
        days,
        [(day - 86_400, 1, 5), (day, 2, 500_000_000_000_000_003)],
        "90 days up to the newest sale, per day; deals with no opening time are left out"
    );
    let m: MatchResponse = get_post(&app, "/match", &format!("{{\"root\":\"{ROOT}\"}}")).await;
    assert_eq!(m.offers.len(), 1, "the listing with an unreadable signature is skipped, not a 500");
    assert_eq!(format!("{:#x}", m.offers[0].provider), PROVIDER);
}
