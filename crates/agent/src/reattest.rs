//! Re-attestation of an agent that attested with hardware evidence.
//!
//! The server caps such an agent's SVID at the end of the evidence's validity (a Nitro leaf
//! certificate, DCAP collateral), and RenewAgent never extends an SVID past its current expiry.
//! So once the SVID has passed half its lifetime, the agent attests again on the AttestAgent
//! stream with a new key and fresh evidence from its collector, exactly as at the start. The
//! sync loop runs it between rounds, and workloads keep getting SVIDs from the cache meanwhile.
//!
//! While the current SVID is valid, the agent presents it as TLS client certificate on the
//! re-attestation connection. The server lets only the holder of an agent ID's unexpired SVID
//! replace that ID's record, so agents with identical evidence cannot evict each other.
//!
//! A failed attempt is logged at warn with the error, and the agent keeps its current SVID
//! while that is valid. It retries after 5 s, doubling up to 5 min, with up to 20% random
//! shortening. An attempt that succeeds but does not extend the SVID's expiry is retried on
//! the same schedule, so evidence that the platform does not refresh cannot cause a tight loop.

use std::time::Duration;

use twid_proto::types::Bundle;
use twid_tls::{Authorizer, SvidSource};

use crate::AgentError;
use crate::bootstrap::AttestationMethod;
use crate::cache::half_life;
use crate::startup::attest_over;
use crate::state;
use crate::sync::{Backoff, Syncer, unix_now};

/// First retry delay after a failed re-attestation.
const BACKOFF_START: Duration = Duration::from_secs(5);
/// Maximum retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The attestation method of an evidence-attested agent and the schedule of its attempts.
pub(crate) struct Reattestation {
    method: AttestationMethod,
    backoff: Backoff,
    failures: u32,
    /// Unix seconds before which no new attempt starts; 0 when the last attempt succeeded.
    retry_at: i64,
    /// Whether the server rejected the current SVID, so the half-life no longer matters.
    rejected: bool,
}

impl std::fmt::Debug for Reattestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reattestation")
            .field("attestor", &self.method.attestor())
            .field("failures", &self.failures)
            .field("retry_at", &self.retry_at)
            .finish_non_exhaustive()
    }
}

impl Reattestation {
    /// Prepares re-attestation with `method` to the server that the agent is connected to.
    pub(crate) fn new(method: AttestationMethod) -> Self {
        Self {
            method,
            backoff: Backoff::with_bounds(BACKOFF_START, BACKOFF_MAX),
            failures: 0,
            retry_at: 0,
            rejected: false,
        }
    }

    /// Returns the Unix time at which the next attempt is due for an SVID valid from
    /// `not_before` to `not_after`: its half-life, or the retry time after a failure if later.
    fn due_at(&self, not_before: i64, not_after: i64) -> i64 {
        if self.rejected {
            return self.retry_at;
        }
        half_life(not_before, not_after).max(self.retry_at)
    }

    /// Makes the next attempt due at once (or after the current retry delay), because the
    /// server rejected the current SVID.
    pub(crate) fn mark_rejected(&mut self) {
        self.rejected = true;
    }

    /// Counts a failed attempt at `now` and returns the delay before the next one.
    fn record_failure(&mut self, now: i64) -> Duration {
        self.failures += 1;
        self.hold_off(now)
    }

    /// Counts a successful attempt at `now` that followed a rejection. The backoff keeps
    /// growing, because a rejection can also come from another agent with the same agent ID
    /// attesting, and two such agents would otherwise supersede each other at every sync.
    fn record_success_after_rejection(&mut self, now: i64) -> Duration {
        self.failures = 0;
        self.rejected = false;
        self.hold_off(now)
    }

    /// Steps the backoff and makes no attempt start before its delay from `now` has passed.
    fn hold_off(&mut self, now: i64) -> Duration {
        let delay = self.backoff.step();
        let seconds = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
        // Rounds up, so the retry never starts before the delay has passed.
        let rounding = i64::from(delay.subsec_nanos() > 0);
        self.retry_at = now.saturating_add(seconds).saturating_add(rounding);
        delay
    }

    fn record_success(&mut self) {
        self.backoff = Backoff::with_bounds(BACKOFF_START, BACKOFF_MAX);
        self.failures = 0;
        self.retry_at = 0;
        self.rejected = false;
    }
}

impl Syncer {
    /// Attests again once an attempt is due, and returns the time until the next attempt is
    /// due, or `None` for an agent without an evidence attestor.
    pub(crate) async fn reattest_if_due(&mut self) -> Option<Duration> {
        let schedule = self.reattestation.as_ref()?;
        let (not_before, not_after) = self.agent.validity().ok()?;
        let now = unix_now();
        if now < schedule.due_at(not_before, not_after) {
            return Some(until(schedule.due_at(not_before, not_after), now));
        }

        let result = self.reattest().await;
        let now = unix_now();
        let schedule = self.reattestation.as_mut()?;
        match result {
            Ok(_) if schedule.rejected => {
                let delay = schedule.record_success_after_rejection(now);
                tracing::info!(
                    min_next_attempt_in_ms = millis(delay),
                    "the agent attested again after the server rejected its SVID"
                );
            }
            Ok(expires_at) if expires_at > not_after => {
                if schedule.failures > 0 {
                    tracing::info!(
                        failed_attempts = schedule.failures,
                        "re-attestation recovered"
                    );
                }
                schedule.record_success();
            }
            Ok(expires_at) => {
                let delay = schedule.record_failure(now);
                tracing::warn!(
                    attestor = schedule.method.attestor(),
                    previous_expires_at = not_after,
                    expires_at,
                    retry_in_ms = millis(delay),
                    "re-attestation did not extend the agent SVID, because the evidence's \
                     certificates or collateral end no later; attesting again after the delay"
                );
            }
            Err(error) => {
                let delay = schedule.record_failure(now);
                tracing::warn!(
                    %error,
                    attestor = schedule.method.attestor(),
                    attempt = schedule.failures,
                    retry_in_ms = millis(delay),
                    expires_at = not_after,
                    "re-attestation failed; keeping the current agent SVID"
                );
            }
        }
        let (not_before, not_after) = self.agent.validity().ok()?;
        let due_at = self.reattestation.as_ref()?.due_at(not_before, not_after);
        Some(until(due_at, unix_now()))
    }

    /// Attests with a new key and fresh evidence, switches the TLS client identity and the
    /// server connection to the new SVID, and stores it. Returns the new SVID's expiry.
    ///
    /// The server records the new SVID as current before it returns it, so the old SVID stops
    /// working for node API calls at that moment. A failure before that leaves the agent
    /// unchanged.
    async fn reattest(&mut self) -> Result<i64, AgentError> {
        let Some(schedule) = &self.reattestation else {
            return Err(AgentError::Config(
                "re-attestation needs an evidence node attestor".to_owned(),
            ));
        };
        let method = schedule.method.clone();
        let address = self.connection.address();
        let previous_id = self.agent.check()?;

        // The server is authenticated with the current bundle.
        let server = Authorizer::Exact(twid_types::server_id(&self.trust_domain));
        let tls = twid_tls::client_config(self.holder_identity()?, self.trust.clone(), server)?;
        let attested = attest_over(
            &address.host,
            address.port,
            tls,
            &self.trust_domain,
            &method,
        )
        .await?;

        let spiffe_id = attested.check()?;
        self.update_bundle(&Bundle {
            trust_domain: self.trust_domain.name().to_owned(),
            x509_authorities: attested.bundle.clone(),
            ..Bundle::default()
        });
        self.svid_source
            .update(attested.certificates(), attested.private_key_der())?;
        self.agent = state::AgentState {
            key: attested.key,
            chain: attested.chain,
            bundle: self.agent.bundle.clone(),
        };
        self.connection.reconnect()?;
        // A new attestation is newer than every revocation so far, so the server may again
        // sign entries whose SVID was revoked.
        self.revoked_retry.reset();

        if spiffe_id != previous_id {
            // Entries parented to the old ID no longer reach this agent.
            tracing::warn!(
                previous_agent_id = %previous_id,
                agent_id = %spiffe_id,
                "the re-attested agent has a new SPIFFE ID, because its evidence changed"
            );
        }
        if let Err(error) = state::save(&self.data_dir, &self.agent) {
            // After a restart the server rejects the stored SVID (or `state::load` finds it
            // unusable), and the start sequence then attests with fresh evidence.
            tracing::error!(
                %error,
                "failed to store the re-attested agent SVID; the agent will attest again after \
                 a restart"
            );
        }
        let (_, expires_at) = self.agent.validity()?;
        tracing::info!(
            agent_id = %spiffe_id,
            attestor = method.attestor(),
            expires_at,
            "agent re-attested with fresh evidence"
        );
        Ok(expires_at)
    }
}

impl Syncer {
    /// Returns the client identity for the re-attestation connection: the current SVID while
    /// it is valid, which proves to the server that this agent is the holder of its agent ID. An expired
    /// SVID would fail the TLS handshake, so the agent then connects without one.
    fn holder_identity(&self) -> Result<Option<SvidSource>, AgentError> {
        let (_, not_after) = self.agent.validity()?;
        if not_after <= unix_now() {
            return Ok(None);
        }
        // A copy, so the connection keeps presenting this SVID even after the new one is
        // stored in the shared source.
        let source = SvidSource::new(self.agent.certificates(), self.agent.private_key_der())?;
        Ok(Some(source))
    }
}

/// Returns the time from `now` until `at`, both Unix seconds; zero when `at` has passed.
fn until(at: i64, now: i64) -> Duration {
    Duration::from_secs(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use twid_attestation::node::evidence::{CollectError, Collector};

    /// A collector that always fails; the schedule tests never call it.
    #[derive(Debug)]
    struct UnavailableCollector;

    impl Collector for UnavailableCollector {
        fn kind(&self) -> twid_evidence::Kind {
            twid_evidence::Kind::Nitro
        }

        fn collect(&self, _: &[u8; 64]) -> Result<twid_evidence::Envelope, CollectError> {
            Err(CollectError::Unavailable {
                interface: "test".to_owned(),
                reason: "no platform".to_owned(),
            })
        }
    }

    fn schedule() -> Reattestation {
        let collector: Arc<dyn Collector> = Arc::new(UnavailableCollector);
        Reattestation::new(AttestationMethod::Evidence {
            attestor: "nitro".to_owned(),
            collector,
        })
    }

    #[test]
    fn due_at_half_life() {
        let schedule = schedule();
        assert_eq!(schedule.due_at(1_000, 1_020), 1_010);
        assert_eq!(schedule.due_at(1_000, 4_600), 2_800);
    }

    #[test]
    fn failures_back_off_to_five_minutes() {
        let mut schedule = schedule();
        let mut delays = Vec::new();
        for _ in 0..9 {
            delays.push(schedule.record_failure(10_000).as_millis());
        }
        let within = |delay: u128, base: u128| (base * 4 / 5..=base).contains(&delay);
        assert!(within(delays[0], 5_000), "{delays:?}");
        assert!(within(delays[1], 10_000), "{delays:?}");
        assert!(within(delays[5], 160_000), "{delays:?}");
        assert!(within(delays[6], 300_000), "{delays:?}");
        assert!(within(delays[8], 300_000), "{delays:?}");
        assert_eq!(schedule.failures, 9);
        // The retry time rather than the half-life decides once it is later.
        assert!(schedule.due_at(1_000, 1_020) >= 10_000 + 240);
        assert!(schedule.due_at(1_000, 1_020) <= 10_000 + 300);
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut schedule = schedule();
        schedule.record_failure(10_000);
        schedule.record_failure(10_000);
        schedule.record_success();
        assert_eq!(schedule.failures, 0);
        assert_eq!(schedule.due_at(1_000, 1_020), 1_010);
        let delay = schedule.record_failure(20_000).as_millis();
        assert!((4_000..=5_000).contains(&delay), "{delay}");
    }

    #[test]
    fn rejection_makes_attempt_due() {
        let mut schedule = schedule();
        schedule.mark_rejected();
        assert_eq!(schedule.due_at(1_000, 4_600), 0);
        schedule.record_failure(2_000);
        assert!((2_004..=2_005).contains(&schedule.due_at(1_000, 4_600)));
        schedule.record_success();
        assert_eq!(schedule.due_at(1_000, 4_600), 2_800);
    }

    #[test]
    fn repeated_rejections_back_off() {
        let mut schedule = schedule();
        schedule.mark_rejected();
        schedule.record_success_after_rejection(2_000);
        assert_eq!(schedule.failures, 0);
        // The half-life decides again, but not before the delay has passed.
        assert_eq!(schedule.due_at(1_000, 4_600), 2_800);
        assert!((2_004..=2_005).contains(&schedule.due_at(1_000, 1_020)));
        schedule.mark_rejected();
        schedule.record_success_after_rejection(3_000);
        assert!((3_008..=3_010).contains(&schedule.due_at(1_000, 1_020)));
    }

    #[test]
    fn until_saturates_at_zero() {
        assert_eq!(until(110, 100), Duration::from_secs(10));
        assert_eq!(until(90, 100), Duration::ZERO);
    }
}
