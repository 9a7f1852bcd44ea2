//! Writes refused because their tenant moved to another placement, retried there.
//!
//! While a tenant moves, its writes wait behind the database's write fence; when the move
//! flips, the writes that waited (and any from a node that has not yet seen the flip) are
//! refused with [`crate::db::DbError::TenantMoved`]. The tenancy layer keeps a write's body,
//! and on such a refusal reads the tenant again from the catalog and runs the request once
//! more in the new placement, for up to [`MOVE_WAIT`]: the client sees its write succeed, a
//! little later. Reads are never refused (the old placement is kept until every node has seen
//! the flip) and are not retried.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::FromRequest;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::Request;

use super::problem::{ErrorCode, Problem};
use crate::context::TenantContext;
use crate::tenancy::Tenancy;
use crate::tenant::StorageState;

/// Marks a response refused by the write fence (set by [`Problem`]).
#[derive(Clone, Copy)]
pub(crate) struct Moved;

/// How long a write keeps being retried while its tenant's move completes.
pub(crate) const MOVE_WAIT: Duration = Duration::from_secs(5);

/// Runs a write through `inner` in `ctx`, again in the tenant's new placement each time the
/// write fence refuses it, until it is served or [`MOVE_WAIT`] has passed.
pub(crate) async fn write<F, Fut, E>(
    tenancy: &Tenancy,
    ctx: &TenantContext,
    parts: Parts,
    body: Body,
    inner: &mut F,
) -> Result<Response, E>
where
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response, E>>,
{
    // The body is read here (with the limit the extractors apply) so that it can be sent
    // again.
    let bytes = match Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await {
        Ok(b) => b,
        Err(rejection) => {
            return Ok(
                if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        ErrorCode::PayloadTooLarge,
                        format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
                    )
                } else {
                    Problem::new(ErrorCode::MalformedBody, "could not read the request body")
                }
                .into_response(),
            );
        }
    };
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    let mut current = ctx.clone();
    loop {
        let mut p = parts.clone();
        p.extensions.insert(current.clone());
        let res = inner(Request::from_parts(p, Body::from(bytes.clone()))).await?;
        if res.extensions().get::<Moved>().is_none() || tokio::time::Instant::now() >= deadline {
            return Ok(res);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tenancy.catalog().invalidate_tenant(ctx.slug()).await;
        // The same tenant (same id), still served; anything else answers the refusal as is.
        match tenancy.catalog().tenant(ctx.slug()).await {
            Ok(Some(t))
                if t.id == *ctx.tenant_id()
                    && t.storage_state == StorageState::Ready
                    && t.status == crate::tenant::TenantStatus::Active =>
            {
                current = ctx.moved(t);
            }
            _ => return Ok(res),
        }
    }
}
