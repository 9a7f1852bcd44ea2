//! The catalog's invalidation listener: every node LISTENs for the changes that other nodes'
//! catalog writes NOTIFY, and evicts what they make stale.

use std::time::Duration;

use super::{Catalog, CHANNEL, STALE_AFTER};
use crate::db::notify::Subscription;
use crate::tenant::Slug;

impl Catalog {
    async fn apply_notification(&self, payload: &str) {
        match payload.split_once(':') {
            Some(("tenant", slug)) => {
                if let Ok(t) = Slug::parse(slug) {
                    self.invalidate_tenant(&t).await;
                }
            }
            Some(("key", prefix)) => self.invalidate_key(prefix).await,
            _ => self.invalidate_all(),
        }
    }

    /// Runs forever: LISTENs for invalidations on a dedicated control connection.
    ///
    /// When the connection drops, notifications may be missed, so the whole cache is cleared
    /// as soon as LISTEN is re-established, or after five seconds without it, whichever
    /// comes first. Not at the moment of the drop: if the database itself is down, the warm
    /// cache keeps answering what needs no database (a 429 for a tenant over its limit) instead
    /// of turning every request into a 503.
    pub async fn listen(self, config: tokio_postgres::Config) {
        let mut backoff = Duration::from_millis(100);
        let mut lost_at: Option<std::time::Instant> = None;
        loop {
            match Subscription::open(&config, CHANNEL).await {
                Ok(mut sub) => {
                    backoff = Duration::from_millis(100);
                    lost_at = None;
                    // Anything cached before LISTEN took effect may be stale.
                    self.invalidate_all();
                    while let Some(payload) = sub.next().await {
                        self.apply_notification(&payload).await;
                    }
                    tracing::warn!("catalog listener lost its connection");
                }
                Err(e) => tracing::warn!(error = %e, "catalog listener cannot connect"),
            }
            let since = *lost_at.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= STALE_AFTER {
                self.invalidate_all();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
