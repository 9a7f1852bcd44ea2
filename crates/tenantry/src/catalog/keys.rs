//! Catalog writes of API keys, and the admin plane's list of them: created with the only copy
//! of their secret, rotated and revoked in one transaction each, every node told at commit.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{key_from_row, notify, ApiKeyInfo, Catalog, CatalogError, KEY_COLS};
use crate::audit::{self, Actor};
use crate::auth::api_key::NewKey;
use crate::auth::Scope;
use crate::db::DbError;
use crate::tenant::Slug;

impl Catalog {
    /// Creates a key and returns it with the only copy of its secret.
    pub async fn create_key(
        &self,
        tenant: &Slug,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<(ApiKeyInfo, String), CatalogError> {
        let new = NewKey::generate(self.db.key_check());
        let mut client = self.db.control().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let exists = tx
            .query_opt(
                "SELECT id FROM tenantry.tenants WHERE slug = $1 AND state <> 'deleting' FOR SHARE",
                &[&tenant.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let Some(tenant_id) = exists.map(|r| r.get::<_, String>(0)) else {
            return Err(CatalogError::TenantNotFound);
        };
        let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let info = insert_key(&tx, &tenant_id, name, &new, &scopes, expires_at).await?;
        audit::record_in(
            &tx,
            actor,
            Some(tenant),
            "api_key.create",
            &info.id.to_string(),
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok((info, new.key))
    }

    /// Rotates a key: a new key with the same name, scopes and expiry is created and the old
    /// one revoked, in one transaction (the old one stops working on every node at once).
    /// `None` when the tenant has no such live key.
    pub async fn rotate_key(
        &self,
        tenant: &Slug,
        id: Uuid,
        actor: &Actor,
    ) -> Result<Option<(ApiKeyInfo, String)>, DbError> {
        let new = NewKey::generate(self.db.key_check());
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let old = tx
            .query_opt(
                "UPDATE tenantry.api_keys SET revoked_at = now()
                 WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                   AND id = $2 AND revoked_at IS NULL
                 RETURNING name, scopes, expires_at, prefix, tenant_id",
                &[&tenant.as_str(), &id],
            )
            .await?;
        let Some(old) = old else { return Ok(None) };
        let (name, scopes, expires_at, old_prefix, tenant_id): (
            String,
            Vec<String>,
            Option<DateTime<Utc>>,
            String,
            String,
        ) = (old.get(0), old.get(1), old.get(2), old.get(3), old.get(4));
        let info = insert_key(&tx, &tenant_id, &name, &new, &scopes, expires_at).await?;
        audit::record_in(
            &tx,
            actor,
            Some(tenant),
            "api_key.rotate",
            &format!("{id} -> {}", info.id),
        )
        .await?;
        notify(&tx, &format!("key:{old_prefix}")).await?;
        tx.commit().await?;
        self.invalidate_key(&old_prefix).await;
        Ok(Some((info, new.key)))
    }

    /// Lists a tenant's keys, oldest first, after `cursor` (a key id).
    pub async fn list_keys(
        &self,
        tenant: &Slug,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<Vec<ApiKeyInfo>, DbError> {
        let client = self.db.control().get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {KEY_COLS} FROM tenantry.api_keys
                     WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                       AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id LIMIT $3"
                ),
                &[&tenant.as_str(), &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    /// Revokes a key of `tenant` (idempotent: revoking twice keeps the first time). `None` when
    /// the tenant has no such key.
    pub async fn revoke_key(
        &self,
        tenant: &Slug,
        id: Uuid,
        actor: &Actor,
    ) -> Result<Option<ApiKeyInfo>, DbError> {
        let mut client = self.db.control().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenantry.api_keys SET revoked_at = COALESCE(revoked_at, now())
                     WHERE tenant_id = (SELECT id FROM tenantry.tenants WHERE slug = $1)
                       AND id = $2 RETURNING {KEY_COLS}"
                ),
                &[&tenant.as_str(), &id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let info = key_from_row(&row);
        let bare = info.prefix.trim_start_matches("tk_").to_owned();
        audit::record_in(&tx, actor, Some(tenant), "api_key.revoke", &id.to_string()).await?;
        notify(&tx, &format!("key:{bare}")).await?;
        tx.commit().await?;
        self.invalidate_key(&bare).await;
        Ok(Some(info))
    }
}

/// Inserts a new key of tenant `tenant_id` (only its hash is stored) and returns it as the
/// admin plane shows it.
async fn insert_key(
    tx: &tokio_postgres::Transaction<'_>,
    tenant_id: &str,
    name: &str,
    new: &NewKey,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> Result<ApiKeyInfo, DbError> {
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO tenantry.api_keys (id, tenant_id, name, prefix, secret_hash, scopes, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLS}"
            ),
            &[
                &Uuid::now_v7(),
                &tenant_id,
                &name,
                &new.prefix,
                &new.hash.as_slice(),
                &scopes,
                &expires_at,
            ],
        )
        .await?;
    Ok(key_from_row(&row))
}
