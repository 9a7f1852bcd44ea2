//! `/orders`: a tenant's orders. `user_id` must be a user of the same tenant: the composite
//! foreign key `(tenant_id, user_id)` refuses anything else in the database itself.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenantry::db::DbError;
use tenantry::http::{FieldError, Problem, Written};
use tenantry::{Json, Query, TenantContext};
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{uuid_page, Page};
use super::users::ResourceId;
use crate::state::AppState;
use crate::validate;

tenantry::json_object! {
    /// An order of a tenant. Responses write it with its [`WriteJson`](tenantry::http::WriteJson)
    /// (made from the same field list); the `Serialize` derive is the reference the tests hold
    /// that to, and what the order cache stores.
    #[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct Order {
        pub id: Uuid,
        pub user_id: Uuid,
        pub amount_cents: i64,
        pub currency: String,
        pub status: String,
        #[serde(serialize_with = "tenantry::http::serialize_timestamp")]
        pub created_at: DateTime<Utc>,
        #[serde(serialize_with = "tenantry::http::serialize_timestamp")]
        pub updated_at: DateTime<Utc>,
    }
}

fn from_row(r: &Row) -> Order {
    Order {
        id: r.get(0),
        user_id: r.get(1),
        amount_cents: r.get(2),
        currency: r.get(3),
        status: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// A user of this tenant.
    user_id: Uuid,
    #[schema(minimum = 0)]
    amount_cents: i64,
    /// ISO 4217, e.g. `EUR`.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    currency: String,
    /// `pending` (default), `paid`, `shipped`, `cancelled` or `refunded`.
    #[serde(default = "pending")]
    #[schema(required = false, example = "pending")]
    status: String,
}

fn pending() -> String {
    "pending".into()
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrder {
    user_id: Option<Uuid>,
    amount_cents: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only orders in this status.
    status: Option<String>,
}

/// A reference to a user the tenant does not have is a validation error on `user_id`: whether
/// the id exists in another tenant is never revealed.
fn user_ref(e: DbError) -> Problem {
    match &e {
        DbError::ForeignKey { constraint } if constraint == "orders_user_fkey" => {
            Problem::validation(vec![FieldError::new(
                "user_id",
                "no such user in this tenant",
            )])
        }
        _ => e.into(),
    }
}

#[utoipa::path(get, path = "/orders", tag = "orders", operation_id = "list_orders",
    summary = "List the tenant's orders",
    params(ListQuery),
    responses((status = 200, description = "A page of orders, ordered by id.", body = Page<Order>)))]
pub async fn list(
    ctx: TenantContext,
    Query(q): Query<ListQuery>,
) -> Result<Written<Page<Order>>, Problem> {
    let page = uuid_page(q.limit, q.cursor.as_deref())?;
    if let Some(s) = &q.status {
        let mut errors = Vec::new();
        validate::one_of("status", s, validate::ORDER_STATUSES, &mut errors);
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
    }
    let rows = ctx
        .db()
        .run(
            "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
             FROM orders
             WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
               AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4",
            &[&q.status, &page.after, &page.fetch()],
        )
        .await?;
    let items = rows.iter().map(from_row).collect();
    Ok(Written(Page::from_rows(items, page.limit, |o: &Order| {
        o.id.to_string()
    })))
}

#[utoipa::path(post, path = "/orders", tag = "orders", operation_id = "create_order",
    summary = "Create an order",
    description = "`user_id` must be a user of this tenant; another tenant's user is a 422 on `user_id`, never linked.",
    request_body = CreateOrder,
    responses((status = 201, description = "Created.", body = Order)))]
pub async fn create(
    ctx: TenantContext,
    Json(body): Json<CreateOrder>,
) -> Result<(StatusCode, Written<Order>), Problem> {
    let mut errors = Vec::new();
    validate::amount(body.amount_cents, &mut errors);
    validate::currency(&body.currency, &mut errors);
    validate::one_of(
        "status",
        &body.status,
        validate::ORDER_STATUSES,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let row = ctx
        .db()
        .run_opt(
            "INSERT INTO orders (tenant_id, id, user_id, amount_cents, currency, status)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, user_id, amount_cents, currency, status, created_at, updated_at",
            &[
                &Uuid::now_v7(),
                &body.user_id,
                &body.amount_cents,
                &body.currency,
                &body.status,
            ],
        )
        .await
        .map_err(user_ref)?
        .ok_or_else(|| Problem::internal(&"insert returned no row"))?;
    Ok((StatusCode::CREATED, Written(from_row(&row))))
}

/// How long a cached order may be served (bounds staleness after a read that raced a write;
/// writes through this API invalidate at once, on every node).
const CACHE_TTL: Duration = Duration::from_secs(30);

fn cache_key(id: &Uuid) -> String {
    format!("order:{id}")
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", operation_id = "get_order",
    summary = "Read an order",
    params(("id" = uuid::Uuid, Path, description = "The order's id.")),
    responses(
        (status = 200, description = "The order.", body = Order),
        (status = 404, description = "`not_found`: no such order in this tenant."),
    ))]
pub async fn get(
    State(state): State<AppState>,
    ctx: TenantContext,
    ResourceId(id): ResourceId,
) -> Result<Written<Order>, Problem> {
    let load = || async {
        let row = ctx
            .db()
            .run_opt(
                "SELECT id, user_id, amount_cents, currency, status, created_at, updated_at
                 FROM orders WHERE tenant_id = $1 AND id = $2",
                &[&id],
            )
            .await?;
        Ok::<_, DbError>(row.as_ref().map(from_row))
    };
    let order = if state.order_cache {
        state
            .cache
            .get_or_load(&ctx, &cache_key(&id), CACHE_TTL, load)
            .await
            .map_err(|e| Problem::unavailable(&e))?
    } else {
        load().await?
    };
    Ok(Written(order.ok_or_else(Problem::not_found)?))
}

#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", operation_id = "update_order",
    summary = "Change an order",
    params(("id" = uuid::Uuid, Path, description = "The order's id.")),
    request_body = UpdateOrder,
    responses(
        (status = 200, description = "The updated order.", body = Order),
        (status = 404, description = "`not_found`: no such order in this tenant."),
    ))]
pub async fn update(
    State(state): State<AppState>,
    ctx: TenantContext,
    ResourceId(id): ResourceId,
    Json(body): Json<UpdateOrder>,
) -> Result<Written<Order>, Problem> {
    let mut errors = Vec::new();
    if let Some(a) = body.amount_cents {
        validate::amount(a, &mut errors);
    }
    if let Some(c) = &body.currency {
        validate::currency(c, &mut errors);
    }
    if let Some(s) = &body.status {
        validate::one_of("status", s, validate::ORDER_STATUSES, &mut errors);
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let row = ctx
        .db()
        .run_opt(
            "UPDATE orders SET user_id = COALESCE($3, user_id),
                    amount_cents = COALESCE($4, amount_cents),
                    currency = COALESCE($5, currency), status = COALESCE($6, status),
                    updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING id, user_id, amount_cents, currency, status, created_at, updated_at",
            &[
                &id,
                &body.user_id,
                &body.amount_cents,
                &body.currency,
                &body.status,
            ],
        )
        .await
        .map_err(user_ref)?
        .ok_or_else(Problem::not_found)?;
    state.cache.invalidate(&ctx, &cache_key(&id)).await;
    Ok(Written(from_row(&row)))
}

#[utoipa::path(delete, path = "/orders/{id}", tag = "orders", operation_id = "delete_order",
    summary = "Delete an order",
    params(("id" = uuid::Uuid, Path, description = "The order's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no such order in this tenant."),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    ctx: TenantContext,
    ResourceId(id): ResourceId,
) -> Result<StatusCode, Problem> {
    ctx.db()
        .run_opt(
            "DELETE FROM orders WHERE tenant_id = $1 AND id = $2 RETURNING id",
            &[&id],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    state.cache.invalidate(&ctx, &cache_key(&id)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn order() -> impl Strategy<Value = Order> {
        (
            any::<(u128, u128, i64)>(),
            ".{0,4}",
            "(?s).{0,12}",
            (-63_000_000_000i64..260_000_000_000, 0..1_000_000_000u32),
        )
            .prop_map(|((id, user, amount), currency, status, (secs, nanos))| {
                let at = Utc.timestamp_opt(secs, nanos).single().expect("in range");
                Order {
                    id: Uuid::from_u128(id),
                    user_id: Uuid::from_u128(user),
                    amount_cents: amount,
                    currency,
                    status,
                    created_at: at,
                    updated_at: at + chrono::Duration::milliseconds(secs % 5_000),
                }
            })
    }

    use tenantry::http::WriteJson;

    proptest! {
        /// The body a client gets is what the `Serialize` derive would have written.
        #[test]
        fn written_orders_and_pages_match_serde(
            items in proptest::collection::vec(order(), 0..4),
            next in proptest::option::of(".{0,8}"),
        ) {
            for o in &items {
                let mut one = Vec::new();
                o.write_json(&mut one);
                prop_assert_eq!(one, serde_json::to_vec(o).unwrap());
            }
            let page = Page { items, next_cursor: next };
            let mut out = Vec::new();
            page.write_json(&mut out);
            prop_assert_eq!(out, serde_json::to_vec(&page).unwrap());
        }
    }
}
