//! The audit log, newest first, by tenant.

use super::*;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this tenant.
    tenant: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", operation_id = "list_audit",
    summary = "The audit log, newest first",
    params(AuditQuery),
    responses((status = 200, description = "A page of entries.", body = Page<audit::AuditEntry>)))]
pub async fn audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<audit::AuditEntry>>, Problem> {
    let mut errors = Vec::new();
    let limit = page::limit(q.limit).unwrap_or_else(|e| {
        errors.push(e);
        0
    });
    let tenant = match q.tenant.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            Slug::parse(t).map_err(|e| Problem::new(ErrorCode::InvalidTenant, e.to_string()))?,
        ),
    };
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => match c.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                errors.push(FieldError::new("cursor", "not a cursor from this list"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let rows = audit::list(
        state.tenancy.catalog().database(),
        tenant.as_ref(),
        before,
        limit + 1,
    )
    .await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |e: &audit::AuditEntry| e.id.clone(),
    )))
}
