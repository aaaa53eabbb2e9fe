//! The Watch stream. The server sends a sync hint when the stream opens and after every change
//! that concerns agents, such as a revocation or an entry change. Each hint makes the sync loop
//! run a round at once instead of at its next interval.
//!
//! The watcher reopens a dropped stream with [`Backoff`] and moves to the new connection after
//! [`ServerConnection::reconnect`]. A connection-level failure (Unavailable or
//! DeadlineExceeded) moves the connection to the next server address with
//! [`ServerConnection::fail_over`], and the stream is reopened there after the short failover
//! delay. A server without Watch (Unimplemented), or one that rejects the agent, leaves the
//! agent on its sync interval until the next reconnect.
//!
//! While a stream is open and has delivered its first hint, the sync loop does not poll: it runs
//! a round for each hint and when an SVID is due for renewal (see
//! [`crate::sync::Syncer::run`]). Between streams it polls at its interval.
//!
//! Limit: a stream on a connection that dies silently (no FIN or RST, such as a network
//! partition) is noticed only once the connection fails or a renewal round fails.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tonic::Code;
use twid_proto::node::WatchRequest;

use crate::node::{RPC_TIMEOUT, ServerConnection};
use crate::sync::Backoff;

/// The reason one attempt to hold the stream ended.
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// The connection was replaced, so the stream is reopened on the new one at once.
    Reconnected,
    /// The stream failed or ended, so it is reopened after the next backoff delay.
    Dropped,
    /// The connection of this generation failed, so the watcher moves to the next server
    /// address and reopens the stream there.
    ConnectionFailed(u64),
    /// The server cannot serve Watch to this agent, so the watcher waits for the next
    /// reconnect.
    Unusable,
}

/// Holds the Watch stream until `shutdown` turns true, calling `hints.notify_one()` for every
/// hint. [`Notify`] keeps at most one permit, so hints that arrive during a sync round cause
/// exactly one more round.
pub(crate) async fn run(
    connection: Arc<ServerConnection>,
    hints: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnects = connection.subscribe_reconnects();
    reconnects.mark_unchanged();
    let mut backoff = Backoff::new();
    let mut watcher = Watcher {
        connection,
        hints,
        opened_before: false,
        unimplemented_logged: false,
        failures: 0,
    };
    loop {
        let ended = tokio::select! {
            ended = watcher.hold(&mut reconnects, &mut backoff) => ended,
            _ = shutdown.wait_for(|stop| *stop) => Ended::Shutdown,
        };
        // A hint may be lost between the end of one stream and the first hint of the next, so
        // the sync loop polls at its interval meanwhile. It may be asleep for a delay chosen
        // while the stream was open, so it is woken to run a round now. That round also
        // reports a rejection that ended the stream, such as a revoked or banned agent.
        if watcher.connection.is_watching() {
            watcher.connection.set_watching(false);
            watcher.hints.notify_one();
        }
        let wait = match ended {
            Ended::Shutdown => return,
            Ended::Reconnected => continue,
            Ended::Dropped => Some(backoff.step()),
            Ended::ConnectionFailed(generation) => {
                let delay = watcher.connection.fail_over(generation).await;
                // The failover itself counts as a reconnect, which must not cut the delay short.
                reconnects.mark_unchanged();
                Some(delay)
            }
            Ended::Unusable => None,
        };
        tokio::select! {
            () = pause(wait) => {}
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Sleeps for `wait`, or forever for `None`.
async fn pause(wait: Option<std::time::Duration>) {
    match wait {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

struct Watcher {
    connection: Arc<ServerConnection>,
    hints: Arc<Notify>,
    /// Whether a stream was opened before, to tell a reconnect from the first connect.
    opened_before: bool,
    /// Whether Unimplemented was logged already, because it is logged once per agent run.
    unimplemented_logged: bool,
    /// Consecutive failed opens, of which only the first is logged at warn.
    failures: u32,
}

impl Watcher {
    /// Opens the stream and forwards its hints until it ends.
    async fn hold(
        &mut self,
        reconnects: &mut watch::Receiver<u64>,
        backoff: &mut Backoff,
    ) -> Ended {
        reconnects.mark_unchanged();
        let (mut client, generation) = self.connection.client_with_generation();
        let opened = tokio::time::timeout(RPC_TIMEOUT, client.watch(WatchRequest {})).await;
        let mut stream = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return self.open_failed(&status, generation),
            Err(_) => {
                let status = tonic::Status::deadline_exceeded(format!(
                    "no response within {}s",
                    RPC_TIMEOUT.as_secs()
                ));
                return self.open_failed(&status, generation);
            }
        };
        self.failures = 0;
        self.connection.record_success();
        if self.opened_before {
            tracing::info!("Watch stream to the server reopened");
        } else {
            tracing::info!("Watch stream to the server open; syncing on every change");
        }
        self.opened_before = true;
        *backoff = Backoff::new();
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(hint)) => {
                        tracing::debug!(
                            revision = hint.revision,
                            reason = %hint.reason,
                            "sync hint received"
                        );
                        self.connection.set_watching(true);
                        self.hints.notify_one();
                    }
                    Ok(None) => {
                        tracing::info!("the server ended the Watch stream; reopening it");
                        return Ended::Dropped;
                    }
                    Err(status) => {
                        tracing::info!(
                            code = ?status.code(),
                            message = %status.message(),
                            "the Watch stream to the server failed; reopening it"
                        );
                        if is_connection_failure(status.code()) {
                            return Ended::ConnectionFailed(generation);
                        }
                        return Ended::Dropped;
                    }
                },
                changed = reconnects.changed() => {
                    return if changed.is_err() { Ended::Shutdown } else { Ended::Reconnected };
                }
            }
        }
    }

    fn open_failed(&mut self, status: &tonic::Status, generation: u64) -> Ended {
        match status.code() {
            Code::Unimplemented => {
                if !self.unimplemented_logged {
                    tracing::info!(
                        "the server does not support Watch; syncing at the sync interval only"
                    );
                    self.unimplemented_logged = true;
                }
                Ended::Unusable
            }
            Code::PermissionDenied | Code::Unauthenticated => {
                // The sync loop reports the rejection. An evidence agent that attests again
                // reconnects, which reopens the stream.
                tracing::debug!(
                    code = ?status.code(),
                    message = %status.message(),
                    "the server rejected the Watch stream; waiting for the next reconnect"
                );
                Ended::Unusable
            }
            code => {
                self.failures += 1;
                if self.failures == 1 {
                    tracing::warn!(
                        ?code,
                        message = %status.message(),
                        "opening the Watch stream to the server failed; retrying with backoff"
                    );
                } else {
                    tracing::debug!(
                        ?code,
                        message = %status.message(),
                        attempt = self.failures,
                        "opening the Watch stream to the server failed again"
                    );
                }
                if is_connection_failure(code) {
                    return Ended::ConnectionFailed(generation);
                }
                Ended::Dropped
            }
        }
    }
}

/// Returns whether `code` reports a connection-level failure, as
/// [`crate::AgentError::is_connection_failure`] does for calls.
fn is_connection_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}
