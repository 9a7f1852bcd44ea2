//! `/healthz` (the process is up) and `/readyz` (the database answers).

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{json, Value};
use tenantry::{Json, Problem};

use crate::app::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, Json<Value>), Problem> {
    state.tenancy.catalog().database().ping().await?;
    Ok((StatusCode::OK, Json(json!({"status": "ready"}))))
}
