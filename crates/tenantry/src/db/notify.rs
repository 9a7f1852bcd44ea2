//! LISTEN on a dedicated connection: the one mechanism behind catalog, cache and job
//! notifications.

use futures_util::{Stream, StreamExt};

use super::DbError;

/// A live subscription: the payloads of notifications on one channel, until the connection
/// ends (then the stream ends and the caller reconnects, assuming it missed some).
pub(crate) struct Subscription {
    /// Keeps the connection open; dropping it ends the subscription.
    _client: tokio_postgres::Client,
    stream: std::pin::Pin<Box<dyn Stream<Item = String> + Send>>,
}

impl Subscription {
    /// Connects and LISTENs; returns once LISTEN has taken effect.
    pub(crate) async fn open(
        config: &tokio_postgres::Config,
        channel: &str,
    ) -> Result<Self, DbError> {
        let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let sql = format!("LISTEN {channel}");
        {
            // The connection must be polled for LISTEN to complete.
            let listen = client.batch_execute(&sql);
            let mut listen = std::pin::pin!(listen);
            loop {
                tokio::select! {
                    r = &mut listen => { r?; break; }
                    m = messages.next() => if m.is_none() {
                        return Err(DbError::Unavailable("connection closed during LISTEN".into()));
                    },
                }
            }
        }
        let stream = messages
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| {
                std::future::ready(match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        Some(n.payload().to_owned())
                    }
                    _ => None,
                })
            });
        Ok(Self {
            _client: client,
            stream: Box::pin(stream),
        })
    }

    /// The next notification's payload; `None` when the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<String> {
        self.stream.next().await
    }
}
