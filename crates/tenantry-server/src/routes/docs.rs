//! `/openapi.json` and `/docs`: the OpenAPI document (rendered once at start-up, see
//! [`crate::openapi`]) and the API reference page, with a vendored Redoc (nothing is fetched
//! from a CDN).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::state::AppState;

/// The Redoc version vendored under `assets/` (npm package `redoc`, MIT); its path carries
/// it, so it can be cached for good.
pub const REDOC_VERSION: &str = "2.5.4";
pub(crate) const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc.standalone.js");

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The document.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

/// `GET /docs`: the API reference, rendered by the vendored Redoc.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    summary = "The rendered API reference",
    responses((status = 200, description = "An HTML page rendering /openapi.json.", content_type = "text/html", body = String))
)]
pub async fn docs() -> Html<String> {
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tenantry API reference</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="/openapi.json" hide-download-button="false"></redoc>
<script src="/docs/redoc-{REDOC_VERSION}.standalone.js"></script>
</body>
</html>
"#
    ))
}

/// The vendored Redoc bundle. Its path carries the version, so it can be cached for good.
#[utoipa::path(
    get,
    path = "/docs/redoc-2.5.4.standalone.js",
    tag = "operations",
    summary = "The vendored Redoc bundle used by /docs",
    responses((status = 200, description = "JavaScript.", content_type = "text/javascript", body = String))
)]
pub async fn redoc_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        REDOC_JS,
    )
        .into_response()
}
