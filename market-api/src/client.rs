//! One client for the market's API, with retries and backoff.
//!
//! What is retried: a request that did not reach the market or got no answer (connect error,
//! timeout), and answers that say "later" (429, 502, 503, 504), up to [`Retry::attempts`], with
//! exponential backoff and jitter. A 4xx is the caller's error and is answered at once as
//! [`ClientError::Status`] with the market's message — except that a throughput report for a
//! deal the market has not indexed yet (422) is tried again for [`Retry::index_wait`]: the
//! market's indexer follows the chain a few blocks behind.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};

use crate::types::*;

/// How a [`MarketClient`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// Backoff before the second try; doubled each time, with ±50% jitter.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
    /// How long a report for a deal not indexed yet is tried again.
    pub index_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            index_wait: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// No retries (tests of error paths, one-shot probes).
    pub fn none() -> Self {
        Self { attempts: 1, index_wait: Duration::ZERO, ..Self::default() }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        exp.mul_f64(rand::random_range(0.5..1.5))
    }
}

/// Why a call to the market failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a market URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach the market at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The market answered with an error status; `message` is its `error` field.
    #[error("the market refused {method} {url} ({status}): {message}")]
    Status { method: Method, url: String, status: StatusCode, message: String },
    #[error("the market's answer to {url} does not decode: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status the market answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one market.
#[derive(Debug, Clone)]
pub struct MarketClient {
    base: Url,
    http: reqwest::Client,
    retry: Retry,
}

impl MarketClient {
    /// A client of the market at `base` (e.g. `http://127.0.0.1:8480`), 10 s per request and
    /// the default [`Retry`].
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with(base, Duration::from_secs(10), Retry::default())
    }

    /// A client with its own request timeout and retries.
    pub fn with(base: &str, timeout: Duration, retry: Retry) -> Result<Self, ClientError> {
        let text = format!("{}/", base.trim_end_matches('/'));
        let base = Url::parse(&text).map_err(|source| ClientError::BadUrl { url: base.to_string(), source })?;
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(ClientError::Client)?;
        Ok(Self { base, http, retry })
    }

    /// The market's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `GET /datasets`: one page of a search.
    pub async fn search(&self, q: &SearchQuery) -> Result<SearchPage, ClientError> {
        self.call(Method::GET, "datasets", Some(q), None::<&()>, false).await
    }

    /// `GET /datasets/{root}`.
    pub async fn dataset(&self, root: alloy::primitives::B256) -> Result<DatasetDetail, ClientError> {
        self.call(Method::GET, &format!("datasets/{root:#x}"), None::<&()>, None::<&()>, false).await
    }

    /// `GET /providers/{address}`.
    pub async fn provider(&self, provider: alloy::primitives::Address) -> Result<ProviderRecord, ClientError> {
        self.call(Method::GET, &format!("providers/{provider:#x}"), None::<&()>, None::<&()>, false).await
    }

    /// `GET /deals/{id}`.
    pub async fn deal(&self, id: alloy::primitives::B256) -> Result<DealRecord, ClientError> {
        self.call(Method::GET, &format!("deals/{id:#x}"), None::<&()>, None::<&()>, false).await
    }

    /// `POST /listings`.
    pub async fn post_listing(&self, l: &SignedListing) -> Result<ListingAccepted, ClientError> {
        self.call(Method::POST, "listings", None::<&()>, Some(l), false).await
    }

    /// `POST /reports`; tried again while the market has not indexed the deal.
    pub async fn post_report(&self, r: &SignedReport) -> Result<ReportAccepted, ClientError> {
        self.call(Method::POST, "reports", None::<&()>, Some(r), true).await
    }

    /// `POST /faults`; tried again while the market has not indexed the deal.
    pub async fn post_fault(&self, r: &SignedFault) -> Result<FaultAccepted, ClientError> {
        self.call(Method::POST, "faults", None::<&()>, Some(r), true).await
    }

    /// `POST /match`: the best offers, best first.
    pub async fn match_offers(&self, req: &MatchRequest) -> Result<MatchResponse, ClientError> {
        self.call(Method::POST, "match", None::<&()>, Some(req), false).await
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "status", None::<&()>, None::<&()>, false).await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("metrics")?;
        let res = self.send(Method::GET, &url, None::<&()>, None::<&()>, false).await?;
        res.text().await.map_err(|source| ClientError::Decode { url: url.to_string(), source })
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base.join(path).map_err(|source| ClientError::BadUrl { url: format!("{}{path}", self.base), source })
    }

    async fn call<Q: Serialize, B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&Q>,
        body: Option<&B>,
        wait_for_index: bool,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let res = self.send(method, &url, query, body, wait_for_index).await?;
        res.json().await.map_err(|source| ClientError::Decode { url: url.to_string(), source })
    }

    /// Sends with retries; a success status or the final error.
    async fn send<Q: Serialize, B: Serialize>(
        &self,
        method: Method,
        url: &Url,
        query: Option<&Q>,
        body: Option<&B>,
        wait_for_index: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let index_deadline = tokio::time::Instant::now() + self.retry.index_wait;
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(q) = query {
                req = req.query(q);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt + 1 >= self.retry.attempts.max(1);
            let err = match req.send().await {
                Ok(res) if res.status().is_success() => return Ok(res),
                Ok(res) => {
                    let status = res.status();
                    let message = match res.json::<ErrorBody>().await {
                        Ok(b) => b.error,
                        Err(_) => "no reason given".to_string(),
                    };
                    let err = ClientError::Status { method: method.clone(), url: url.to_string(), status, message };
                    let later = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    let not_indexed = wait_for_index && status == StatusCode::UNPROCESSABLE_ENTITY;
                    if not_indexed && tokio::time::Instant::now() < index_deadline {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    if !later || last {
                        return Err(err);
                    }
                    err
                }
                Err(source) => {
                    let err = ClientError::Unreachable { url: url.to_string(), source };
                    if last {
                        return Err(err);
                    }
                    err
                }
            };
            tracing::debug!(%url, attempt, "market request failed, trying again: {err}");
            tokio::time::sleep(self.retry.backoff(attempt)).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-route HTTP server on 127.0.0.1 answering the i-th request with `answers[i]`
    /// (status, body), the last one for every request after; and how many requests it saw.
    async fn server(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let i = count.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answers[i.min(answers.len() - 1)];
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let res = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(res.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    const STATUS: &str = r#"{"backend":"sqlite","head":5,"indexed":4,"lag_blocks":1}"#;

    fn fast() -> Retry {
        Retry { base: Duration::from_millis(1), max: Duration::from_millis(5), ..Retry::default() }
    }

    #[tokio::test]
    async fn busy_answers_are_retried_with_backoff_and_client_errors_are_not() {
        let (url, seen) =
            server(vec![(503, r#"{"error":"busy"}"#), (429, r#"{"error":"slow down"}"#), (200, STATUS)]).await;
        let c = MarketClient::with(&url, Duration::from_secs(5), fast()).unwrap();
        assert_eq!(c.status().await.unwrap().lag_blocks, 1);
        assert_eq!(seen.load(Ordering::SeqCst), 3, "two retries");

        let (url, seen) = server(vec![(400, r#"{"error":"limit must be 1-100"}"#)]).await;
        let c = MarketClient::with(&url, Duration::from_secs(5), fast()).unwrap();
        let err = c.status().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert!(err.to_string().contains("limit must be 1-100"), "the market's reason is kept: {err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "a 4xx is not retried");

        let (url, seen) = server(vec![(503, r#"{"error":"busy"}"#)]).await;
        let c = MarketClient::with(&url, Duration::from_secs(5), fast()).unwrap();
        assert_eq!(c.status().await.unwrap_err().status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(seen.load(Ordering::SeqCst), 4, "at most `attempts` tries");
    }

    #[tokio::test]
    async fn a_renamed_field_is_a_decode_error_not_a_zero() {
        let (url, _) = server(vec![(200, r#"{"backend":"sqlite","head":5,"indexed_block":4,"lag_blocks":1}"#)]).await;
        let c = MarketClient::with(&url, Duration::from_secs(5), Retry::none()).unwrap();
        assert!(matches!(c.status().await.unwrap_err(), ClientError::Decode { .. }));
    }

    #[tokio::test]
    async fn an_unreachable_market_is_named_and_a_bad_url_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let c = MarketClient::with(&url, Duration::from_secs(5), fast()).unwrap();
        let err = c.status().await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
        assert!(matches!(MarketClient::new("not a url").unwrap_err(), ClientError::BadUrl { .. }));
    }
}
