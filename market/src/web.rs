//! Server-rendered pages: dataset search, a dataset, a provider, a deal. Plain HTML with inline
//! CSS, no scripts; every value from the database is escaped.

use axum::{
    extract::{Path, Query, State},
    response::{Html, IntoResponse, Response},
};
use serde_json::Value;

use crate::api::{ApiError, AppState, SearchQuery, dataset, deal, provider, search};

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn v(x: &Value) -> String {
    match x {
        Value::String(s) => esc(s),
        Value::Null => "—".into(),
        other => esc(&other.to_string()),
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · bdc market</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:70em;color:#111}}table{{border-collapse:collapse;width:100%}}\
         td,th{{border-bottom:1px solid #ccc;padding:.3em .6em;text-align:left}}th{{background:#f0f0f0}}\
         .mono{{font-family:monospace;font-size:.9em}}.risk{{color:#a00}}.ty{{color:#666}}header a{{margin-right:1em}}</style></head>\
         <body><header><a href=\"/\">datasets</a></header><h1>{}</h1>{}</body></html>",
        esc(title),
        esc(title),
        body
    ))
}

fn error_page(e: ApiError) -> Response {
    let (code, msg) = match &e {
        ApiError::NotFound(m) => (axum::http::StatusCode::NOT_FOUND, m.clone()),
        ApiError::BadRequest(m) => (axum::http::StatusCode::BAD_REQUEST, m.clone()),
        _ => return e.into_response(),
    };
    (code, page("Not found", &format!("<p>{}</p>", esc(&msg)))).into_response()
}

pub async fn index(State(st): State<AppState>, Query(q): Query<SearchQuery>) -> Response {
    let res = match search(&st.db, &q).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/\"><input name=\"q\" value=\"{}\" placeholder=\"search datasets\"> \
         <button type=\"submit\">Search</button></form><table id=\"datasets\"><tr><th>name</th><th>tags</th>\
         <th>size</th><th>offers</th><th>from (BDC/GiB)</th></tr>",
        esc(q.q.as_deref().unwrap_or(""))
    );
    for d in res["items"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td><a href=\"/ui/datasets/{root}\">{name}</a></td><td>{tags}</td><td>{size}</td><td>{offers}</td><td>{price}</td></tr>",
            root = v(&d["root"]),
            name = v(&d["name"]),
            tags = esc(&d["tags"].as_array().map(|t| t.iter().map(v).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
            size = v(&d["size"]),
            offers = v(&d["offers"]),
            price = d["min_price_gib"].as_f64().map(|p| format!("{p:.6}")).unwrap_or_else(|| "—".into()),
        ));
    }
    body.push_str("</table>");
    page("Datasets", &body).into_response()
}

pub async fn dataset_page(State(st): State<AppState>, Path(root): Path<String>) -> Response {
    let d = match dataset(&st.db, &root).await {
        Ok(d) => d,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<p>{}</p><p class=\"mono\">root {}<br>vendor <a href=\"/ui/providers/{}\">{}</a> · royalty {} bps · manifest {}</p><h2>Files</h2><table id=\"files\"><tr><th>name</th><th>size</th><th>type</th><th>schema</th></tr>",
        v(&d["description"]),
        v(&d["root"]),
        v(&d["vendor"]),
        v(&d["vendor"]),
        v(&d["royalty_bps"]),
        if d["manifest_verified"].as_bool() == Some(true) {
            "verified against the registry"
        } else {
            "not registered on chain"
        },
    );
    for f in d["files"].as_array().into_iter().flatten() {
        let schema: Vec<String> = f["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} <span class=\"ty\">{}</span>", v(&c["name"]), v(&c["type"])))
            .collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            v(&f["name"]),
            v(&f["size"]),
            v(&f["media_type"]),
            schema.join(", ")
        ));
    }
    body.push_str("</table><h2>Providers</h2><table id=\"offers\"><tr><th>provider</th><th>region</th><th>BDC/GiB</th><th>window</th><th>capacity MiB/s</th></tr>");
    for o in d["offers"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td class=\"mono\"><a href=\"/ui/providers/{p}\">{p}</a></td><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td></tr>",
            v(&o["region"]),
            o["price_gib"].as_f64().unwrap_or(0.0),
            v(&o["window"]),
            v(&o["capacity_mibps"]),
            p = v(&o["provider"]),
        ));
    }
    body.push_str("</table>");
    page(d["name"].as_str().filter(|n| !n.is_empty()).unwrap_or("Dataset"), &body).into_response()
}

pub async fn provider_page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let p = match provider(&st.db, &id, st.book.weights()).await {
        Ok(p) => p,
        Err(e) => return error_page(e),
    };
    let r = &p["reputation"];
    let mut body = format!(
        "<p class=\"mono\">{}</p><h2>Reputation</h2><p id=\"reputation\">score {:.3} · {} deals, {} completed, {} failed, {} disputes lost · {} paying buyers (weighed: {:.2} completed, {:.2} failed, {:.0} disputes lost before trusted arbiters) · {} bytes paid · buyers measured {:.1} MiB/s (median of {})</p><h2>Deals</h2><table id=\"deals\"><tr><th>deal</th><th>state</th><th>redeemed</th><th>max</th></tr>",
        v(&p["provider"]),
        r["score"].as_f64().unwrap_or(0.0),
        v(&r["deals"]),
        v(&r["completed"]),
        v(&r["failed"]),
        v(&r["disputes_lost"]),
        v(&r["paying_buyers"]),
        r["weighed"]["completed"].as_f64().unwrap_or(0.0),
        r["weighed"]["failed"].as_f64().unwrap_or(0.0),
        r["weighed"]["disputes_lost"].as_f64().unwrap_or(0.0),
        v(&r["bytes_redeemed"]),
        r["throughput_mibps"].as_f64().unwrap_or(0.0),
        v(&r["throughput_buyers"]),
    );
    for d in p["deals"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td class=\"mono\"><a href=\"/ui/deals/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            v(&d["state"]),
            v(&d["redeemed"]),
            v(&d["max_amount"]),
            id = v(&d["id"]),
        ));
    }
    body.push_str("</table>");
    page("Provider", &body).into_response()
}

pub async fn deal_page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let d = match deal(&st.db, &id).await {
        Ok(d) => d,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<p class=\"mono\">{}</p><p>state <b>{}</b> · dataset <a class=\"mono\" href=\"/ui/datasets/{root}\">{root}</a></p>\
         <h2>Money at risk</h2><table id=\"risk\"><tr><th>side</th><th>amount (token units)</th><th>meaning</th></tr>\
         <tr><td>buyer</td><td class=\"risk\">{}</td><td>escrowed, not yet redeemed (paid only for verified bytes; refundable after expiry)</td></tr>\
         <tr><td>provider</td><td class=\"risk\">{}</td><td>the window: bytes it may send ahead of receipts</td></tr></table>\
         <h2>Receipts redeemed over time</h2><table id=\"redemptions\"><tr><th>block</th><th>cumulative</th></tr>",
        v(&d["id"]),
        v(&d["state"]),
        v(&d["buyer_escrowed_unspent"]),
        v(&d["provider_at_risk"]),
        root = v(&d["root"]),
    );
    for r in d["redemptions"].as_array().into_iter().flatten() {
        body.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", v(&r["block"]), v(&r["cumulative"])));
    }
    body.push_str("</table>");
    if d["dispute"].is_object() {
        body.push_str(&format!(
            "<h2>Dispute</h2><p id=\"dispute\">arbiter <span class=\"mono\">{}</span> rules by {} (unix time; after it the default applies: the receipts stand) · evidence <span class=\"mono\">{}</span> ({})</p>",
            v(&d["arbiter"]),
            v(&d["dispute"]["rule_by"]),
            v(&d["dispute"]["evidence"]),
            if d["state"] == "disputed" { "open" } else { "settled" },
        ));
    }
    page("Deal", &body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
