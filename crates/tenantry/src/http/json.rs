//! `Json` and `Query` extractors whose rejections are [`Problem`]s, so malformed input gets the
//! same problem+json body as every other error (the axum `error-handling` example's pattern).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::problem::{ErrorCode, FieldError, Problem};

/// Request bodies above this size get 413 `payload_too_large`.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body in, or a JSON body out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || (m.len() > 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Problem::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as Content-Type: application/json",
            ));
        }
        // A coded body would be read as if it were plain JSON: refuse any coding but identity
        // (RFC 9110 §15.5.16), so a compressed body is never half-understood.
        for coding in req.headers().get_all(header::CONTENT_ENCODING) {
            let plain = coding.to_str().is_ok_and(|v| {
                v.split(',')
                    .all(|c| c.trim().is_empty() || c.trim().eq_ignore_ascii_case("identity"))
            });
            if !plain {
                return Err(Problem::new(
                    ErrorCode::UnsupportedMediaType,
                    "request bodies are not decoded: send the body without Content-Encoding",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request bodies are limited to {BODY_LIMIT} bytes"),
                )
            } else {
                Problem::new(ErrorCode::MalformedBody, "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses JSON: syntax errors are 400 `malformed_body`; well-formed JSON of the wrong shape is
/// 422 `validation_failed` naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "body".to_owned() } else { path };
                    Err(Problem::validation(vec![FieldError::new(
                        field,
                        strip_position(&inner.to_string()),
                    )]))
                }
                _ => Err(Problem::new(
                    ErrorCode::MalformedBody,
                    format!("malformed JSON: {inner}"),
                )),
            }
        }
    }
}

/// serde_json appends " at line L column C"; the field path says more to a client.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => typed_body(bytes.into(), "application/json"),
            Err(e) => Problem::internal(&e).into_response(),
        }
    }
}

/// A 200 response with `body` and its one `Content-Type`. Going through `Vec<u8>`'s or
/// `Bytes`' own `IntoResponse` would first insert `application/octet-stream` and then have it
/// replaced: two header-map writes on every response instead of one.
pub(crate) fn typed_body(body: Bytes, content_type: &'static str) -> Response {
    let mut res = Response::new(axum::body::Body::from(body));
    // Sized for what a tenant-plane response carries by the time it is written (content type
    // and length, five rate-limit headers, the request id, `Retry-After`), so that the map is
    // allocated once instead of growing twice on the way out.
    let mut headers = http::HeaderMap::with_capacity(RESPONSE_HEADERS);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    *res.headers_mut() = headers;
    res
}

/// Headers a response of [`typed_body`] has room for without growing its map.
const RESPONSE_HEADERS: usize = 12;

/// A query string, with 422 naming the bad parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(Problem::validation(vec![FieldError::new(
                "query",
                e.body_text(),
            )])),
        }
    }
}
