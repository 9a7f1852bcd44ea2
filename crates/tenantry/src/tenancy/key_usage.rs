//! API keys' `last_used_at`, written in batches (never once per request).

use super::*;

impl Tenancy {
    /// Writes the batched `last_used_at` of keys used since the last flush (one statement).
    pub async fn flush_key_usage(&self) -> Result<usize, DbError> {
        let batch: Vec<(Uuid, DateTime<Utc>)> = lock(&self.inner.key_usage).drain().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = batch.iter().cloned().unzip();
        let client = self.inner.catalog.database().control().get().await?;
        let r = client
            .execute(
                "UPDATE tenantry.api_keys k SET last_used_at = u.at
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                &[&ids, &ats],
            )
            .await;
        if let Err(e) = r {
            // Put them back (keeping the newest time) so a later flush writes them.
            let mut pending = lock(&self.inner.key_usage);
            for (id, at) in batch {
                let e = pending.entry(id).or_insert(at);
                *e = (*e).max(at);
            }
            return Err(e.into());
        }
        Ok(ids.len())
    }

    /// Flushes key usage every `every` until dropped (and once more when asked to stop).
    pub async fn flush_key_usage_every(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = self.flush_key_usage().await {
                tracing::warn!(error = %e, "could not record API key usage; will retry");
            }
        }
    }
}
