//! `/users`: a tenant's users. Email is unique within the tenant (not globally).

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenantry::db::DbError;
use tenantry::http::{ErrorCode, FieldError, Problem, Written};
use tenantry::{Json, Query, TenantContext};
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{uuid_page, Page, PageQuery};
use crate::validate;

tenantry::json_object! {
    /// A user of a tenant. Responses write it with its [`WriteJson`](tenantry::http::WriteJson)
    /// (made from the same field list); the `Serialize` derive is the reference the tests hold
    /// that to.
    #[derive(Debug, Serialize, utoipa::ToSchema)]
    pub struct User {
        pub id: Uuid,
        pub email: String,
        pub name: String,
        pub role: String,
        #[serde(serialize_with = "tenantry::http::serialize_timestamp")]
        pub created_at: DateTime<Utc>,
        #[serde(serialize_with = "tenantry::http::serialize_timestamp")]
        pub updated_at: DateTime<Utc>,
    }
}

fn from_row(r: &Row) -> User {
    User {
        id: r.get(0),
        email: r.get(1),
        name: r.get(2),
        role: r.get(3),
        created_at: r.get(4),
        updated_at: r.get(5),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Unique within the tenant.
    #[schema(format = "email")]
    email: String,
    name: String,
    /// `admin`, `member` (default) or `viewer`.
    #[serde(default = "default_role")]
    #[schema(required = false, example = "member")]
    role: String,
}

fn default_role() -> String {
    "member".into()
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    email: Option<String>,
    name: Option<String>,
    role: Option<String>,
}

/// A resource id from the path. An id that is not a UUID cannot exist, so it is 404 like any
/// other missing id: a malformed id and another tenant's id look the same.
pub struct ResourceId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ResourceId {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::not_found())?;
        params
            .iter()
            .find(|(k, _)| *k == "id")
            .and_then(|(_, v)| Uuid::try_parse(v).ok())
            .map(ResourceId)
            .ok_or_else(Problem::not_found)
    }
}

fn conflict_or(e: DbError) -> Problem {
    match &e {
        DbError::Unique { constraint } if constraint == "users_email_key" => Problem::new(
            ErrorCode::Conflict,
            "a user with this email already exists in this tenant",
        ),
        DbError::ForeignKey { constraint } if constraint == "orders_user_fkey" => Problem::new(
            ErrorCode::Conflict,
            "the user still has orders; delete or reassign them first",
        ),
        _ => e.into(),
    }
}

#[utoipa::path(get, path = "/users", tag = "users", operation_id = "list_users",
    summary = "List the tenant's users",
    params(PageQuery),
    responses((status = 200, description = "A page of users, ordered by id.", body = Page<User>)))]
pub async fn list(
    ctx: TenantContext,
    Query(q): Query<PageQuery>,
) -> Result<Written<Page<User>>, Problem> {
    let page = uuid_page(q.limit, q.cursor.as_deref())?;
    let rows = ctx
        .db()
        .run(
            "SELECT id, email, name, role, created_at, updated_at FROM users
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
            &[&page.after, &page.fetch()],
        )
        .await?;
    let items = rows.iter().map(from_row).collect();
    Ok(Written(Page::from_rows(items, page.limit, |u: &User| {
        u.id.to_string()
    })))
}

#[utoipa::path(post, path = "/users", tag = "users", operation_id = "create_user",
    summary = "Create a user",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created.", body = User),
        (status = 409, description = "`conflict`: a user with this email already exists in this tenant."),
    ))]
pub async fn create(
    ctx: TenantContext,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, Written<User>), Problem> {
    let mut errors = Vec::new();
    let email = validate::email(&body.email, &mut errors);
    validate::name("name", &body.name, &mut errors);
    validate::one_of("role", &body.role, validate::ROLES, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let row = ctx
        .db()
        .run_opt(
            "INSERT INTO users (tenant_id, id, email, name, role) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, email, name, role, created_at, updated_at",
            &[&Uuid::now_v7(), &email, &body.name, &body.role],
        )
        .await
        .map_err(conflict_or)?
        .ok_or_else(|| Problem::internal(&"insert returned no row"))?;
    Ok((StatusCode::CREATED, Written(from_row(&row))))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users", operation_id = "get_user",
    summary = "Read a user",
    params(("id" = uuid::Uuid, Path, description = "The user's id.")),
    responses(
        (status = 200, description = "The user.", body = User),
        (status = 404, description = "`not_found`: no such user in this tenant."),
    ))]
pub async fn get(ctx: TenantContext, ResourceId(id): ResourceId) -> Result<Written<User>, Problem> {
    let row = ctx
        .db()
        .run_opt(
            "SELECT id, email, name, role, created_at, updated_at FROM users
             WHERE tenant_id = $1 AND id = $2",
            &[&id],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(Written(from_row(&row)))
}

#[utoipa::path(patch, path = "/users/{id}", tag = "users", operation_id = "update_user",
    summary = "Change a user's email, name or role",
    params(("id" = uuid::Uuid, Path, description = "The user's id.")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user.", body = User),
        (status = 404, description = "`not_found`: no such user in this tenant."),
        (status = 409, description = "`conflict`: the email is taken in this tenant."),
    ))]
pub async fn update(
    ctx: TenantContext,
    ResourceId(id): ResourceId,
    Json(body): Json<UpdateUser>,
) -> Result<Written<User>, Problem> {
    let mut errors: Vec<FieldError> = Vec::new();
    let email = body
        .email
        .as_deref()
        .map(|e| validate::email(e, &mut errors));
    if let Some(n) = &body.name {
        validate::name("name", n, &mut errors);
    }
    if let Some(r) = &body.role {
        validate::one_of("role", r, validate::ROLES, &mut errors);
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let row = ctx
        .db()
        .run_opt(
            "UPDATE users SET email = COALESCE($3, email), name = COALESCE($4, name),
                    role = COALESCE($5, role), updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING id, email, name, role, created_at, updated_at",
            &[&id, &email, &body.name, &body.role],
        )
        .await
        .map_err(conflict_or)?
        .ok_or_else(Problem::not_found)?;
    Ok(Written(from_row(&row)))
}

#[utoipa::path(delete, path = "/users/{id}", tag = "users", operation_id = "delete_user",
    summary = "Delete a user",
    params(("id" = uuid::Uuid, Path, description = "The user's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no such user in this tenant."),
        (status = 409, description = "`conflict`: the user still has orders."),
    ))]
pub async fn delete(ctx: TenantContext, ResourceId(id): ResourceId) -> Result<StatusCode, Problem> {
    ctx.db()
        .run_opt(
            "DELETE FROM users WHERE tenant_id = $1 AND id = $2 RETURNING id",
            &[&id],
        )
        .await
        .map_err(conflict_or)?
        .ok_or_else(Problem::not_found)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    use tenantry::http::WriteJson;

    proptest! {
        /// The body a client gets is what the `Serialize` derive would have written.
        #[test]
        fn written_users_match_serde(
            id in any::<u128>(),
            (email, name, role) in ("(?s).{0,16}", "(?s).{0,16}", ".{0,8}"),
            (secs, nanos) in (-63_000_000_000i64..260_000_000_000, 0..1_000_000_000u32),
        ) {
            let at = Utc.timestamp_opt(secs, nanos).single().expect("in range");
            let user = User { id: Uuid::from_u128(id), email, name, role, created_at: at, updated_at: at };
            let mut out = Vec::new();
            user.write_json(&mut out);
            prop_assert_eq!(out, serde_json::to_vec(&user).unwrap());
        }
    }
}
