//! Change notifications between servers that share one PostgreSQL database.
//!
//! Every write that agents depend on sends `NOTIFY twid_changes, '<kind>'` inside its own
//! transaction, so PostgreSQL delivers it to every listening session when the transaction
//! commits and never when it rolls back. PostgreSQL also folds identical notifications of one
//! transaction into one (both described under NOTIFY in the PostgreSQL manual). Each server
//! keeps a [`ChangeListener`] open on a connection of its own and wakes its agents' `Watch`
//! streams with every notification, including its own.
//!
//! SQLite sends and receives nothing, because one SQLite file has one server.

use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::postgres::PgListener;

use crate::{DatabaseType, Datastore, DatastoreError};

/// The PostgreSQL channel that carries change notifications.
pub const CHANGES_CHANNEL: &str = "twid_changes";

/// First pause before reconnecting a lost listener connection. It doubles after each failed
/// attempt, up to [`MAX_RECONNECT_BACKOFF`].
const INITIAL_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Maximum pause between two reconnection attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(10);

/// A PostgreSQL URL. It may contain a password, so its `Debug` output leaves it out.
#[derive(Clone)]
pub(crate) struct PostgresUrl(pub(crate) Arc<str>);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PostgresUrl(..)")
    }
}

/// The kind of agent-visible data that a write changed, sent as the notification payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Registration entries: created, updated, deleted or pruned after expiry.
    Entry,
    /// An attested agent was banned, unbanned or evicted.
    Agent,
    /// A trust bundle was stored.
    Bundle,
    /// A revocation rule or its revoked credentials were stored.
    Revocation,
    /// A signed policy version was stored.
    Policy,
    /// A server replica stored its CA state (`ca_state` rows of its X.509 authorities and JWT
    /// keys), so the other replicas' trust bundle, the union of all replicas', may be stale.
    Authorities,
}

impl ChangeKind {
    /// Returns the notification payload, which is also the hint reason agents log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Agent => "agent",
            Self::Bundle => "bundle",
            Self::Revocation => "revocation",
            Self::Policy => "policy",
            Self::Authorities => "authorities",
        }
    }

    /// Parses a notification payload, or returns `None` for a payload this build does not
    /// know, for example one sent by a newer server.
    pub fn from_payload(payload: &str) -> Option<Self> {
        match payload {
            "entry" => Some(Self::Entry),
            "agent" => Some(Self::Agent),
            "bundle" => Some(Self::Bundle),
            "revocation" => Some(Self::Revocation),
            "policy" => Some(Self::Policy),
            "authorities" => Some(Self::Authorities),
            _ => None,
        }
    }

    /// Returns the `NOTIFY` statement. It is a constant per kind because `NOTIFY` takes no bind
    /// parameters, and `pg_notify()` returns `void`, a type that sqlx's `Any` driver cannot
    /// decode.
    fn statement(self) -> &'static str {
        match self {
            Self::Entry => "NOTIFY twid_changes, 'entry'",
            Self::Agent => "NOTIFY twid_changes, 'agent'",
            Self::Bundle => "NOTIFY twid_changes, 'bundle'",
            Self::Revocation => "NOTIFY twid_changes, 'revocation'",
            Self::Policy => "NOTIFY twid_changes, 'policy'",
            Self::Authorities => "NOTIFY twid_changes, 'authorities'",
        }
    }
}

/// Sends the change notification for `kind` on PostgreSQL and does nothing on SQLite. Call it
/// inside the transaction of the write, so that listeners receive it only after the commit.
pub(crate) async fn send_change(
    conn: &mut AnyConnection,
    backend: DatabaseType,
    kind: ChangeKind,
) -> Result<(), DatastoreError> {
    if backend == DatabaseType::Postgres {
        sqlx::query(kind.statement()).execute(conn).await?;
    }
    Ok(())
}

/// An event that [`ChangeListener::recv`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEvent {
    /// A committed write of this kind, made through any server on the database.
    Changed(ChangeKind),
    /// A notification whose payload this build does not know, which callers should treat as a
    /// change of every kind.
    Unknown,
    /// The listener connection was lost and is listening again. Notifications sent while it
    /// was down are lost, so treat this as a change of every kind.
    Resync,
}

/// A `LISTEN twid_changes` session on a PostgreSQL connection of its own, which reconnects
/// after the connection is lost.
#[derive(Debug)]
pub struct ChangeListener {
    url: PostgresUrl,
    listener: PgListener,
}

impl Datastore {
    /// Opens a listener for the change notifications of every server on this database, or
    /// returns `None` on SQLite, which sends none. Notifications committed after this returns
    /// are received.
    ///
    /// # Errors
    /// Returns the connection or `LISTEN` failure.
    pub async fn listen_for_changes(&self) -> Result<Option<ChangeListener>, DatastoreError> {
        let Some(url) = &self.postgres_url else {
            return Ok(None);
        };
        let listener = connect_listener(&url.0).await?;
        tracing::debug!(
            channel = CHANGES_CHANNEL,
            "listening for change notifications"
        );
        Ok(Some(ChangeListener {
            url: url.clone(),
            listener,
        }))
    }
}

impl ChangeListener {
    /// Waits for the next notification. When the connection is lost, it reconnects with
    /// exponential backoff for as long as it takes, logging each failure, and then returns
    /// [`ChangeEvent::Resync`].
    pub async fn recv(&mut self) -> ChangeEvent {
        match self.listener.try_recv().await {
            Ok(Some(notification)) => {
                let payload = notification.payload();
                match ChangeKind::from_payload(payload) {
                    Some(kind) => ChangeEvent::Changed(kind),
                    None => {
                        tracing::debug!(payload, "change notification with an unknown payload");
                        ChangeEvent::Unknown
                    }
                }
            }
            // `Ok(None)` is an I/O error on the connection, which is gone.
            Ok(None) => {
                tracing::warn!(
                    channel = CHANGES_CHANNEL,
                    "change listener connection lost; reconnecting, and notifications sent \
                     until then are lost"
                );
                self.reconnect().await;
                ChangeEvent::Resync
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    channel = CHANGES_CHANNEL,
                    "change listener failed; reconnecting, and notifications sent until then \
                     are lost"
                );
                self.reconnect().await;
                ChangeEvent::Resync
            }
        }
    }

    /// Replaces the listener with a new connection, retrying until `LISTEN` succeeds.
    async fn reconnect(&mut self) {
        let mut backoff = INITIAL_RECONNECT_BACKOFF;
        let mut attempt: u32 = 1;
        loop {
            tokio::time::sleep(backoff).await;
            match connect_listener(&self.url.0).await {
                Ok(listener) => {
                    self.listener = listener;
                    tracing::info!(
                        attempt,
                        channel = CHANGES_CHANNEL,
                        "change listener reconnected"
                    );
                    return;
                }
                Err(error) => {
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                    tracing::warn!(
                        %error,
                        attempt,
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        channel = CHANGES_CHANNEL,
                        "change listener reconnection failed"
                    );
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

async fn connect_listener(url: &str) -> Result<PgListener, DatastoreError> {
    let mut listener = PgListener::connect(url).await?;
    // With eager reconnection, sqlx 0.9.1 retries at once and without a pause after every I/O
    // error other than "connection refused", so `reconnect` does it instead, with backoff.
    listener.eager_reconnect(false);
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}
