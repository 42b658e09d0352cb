//! Server-rendered pages: dataset search, a dataset, a provider, a deal. maud templates (every
//! value escaped by the template engine), inline CSS, SVG charts, no scripts. Pages show what a
//! person reads at a glance — amounts in BDC, sizes in KiB/MiB/GiB, times as UTC dates — and the
//! exact values stay in the JSON API.

pub mod chart;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bdc_market_api::{
    Amount, DatasetDetail, DealRecord, ProviderRecord, SearchPage, SearchQuery,
    human::{bdc, bytes, date, day},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use self::chart::Series;
use crate::api::{ApiError, AppState, dataset, deal, provider, search};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#111}\
table{border-collapse:collapse;width:100%;margin-bottom:1em}td,th{border-bottom:1px solid #ddd;padding:.35em .6em;\
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
.tag{background:#eef;border-radius:3px;padding:0 .3em;font-size:.8em;font-family:sans-serif}.mono{font-family:ui-monospace,monospace;font-size:.88em;word-break:break-all}.risk{color:#a00}.ty{color:#666}\
header a{margin-right:1em}dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1.2em}dl.facts dt{color:#555}\
dl.facts dd{margin:0}figure.chart{margin:0 0 1.5em}figure.chart svg{width:100%;max-width:48em;height:auto;border:1px solid #eee}\
figcaption{color:#555;font-size:.9em}.state{padding:.1em .5em;border-radius:.6em;background:#eef}.empty{color:#777}";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bdc market" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { a href="/" { "datasets" } }
                h1 { (title) }
                (body)
            }
        }
    }
}

fn error_page(e: ApiError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        return e.into_response();
    }
    let title = if status == StatusCode::NOT_FOUND { "Not found" } else { "Bad request" };
    (status, layout(title, html! { p { (e.message()) } })).into_response()
}

fn short(h: impl std::fmt::LowerHex) -> String {
    let s = format!("{h:#x}");
    if s.len() > 14 { format!("{}…{}", &s[..8], &s[s.len() - 4..]) } else { s }
}

/// Percent-encodes a query value (unreserved characters stay).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn price(gib: f64) -> String {
    format!("{gib:.6} BDC/GiB")
}

pub async fn index(State(st): State<AppState>, Query(q): Query<SearchQuery>) -> Response {
    match search(&st.db, &q).await {
        Ok(page) => layout("Datasets", search_body(&q, &page)).into_response(),
        Err(e) => error_page(e),
    }
}

fn search_body(q: &SearchQuery, page: &SearchPage) -> Markup {
    html! {
        form method="get" action="/" {
            input name="q" value=(q.q.as_deref().unwrap_or("")) placeholder="search datasets";
            " " button type="submit" { "Search" }
        }
        table #datasets {
            tr { th { "name" } th { "tags" } th.num { "size" } th.num { "offers" } th.num { "from" } }
            @for d in &page.items {
                tr {
                    td { a href=(format!("/ui/datasets/{:#x}", d.root)) { (d.name) } }
                    td { (d.tags.join(", ")) }
                    td.num { (bytes(d.size)) }
                    td.num { (d.offers) }
                    td.num { @match d.min_price_gib { Some(p) => (price(p)), None => "—" } }
                }
            }
        }
        @if page.items.is_empty() { p.empty { "No dataset matches." } }
        @if let (true, Some(next)) = (page.more, page.next) {
            p { a href=(format!("/?q={}&after={next:#x}", url_encode(q.q.as_deref().unwrap_or("")))) { "next page →" } }
        }
    }
}

pub async fn dataset_page(State(st): State<AppState>, Path(root): Path<String>) -> Response {
    match dataset(&st.db, &root).await {
        Ok(d) => {
            let title = if d.name.is_empty() { "Dataset".to_string() } else { d.name.clone() };
            layout(&title, dataset_body(&d)).into_response()
        }
        Err(e) => error_page(e),
    }
}

fn dataset_body(d: &DatasetDetail) -> Markup {
    let sales: Vec<(f64, f64)> = d.sales.iter().map(|s| (s.day as f64, s.deals as f64)).collect();
    let day_label = |x: f64| day(x as u64);
    let count_label = |y: f64| chart::sig(y, 2);
    html! {
        p { (d.description) }
        dl.facts {
            dt { "root" } dd.mono { (format!("{:#x}", d.root)) }
            dt { "vendor" } dd.mono { a href=(format!("/ui/providers/{:#x}", d.vendor)) { (format!("{:#x}", d.vendor)) } }
            dt { "royalty" } dd { (format!("{:.2} %", f64::from(d.royalty_bps) / 100.0)) }
            dt { "size" } dd { (bytes(d.size)) " in " (d.files.len()) " files" }
            dt { "manifest" } dd { @if d.manifest_verified { "verified against the registry" } @else { "not registered on chain" } }
        }
        h2 { "Files" }
        table #files {
            tr { th { "name" } th.num { "size" } th { "type" } th { "schema" } }
            @for f in &d.files {
                tr {
                    td { (f.name) }
                    td.num { (bytes(f.size)) }
                    td { (f.media_type) }
                    td.mono {
                        @for (i, c) in f.columns.iter().enumerate() {
                            @if i > 0 { ", " }
                            (c.name) " " span.ty { (c.data_type) }
                        }
                    }
                }
            }
        }
        h2 { "Providers" }
        table #offers {
            tr { th { "provider" } th { "region" } th.num { "price" } th.num { "window" } th.num { "capacity" } th { "listed until" } }
            @for o in &d.offers {
                tr {
                    td.mono {
                        a href=(format!("/ui/providers/{:#x}", o.provider)) { (format!("{:#x}", o.provider)) }
                        @if o.mirror { " " span.tag title="copied from another provider; verified against the root like any copy" { "mirror" } }
                    }
                    td { (o.region) }
                    td.num { (price(o.price_gib)) }
                    td.num { (bytes(o.window)) }
                    td.num { (o.capacity_mibps) " MiB/s" }
                    td { (date(o.expires_at)) }
                }
            }
        }
        @if d.offers.is_empty() { p.empty { "No current offer." } }
        h2 { "Sales" }
        (chart::bars("sales", "Deals opened per day (UTC)", &Series { points: &sales, x_label: &day_label, y_label: &count_label }))
    }
}

pub async fn provider_page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match provider(&st.db, &id, st.book.weights()).await {
        Ok(p) => layout("Provider", provider_body(&p)).into_response(),
        Err(e) => error_page(e),
    }
}

fn provider_body(p: &ProviderRecord) -> Markup {
    let r = &p.reputation;
    let points: Vec<(f64, f64)> = p.throughput.iter().map(|t| (t.issued_at as f64, t.mibps)).collect();
    let time_label = |x: f64| date(x as u64);
    let mibps_label = |y: f64| format!("{} MiB/s", chart::sig(y, 3));
    html! {
        p.mono { (format!("{:#x}", p.provider)) }
        h2 { "Reputation" }
        p #reputation {
            "score " b { (format!("{:.3}", r.score)) } " · " (r.deals) " deals, " (r.completed) " completed, "
            (r.failed) " failed, " (r.disputes_lost) " disputes lost · " (r.paying_buyers) " paying buyers (weighed: "
            (format!("{:.2}", r.weighed.completed)) " completed, " (format!("{:.0}", r.weighed.disputes_lost))
            " disputes lost before trusted arbiters) · " (bytes(u64::try_from(r.bytes_redeemed).unwrap_or(u64::MAX)))
            " paid for · buyers measured " (format!("{:.1}", r.throughput_mibps)) " MiB/s (median of " (r.throughput_buyers) ")"
            " · " (r.faults_reported) " deals where the buyer reported bytes that did not verify (unchecked claims, not scored)"
        }
        h2 { "Throughput buyers measured" }
        (chart::dots("throughput", "Throughput reports (MiB/s) over time", &Series { points: &points, x_label: &time_label, y_label: &mibps_label }))
        h2 { "Listings" }
        table #listings {
            tr { th { "dataset" } th { "region" } th.num { "price" } th { "listed until" } }
            @for l in &p.listings {
                tr {
                    td { a href=(format!("/ui/datasets/{:#x}", l.root)) { @if l.name.is_empty() { (short(l.root)) } @else { (l.name) } } }
                    td { (l.region) }
                    td.num { (price(l.price_gib)) }
                    td { (date(l.expires_at)) }
                }
            }
        }
        h2 { "Deals" }
        table #deals {
            tr { th { "deal" } th { "dataset" } th { "state" } th.num { "redeemed" } th.num { "escrowed" } th.num { "block" } }
            @for d in &p.deals {
                tr {
                    td.mono { a href=(format!("/ui/deals/{:#x}", d.id)) { (short(d.id)) } }
                    td.mono { a href=(format!("/ui/datasets/{:#x}", d.root)) { (short(d.root)) } }
                    td { span.state { (d.state) } }
                    td.num { (bdc(d.redeemed, 6)) }
                    td.num { (bdc(d.max_amount, 6)) }
                    td.num { (d.opened_block) }
                }
            }
        }
    }
}

pub async fn deal_page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match deal(&st.db, &id).await {
        Ok(d) => layout("Deal", deal_body(&d)).into_response(),
        Err(e) => error_page(e),
    }
}

fn deal_body(d: &DealRecord) -> Markup {
    // receipts over time when the indexer kept block times, else over blocks
    let timed = d.redemptions.iter().all(|r| r.time > 0);
    let points: Vec<(f64, f64)> = d
        .redemptions
        .iter()
        .map(|r| (if timed { r.time as f64 } else { r.block as f64 }, r.cumulative.bdc()))
        .collect();
    let x_label = |x: f64| if timed { date(x as u64) } else { format!("block {x:.0}") };
    let bdc_label = |y: f64| format!("{} BDC", chart::sig(y, 3));
    let gib = d.price_per_byte.0.saturating_mul(1 << 30);
    html! {
        p.mono { (format!("{:#x}", d.id)) }
        p { "state " span.state { (d.state) } " · dataset " a.mono href=(format!("/ui/datasets/{:#x}", d.root)) { (format!("{:#x}", d.root)) } }
        dl.facts {
            dt { "buyer" } dd.mono { (format!("{:#x}", d.buyer)) }
            dt { "provider" } dd.mono { a href=(format!("/ui/providers/{:#x}", d.provider)) { (format!("{:#x}", d.provider)) } }
            dt { "price" } dd { (bdc(Amount(gib), 6)) " per GiB" }
            dt { "escrowed" } dd { (bdc(d.max_amount, 6)) }
            dt { "redeemed" } dd { (bdc(d.redeemed, 6)) }
            dt { "refunded" } dd { (bdc(d.refunded, 6)) }
            dt { "window" } dd { (bytes(d.window)) " sent ahead of receipts" }
            dt { "expires" } dd { (date(d.expiry)) }
            dt { "arbiter" } dd.mono { (format!("{:#x}", d.arbiter)) }
        }
        h2 { "Money at risk" }
        table #risk {
            tr { th { "side" } th.num { "amount" } th { "meaning" } }
            tr { td { "buyer" } td.num.risk { (bdc(d.buyer_escrowed_unspent, 6)) } td { "escrowed, not yet redeemed (paid only for verified bytes; refundable after expiry)" } }
            tr { td { "provider" } td.num.risk { (bdc(d.provider_at_risk, 6)) } td { "the window: bytes it may send ahead of receipts" } }
        }
        h2 { "Receipts redeemed over time" }
        (chart::step_line("receipts", "Cumulative receipts redeemed (BDC)", &Series { points: &points, x_label: &x_label, y_label: &bdc_label }))
        table #redemptions {
            tr { th.num { "block" } th { "time" } th.num { "cumulative" } }
            @for r in &d.redemptions {
                tr { td.num { (r.block) } td { (date(r.time)) } td.num { (bdc(r.cumulative, 6)) } }
            }
        }
        @if let Some(x) = &d.dispute {
            h2 { "Dispute" }
            p #dispute {
                "arbiter " span.mono { (format!("{:#x}", d.arbiter)) } " rules by " b { (date(x.rule_by)) }
                " (after it the default applies: the receipts stand) · evidence " span.mono { (x.evidence) }
                " (" @if d.state == "disputed" { "open" } @else { "settled" } ")"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bdc_market_api::{DatasetOffer, FileEntry, Redemption, SalesDay};

    use super::*;

    #[test]
    fn pages_escape_what_strangers_wrote_and_show_human_units() {
        let d = DatasetDetail {
            root: Default::default(),
            vendor: Default::default(),
            royalty_bps: 1000,
            manifest_hash: Default::default(),
            price_hint: Amount(0),
            name: "<script>alert(1)</script>".into(),
            description: "a \"quoted\" & <b>bold</b> claim".into(),
            tags: vec![],
            size: 3 << 30,
            files: vec![FileEntry {
                name: "<img src=x>".into(),
                size: 1536,
                media_type: "text/csv".into(),
                columns: vec![],
            }],
            manifest_verified: false,
            offers: vec![DatasetOffer {
                provider: Default::default(),
                node_id: Default::default(),
                addrs: vec![],
                region: "eu".into(),
                price_per_byte: Amount(1),
                price_gib: 1.073741824,
                window: 4 << 20,
                capacity_mibps: 100,
                expires_at: 1_796_661_375,
                arbiters: vec![],
                mirror: true,
            }],
            sales: vec![SalesDay { day: 1_796_601_600, deals: 3, redeemed: Amount(0) }],
        };
        let html = layout(&d.name, dataset_body(&d)).into_string();
        assert!(
            !html.contains("<script>alert") && !html.contains("<img src=x>") && !html.contains("<b>bold"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;") && html.contains("&amp; &lt;b&gt;"), "{html}");
        for human in ["3 GiB", "1.5 KiB", "4 MiB", "10.00 %", "2026-12-07 16:36:15 UTC", "1.073742 BDC/GiB"] {
            assert!(html.contains(human), "{human} in {html}");
        }
        assert!(html.contains("<svg id=\"sales\""), "the sales chart is drawn");
        assert!(html.contains(">mirror</span>"), "a mirror's offer says so");
    }

    #[test]
    fn a_deal_page_shows_bdc_and_its_receipt_chart() {
        let d = DealRecord {
            id: Default::default(),
            buyer: Default::default(),
            provider: Default::default(),
            root: Default::default(),
            price_per_byte: Amount(1_000_000_000),
            max_amount: Amount(99_999_023_037_963_261_130),
            window: 4 << 20,
            expiry: 1_796_661_375,
            redeemed: Amount(5 * 10u128.pow(17)),
            refunded: Amount(0),
            state: "open".into(),
            buyer_won: false,
            opened_block: 7,
            arbiter: Default::default(),
            dispute: None,
            buyer_escrowed_unspent: Amount(99_499_023_037_963_261_130),
            provider_at_risk: Amount(3_906_249_998_000_000),
            redemptions: vec![
                Redemption { block: 9, time: 1_796_661_000, cumulative: Amount(10u128.pow(17)) },
                Redemption { block: 12, time: 1_796_661_300, cumulative: Amount(5 * 10u128.pow(17)) },
            ],
        };
        let html = deal_body(&d).into_string();
        assert!(!html.contains("99999023037963261130"), "no base units on the page: {html}");
        for human in ["99.999023 BDC", "0.5 BDC", "4 MiB", "1.073741 BDC per GiB", "2026-12-07 16:36:15 UTC"] {
            assert!(html.contains(human), "{human} in {html}");
        }
        assert!(html.contains("<svg id=\"receipts\"") && html.matches("<circle").count() == 2, "{html}");
    }
}
