//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! resource types, then completed with what every route of a plane shares (security, standard
//! errors, the rate-limit and request-id headers). `/openapi.json` serves it and `/docs` renders
//! it with a vendored Redoc bundle: nothing is fetched at build or run time.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tenantry::http::{ErrorCode, FieldError};

/// An `application/problem+json` error body (RFC 9457). Clients branch on `code`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// A URI naming the problem type: `urn:tenantry:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// With `validation_failed`: the fields that failed.
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

/// The error responses, by status, with the codes each can carry.
const ERRORS: &[(&str, u16, &str)] = &[
    (
        "BadRequest",
        400,
        "`invalid_tenant` (a tenant hint that is not a slug), `invalid_header` (a malformed or \
         duplicated header) or `malformed_body` (not well-formed JSON).",
    ),
    (
        "Unauthenticated",
        401,
        "`unauthenticated` (no credential) or `invalid_credentials` (unknown, revoked or expired \
         key; JWT with a bad signature, disallowed alg, or failing exp/nbf/iss/aud).",
    ),
    (
        "Forbidden",
        403,
        "`tenant_mismatch` (a subdomain, X-Tenant-Id or path names another tenant than the \
         credential's), `tenant_suspended`, or `forbidden` (e.g. a read-only key writing).",
    ),
    (
        "NotFound",
        404,
        "`not_found`: no such resource in this tenant (another tenant's id looks exactly like a \
         missing one), or `tenant_not_found` on the admin plane.",
    ),
    (
        "MethodNotAllowed",
        405,
        "`method_not_allowed`: the route exists, not with this method.",
    ),
    (
        "Conflict",
        409,
        "`conflict`: uniqueness within the tenant, a slug already taken, or a resource not in a \
         state that allows this.",
    ),
    (
        "PayloadTooLarge",
        413,
        "`payload_too_large`: the body is over 1 MiB.",
    ),
    (
        "UnsupportedMediaType",
        415,
        "`unsupported_media_type`: the body is not declared as `application/json`.",
    ),
    (
        "ValidationFailed",
        422,
        "`validation_failed`: the body or query failed validation; `errors` lists the fields.",
    ),
    (
        "RateLimited",
        429,
        "`rate_limited`: over the tenant's plan limit (or its in-flight cap). Costs no database \
         work. Carries `Retry-After`.",
    ),
    (
        "HeadersTooLarge",
        431,
        "`headers_too_large`: the request's headers are over 16 KiB.",
    ),
    (
        "Internal",
        500,
        "`internal`: something broke on the server's side; the log has the details under the \
         request id.",
    ),
    (
        "Unavailable",
        503,
        "`unavailable`: a dependency (the database, or Redis in fail-closed mode) is down. \
         Carries `Retry-After`.",
    ),
];

const RATE_LIMIT_HEADERS: &[(&str, &str, &str)] = &[
    (
        "RateLimit-Policy",
        "string",
        "The tenant's quota policy (draft-ietf-httpapi-ratelimit-headers), e.g. \
         `\"pro\";q=10000;w=3600`.",
    ),
    (
        "RateLimit",
        "string",
        "The current state, e.g. `\"pro\";r=9958;t=12`: requests remaining and seconds until a \
         request frees up.",
    ),
    ("RateLimit-Limit", "integer", "Older form: the quota."),
    (
        "RateLimit-Remaining",
        "integer",
        "Older form: requests remaining.",
    ),
    (
        "RateLimit-Reset",
        "integer",
        "Older form: seconds until a request frees up.",
    ),
];

/// Which part of the surface a path belongs to; it decides security and shared responses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    Tenant,
    TenantByPath,
    AdminTenantData,
    Admin,
    Operations,
}

fn plane(path: &str) -> Plane {
    const TENANT_DATA: [&str; 4] = ["/users", "/orders", "/exports", "/jobs"];
    if let Some(rest) = path.strip_prefix("/admin/v1/tenants/{tenant}") {
        if TENANT_DATA.iter().any(|p| rest.starts_with(p)) {
            return Plane::AdminTenantData;
        }
        return Plane::Admin;
    }
    if path.starts_with("/admin/") {
        Plane::Admin
    } else if path.starts_with("/v1/tenants/{tenant}") {
        Plane::TenantByPath
    } else if path.starts_with("/v1/") {
        Plane::Tenant
    } else {
        Plane::Operations
    }
}

/// The finished document (computed once; the route table is fixed for the binary).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| finish(crate::surface::surface(None).into_openapi()))
}

/// [`document`] as the bytes `/openapi.json` serves.
pub fn document_bytes() -> Bytes {
    static BYTES: OnceLock<Bytes> = OnceLock::new();
    BYTES
        .get_or_init(|| Bytes::from(serde_json::to_vec(document()).unwrap_or_default()))
        .clone()
}

/// Completes the generated document: info, security schemes, shared headers and error
/// responses, per-plane security, and operation ids made unique across the three mounts of the
/// tenant-data routes.
pub fn finish(mut api: utoipa::openapi::OpenApi) -> Value {
    use utoipa::PartialSchema;
    let schemas = &mut api.components.get_or_insert_with(Default::default).schemas;
    schemas.insert("Problem".into(), ProblemDoc::schema());
    schemas.insert("ErrorCode".into(), ErrorCode::schema());
    schemas.insert("FieldError".into(), FieldError::schema());
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    constrain(&mut doc["components"]["schemas"]);
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "Tenantry API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Multi-tenant SaaS API. The credential (API key or JWT) decides the tenant; \
            a subdomain, `X-Tenant-Id` header or `/v1/tenants/{tenant}` path is a claim checked \
            against it. Errors are `application/problem+json` with a stable `code`.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    });
    doc["tags"] = json!([
        {"name": "tenant", "description": "The calling tenant."},
        {"name": "users", "description": "A tenant's users; email is unique within the tenant."},
        {"name": "orders", "description": "A tenant's orders; `user_id` must be a user of the same tenant."},
        {"name": "exports", "description": "Background CSV exports of a tenant's orders, and their jobs."},
        {"name": "tenant data by path", "description": "The tenant-plane routes with the tenant named in the path (a claim checked against the credential)."},
        {"name": "admin", "description": "Tenants, API keys, servers, operations and the audit log."},
        {"name": "admin: tenant data", "description": "The tenant-plane routes for an admin, inside an explicitly named tenant; every call is audited."},
        {"name": "operations", "description": "Health, readiness, metrics and this document."},
    ]);

    let mut components = doc["components"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    components.insert(
        "securitySchemes".into(),
        json!({
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                "description": "A tenant API key (`tk_…`)."},
            "bearer": {"type": "http", "scheme": "bearer",
                "description": "A tenant API key (`tk_…`) or a JWT whose tenant claim names the tenant."},
            "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT (HS256, RS256 or ES256) with `exp` and the tenant claim."},
            "adminToken": {"type": "http", "scheme": "bearer",
                "description": "An admin token from the server's configuration."},
        }),
    );
    let mut headers = Map::new();
    for (name, ty, desc) in RATE_LIMIT_HEADERS {
        headers.insert(
            (*name).into(),
            json!({"description": desc, "schema": {"type": ty}}),
        );
    }
    headers.insert(
        "Retry-After".into(),
        json!({"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}),
    );
    headers.insert(
        "X-Request-Id".into(),
        json!({"description": "The request id (echoed when the client sent one).", "schema": {"type": "string"}}),
    );
    components.insert("headers".into(), Value::Object(headers));
    let mut responses = Map::new();
    for (name, status, desc) in ERRORS {
        let mut h = json!({"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}});
        if matches!(status, 429 | 503) {
            h["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
        }
        if *status == 429 {
            for (hn, _, _) in RATE_LIMIT_HEADERS {
                h[*hn] = json!({"$ref": format!("#/components/headers/{hn}")});
            }
        }
        responses.insert(
            (*name).into(),
            json!({
                "description": desc,
                "headers": h,
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }),
        );
    }
    components.insert("responses".into(), Value::Object(responses));
    doc["components"] = Value::Object(components);

    let mut seen_ids = std::collections::HashSet::new();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let plane = plane(path);
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                if !matches!(method.as_str(), "get" | "post" | "patch" | "delete" | "put") {
                    continue;
                }
                complete_operation(path, method, plane, op, &mut seen_ids);
            }
        }
    }
    doc
}

/// What the server's validation enforces on body fields, stated in their schemas from the same
/// tables (`validate`), so a client generated from the document cannot send what the server
/// refuses: enums for roles and statuses, the currency pattern, names of 1 to 200 characters.
fn constrain(schemas: &mut Value) {
    use crate::validate::{ORDER_STATUSES, ROLES};
    let statuses = json!(ORDER_STATUSES);
    let roles = json!(ROLES);
    let name = json!({"minLength": 1, "maxLength": 200});
    let currency = json!({"pattern": "^[A-Z]{3}$"});
    let rules: [(&str, &str, &Value, bool); 10] = [
        ("CreateOrder", "status", &statuses, true),
        ("UpdateOrder", "status", &statuses, true),
        ("Order", "status", &statuses, true),
        ("UpdateOrder", "currency", &currency, false),
        ("CreateUser", "role", &roles, true),
        ("UpdateUser", "role", &roles, true),
        ("User", "role", &roles, true),
        ("CreateUser", "name", &name, false),
        ("UpdateUser", "name", &name, false),
        ("User", "name", &name, false),
    ];
    for (schema, field, rule, is_enum) in rules {
        let Some(prop) = schemas[schema]["properties"][field].as_object_mut() else {
            continue;
        };
        if is_enum {
            prop.insert("enum".into(), rule.clone());
            // An optional field is `["string", "null"]`: null stays allowed.
            if prop.get("type").is_some_and(|t| t.is_array()) {
                if let Some(values) = prop.get_mut("enum").and_then(Value::as_array_mut) {
                    values.push(Value::Null);
                }
            }
        } else if let Some(rule) = rule.as_object() {
            prop.extend(rule.clone());
        }
    }
}

fn error_ref(status: u16) -> Value {
    let name = ERRORS
        .iter()
        .find(|(_, s, _)| *s == status)
        .map(|(n, _, _)| *n)
        .unwrap_or("Internal");
    json!({"$ref": format!("#/components/responses/{name}")})
}

fn complete_operation(
    path: &str,
    method: &str,
    plane: Plane,
    op: &mut Value,
    seen_ids: &mut std::collections::HashSet<String>,
) {
    // Operation ids and tags per mount: the tenant-data handlers are served three times.
    let id = op["operationId"].as_str().unwrap_or(method).to_owned();
    let id = match plane {
        Plane::TenantByPath => format!("{id}_by_path"),
        Plane::AdminTenantData => format!("admin_{id}"),
        _ => id,
    };
    let mut unique = id.clone();
    let mut n = 2;
    while !seen_ids.insert(unique.clone()) {
        unique = format!("{id}_{n}");
        n += 1;
    }
    op["operationId"] = json!(unique);
    match plane {
        Plane::TenantByPath => op["tags"] = json!(["tenant data by path"]),
        Plane::AdminTenantData => op["tags"] = json!(["admin: tenant data"]),
        _ => {}
    }

    // A `{tenant}` segment added by nesting is a parameter the handler does not declare.
    if path.contains("{tenant}") {
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        if !params
            .iter()
            .any(|p| p["name"] == "tenant" && p["in"] == "path")
        {
            let mut params = params;
            params.insert(
                0,
                json!({
                    "name": "tenant", "in": "path", "required": true,
                    "description": "The tenant's slug.",
                    "schema": {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,62}$"},
                }),
            );
            op["parameters"] = Value::Array(params);
        }
    }

    let (security, shared): (Value, &[u16]) = match plane {
        Plane::Tenant | Plane::TenantByPath => (
            json!([{"apiKey": []}, {"bearer": []}, {"jwt": []}]),
            &[400, 401, 403, 429, 431, 500, 503],
        ),
        Plane::Admin | Plane::AdminTenantData => {
            (json!([{"adminToken": []}]), &[400, 401, 431, 500, 503])
        }
        Plane::Operations => (json!([]), &[]),
    };
    op["security"] = security;
    let has_body = op.get("requestBody").is_some();
    // Query parameters are validated too (a bad cursor, limit or filter is 422).
    let has_query = op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    let Some(responses) = op["responses"].as_object_mut() else {
        return;
    };
    for status in shared {
        responses
            .entry(status.to_string())
            .or_insert_with(|| error_ref(*status));
    }
    if has_query {
        responses
            .entry("422".to_owned())
            .or_insert_with(|| error_ref(422));
    }
    if has_body {
        for status in [413, 415, 422] {
            responses
                .entry(status.to_string())
                .or_insert_with(|| error_ref(status));
        }
    }
    for (status, resp) in responses.iter_mut() {
        let code: u16 = status.parse().unwrap_or(0);
        if code >= 400 && resp.get("$ref").is_none() && resp.get("content").is_none() {
            // An annotated error without a body: the shared problem response for its status,
            // keeping the operation's own description.
            let desc = resp["description"].clone();
            *resp = error_ref(code);
            if desc.as_str().is_some_and(|d| !d.is_empty()) {
                resp["description"] = desc;
            }
            continue;
        }
        let Some(obj) = resp.as_object_mut().filter(|o| !o.contains_key("$ref")) else {
            continue;
        };
        let headers = obj
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(headers) = headers {
            headers.insert(
                "X-Request-Id".into(),
                json!({"$ref": "#/components/headers/X-Request-Id"}),
            );
            if matches!(plane, Plane::Tenant | Plane::TenantByPath) {
                for (hn, _, _) in RATE_LIMIT_HEADERS {
                    headers.insert(
                        (*hn).into(),
                        json!({"$ref": format!("#/components/headers/{hn}")}),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_by_path() {
        assert!(plane("/v1/users") == Plane::Tenant);
        assert!(plane("/v1/tenants/{tenant}/users") == Plane::TenantByPath);
        assert!(plane("/admin/v1/tenants/{tenant}/orders/{id}") == Plane::AdminTenantData);
        assert!(plane("/admin/v1/tenants/{tenant}/api-keys") == Plane::Admin);
        assert!(plane("/admin/v1/audit") == Plane::Admin);
        assert!(plane("/healthz") == Plane::Operations);
    }

    #[test]
    fn redoc_path_names_the_vendored_version() {
        use crate::routes::docs::{REDOC_JS, REDOC_VERSION};
        let doc = document();
        let p = format!("/docs/redoc-{REDOC_VERSION}.standalone.js");
        assert!(doc["paths"].get(&p).is_some(), "{p} missing");
        assert!(REDOC_JS.len() > 100_000);
    }
}
