//! One error type for every handler: a 4xx answers its message, a 5xx answers "internal error"
//! and logs the source (axum's `examples/error-handling`).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bdc_market_api::ErrorBody;

/// An error answered to the client. 5xx carry no internal detail (it is logged).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A rate or capacity bound; retry later.
    #[error("{0}")]
    TooMany(String),
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            tracing::error!(error = %e, "internal error");
        }
        (self.status(), Json(ErrorBody { error: self.message() })).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(Box::new(e))
    }
}

impl From<crate::rank::RankError> for ApiError {
    fn from(e: crate::rank::RankError) -> Self {
        Self::BadRequest(e.to_string())
    }
}
