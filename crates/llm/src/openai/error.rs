//! One error type for the HTTP surface: each failure is classified once (its class gives the
//! status code and the `error_type` metric label) and rendered as an OpenAI-style body
//! `{"error":{"message","type","code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, in the terms of the `dynamo_frontend_requests_total{error_type}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Malformed or invalid request (400).
    Validation,
    /// Unknown model (404).
    NotFound,
    /// Body too large (413).
    PayloadTooLarge,
    /// Model known but no live worker (503).
    Unavailable,
    /// Worker or internal failure (500).
    Internal,
    /// The client went away (499).
    Cancelled,
    /// The request's deadline (`--request-timeout`) passed (504).
    Timeout,
    /// Missing or wrong API key (401).
    Unauthorized,
    /// The body did not arrive within `--body-timeout` (408).
    RequestTimeout,
    /// Load shed: the frontend's inflight limit or every worker's queue is full. Answered with
    /// `status` (503 by default, or 429/529 as configured) and `Retry-After`.
    Overloaded { status: u16 },
}

impl ErrorClass {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorClass::Validation => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::Cancelled => StatusCode::from_u16(499).expect("valid status"),
            ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorClass::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorClass::Overloaded { status } => {
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Validation | ErrorClass::PayloadTooLarge => "validation",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Internal => "internal",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Overloaded { .. } => "overload",
            ErrorClass::Timeout | ErrorClass::RequestTimeout => "timeout",
            ErrorClass::Unauthorized => "unauthorized",
        }
    }
}

/// `Retry-After` of load-shed answers, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub class: ErrorClass,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u16,
}

impl ApiError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ApiError {
            class,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Validation, message)
    }
    pub fn status(&self) -> StatusCode {
        self.class.status()
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let status = self.status();
        let kind = match self.class {
            ErrorClass::Cancelled => "Client Closed Request",
            ErrorClass::Overloaded { .. } => "Overloaded",
            _ => status.canonical_reason().unwrap_or("Error"),
        };
        serde_json::to_string(&Body {
            error: Inner {
                message: &self.message,
                kind,
                code: status.as_u16(),
            },
        })
        .expect("serializable")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let ErrorClass::Overloaded { .. } = self.class {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if matches!(
            self.class,
            ErrorClass::PayloadTooLarge | ErrorClass::RequestTimeout
        ) {
            // The rest of the body is not read, so the connection closes after this response;
            // say so, or a client may reuse it for its next request and fail.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape_and_status() {
        let e = ApiError::new(ErrorClass::NotFound, "Model not found: x");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "Model not found: x");
        assert_eq!(v["error"]["type"], "Not Found");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(ApiError::validation("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorClass::PayloadTooLarge.status().as_u16(), 413);
        assert_eq!(ErrorClass::Cancelled.status().as_u16(), 499);
        let e = ApiError::new(ErrorClass::Overloaded { status: 529 }, "busy");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["code"].as_u64()),
            (Some("Overloaded"), Some(529))
        );
        let r = e.into_response();
        assert_eq!(r.status().as_u16(), 529);
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
