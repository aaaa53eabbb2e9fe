//! Manual rotation of the trust domain's authorities with SPIRE's `localauthority` verbs:
//! prepare, activate, taint and revoke, for X.509 CAs and JWT keys alike.
//!
//! The rules, as in SPIRE: only the prepared authority can be activated, only an old one can be
//! tainted, and only a tainted one can be revoked. A tainted authority stays in the bundle, and
//! Sync lists it so that agents replace what it signed. Revoking removes it from every bundle
//! the server serves and deletes its key file.
//!
//! Under `UpstreamAuthority "disk"` the X.509 authorities are intermediates and the bundle
//! contains the upstream roots instead. Tainting one still makes agents replace what it
//! signed, because agents match the leaf's authority key identifier. Revoking one deletes its
//! key and stops listing it, but the bundle stays the same, so the SVIDs it signed verify until
//! they expire. The response's notice states that. SPIRE rejects both steps while an upstream
//! authority is configured and offers `upstreamauthority taint|revoke` for the upstream's keys.
//! twid has no such command, because the upstream roots change only when the configured files
//! change.
//!
//! Each server replica on a shared database has its own authorities, and these calls act on
//! the replica that receives them, as in SPIRE; the other replicas publish the result after
//! their next reload of the replicas' authorities.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::Status;
use twid_proto::admin::{
    ListLocalAuthoritiesRequest, ListLocalAuthoritiesResponse, LocalAuthority, LocalAuthorityKind,
    LocalAuthorityRequest, LocalAuthorityResponse, PrepareLocalAuthorityRequest, UpstreamAuthority,
};

use crate::ca::{CaManager, JwtSlot, SlotState, X509Slot};
use crate::{ServerError, Shared};

/// The kind of authority a step applies to, named as the CLI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    X509,
    Jwt,
}

impl Kind {
    fn from_pb(value: i32) -> Result<Self, Status> {
        match LocalAuthorityKind::try_from(value) {
            Ok(LocalAuthorityKind::X509) => Ok(Self::X509),
            Ok(LocalAuthorityKind::Jwt) => Ok(Self::Jwt),
            _ => Err(Status::invalid_argument(format!(
                "invalid authority kind {value}: set it to X509 or JWT"
            ))),
        }
    }

    /// Returns the noun used in messages.
    fn noun(self) -> &'static str {
        match self {
            Self::X509 => "X.509 authority",
            Self::Jwt => "JWT authority",
        }
    }

    /// Returns the CLI word for the kind.
    fn command(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }
}

/// A rejected manual step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl From<StepError> for Status {
    fn from(error: StepError) -> Self {
        match error {
            StepError::InvalidArgument(message) => Status::invalid_argument(message),
            StepError::NotFound(message) => Status::not_found(message),
            StepError::FailedPrecondition(message) => Status::failed_precondition(message),
            StepError::Server(error) => {
                tracing::error!(
                    error = %crate::tasks::error_chain(&error),
                    "local authority step failed"
                );
                Status::internal("internal server error; see the server log")
            }
        }
    }
}

/// The parts of a slot that the state machine reads and changes.
pub(crate) trait Slot: Clone {
    fn authority_id(&self) -> String;
    fn state(&self) -> SlotState;
    fn set_state(&mut self, state: SlotState);
    fn tainted(&self) -> bool;
    fn set_tainted(&mut self);
    fn expires_at(&self) -> SystemTime;
}

impl Slot for X509Slot {
    fn authority_id(&self) -> String {
        X509Slot::authority_id(self)
    }
    fn state(&self) -> SlotState {
        self.state
    }
    fn set_state(&mut self, state: SlotState) {
        self.state = state;
    }
    fn tainted(&self) -> bool {
        self.tainted
    }
    fn set_tainted(&mut self) {
        self.tainted = true;
    }
    fn expires_at(&self) -> SystemTime {
        self.authority.not_after()
    }
}

impl Slot for JwtSlot {
    fn authority_id(&self) -> String {
        self.key.key_id().to_owned()
    }
    fn state(&self) -> SlotState {
        self.state
    }
    fn set_state(&mut self, state: SlotState) {
        self.state = state;
    }
    fn tainted(&self) -> bool {
        self.tainted
    }
    fn set_tainted(&mut self) {
        self.tainted = true;
    }
    fn expires_at(&self) -> SystemTime {
        self.key.not_after()
    }
}

/// Adds `new` as the prepared authority and returns the prepared authority it replaces, which
/// leaves the bundle (it has signed nothing).
pub(crate) fn prepare<S: Slot>(slots: &mut Vec<S>, new: S) -> Option<S> {
    let replaced = slots
        .iter()
        .position(|slot| slot.state() == SlotState::Prepared)
        .map(|index| slots.remove(index));
    slots.push(new);
    replaced
}

/// Makes the prepared authority `id` active and the active one old.
pub(crate) fn activate<S: Slot>(slots: &mut [S], kind: Kind, id: &str) -> Result<S, StepError> {
    let index = find(slots, kind, id)?;
    match slots[index].state() {
        SlotState::Prepared => {}
        SlotState::Active => {
            return Err(StepError::FailedPrecondition(format!(
                "{} {id} is already active",
                kind.noun()
            )));
        }
        SlotState::Old => {
            return Err(StepError::FailedPrecondition(format!(
                "{} {id} is old and cannot be activated again; run `twid localauthority {} \
                 prepare` and activate the new prepared authority",
                kind.noun(),
                kind.command()
            )));
        }
    }
    for slot in slots.iter_mut() {
        if slot.state() == SlotState::Active {
            slot.set_state(SlotState::Old);
        }
    }
    slots[index].set_state(SlotState::Active);
    Ok(slots[index].clone())
}

/// Marks the old authority `id` tainted.
pub(crate) fn taint<S: Slot>(slots: &mut [S], kind: Kind, id: &str) -> Result<S, StepError> {
    let index = find(slots, kind, id)?;
    let noun = kind.noun();
    match slots[index].state() {
        SlotState::Old => {}
        SlotState::Active => {
            return Err(StepError::FailedPrecondition(format!(
                "{noun} {id} is active; activate the prepared authority first, then taint the \
                 old one"
            )));
        }
        SlotState::Prepared => {
            return Err(StepError::FailedPrecondition(format!(
                "{noun} {id} is prepared and has signed nothing; only the old authority can be \
                 tainted"
            )));
        }
    }
    if slots[index].tainted() {
        return Err(StepError::FailedPrecondition(format!(
            "{noun} {id} is already tainted; revoke it once agents have replaced what it signed"
        )));
    }
    slots[index].set_tainted();
    Ok(slots[index].clone())
}

/// Removes the tainted authority `id` and returns it.
pub(crate) fn revoke<S: Slot>(slots: &mut Vec<S>, kind: Kind, id: &str) -> Result<S, StepError> {
    let index = find(slots, kind, id)?;
    if !slots[index].tainted() {
        return Err(StepError::FailedPrecondition(format!(
            "{} {id} is not tainted; taint it first and revoke it once agents have replaced \
             what it signed",
            kind.noun()
        )));
    }
    Ok(slots.remove(index))
}

fn find<S: Slot>(slots: &[S], kind: Kind, id: &str) -> Result<usize, StepError> {
    if id.is_empty() {
        return Err(StepError::InvalidArgument(format!(
            "missing authority ID: pass --authority-id with an ID from `twid localauthority {} \
             show`",
            kind.command()
        )));
    }
    slots
        .iter()
        .position(|slot| slot.authority_id().eq_ignore_ascii_case(id))
        .ok_or_else(|| {
            StepError::NotFound(format!(
                "{} {id} not found; `twid localauthority {} show` lists the authority IDs",
                kind.noun(),
                kind.command()
            ))
        })
}

fn to_pb<S: Slot>(slot: &S) -> LocalAuthority {
    let state = match slot.state() {
        SlotState::Prepared => "prepared",
        SlotState::Active => "active",
        SlotState::Old => "old",
    };
    LocalAuthority {
        authority_id: slot.authority_id(),
        state: state.to_owned(),
        expires_at: crate::convert::unix_seconds(slot.expires_at()),
        tainted: slot.tainted(),
    }
}

/// Serves `ListLocalAuthorities`.
pub(crate) fn list(
    shared: &Shared,
    request: &ListLocalAuthoritiesRequest,
) -> Result<ListLocalAuthoritiesResponse, Status> {
    let snapshot = shared.ca.snapshot();
    let kind = Kind::from_pb(request.kind)?;
    let authorities = match kind {
        Kind::X509 => snapshot.x509.iter().map(to_pb).collect(),
        Kind::Jwt => snapshot.jwt.iter().map(to_pb).collect(),
    };
    let upstream = match kind {
        Kind::X509 => upstream_to_pb(shared),
        Kind::Jwt => None,
    };
    Ok(ListLocalAuthoritiesResponse {
        authorities,
        instance_id: shared.ca.instance_id().to_owned(),
        upstream,
    })
}

/// Describes the upstream CA that signed the most recent X.509 authority.
fn upstream_to_pb(shared: &Shared) -> Option<UpstreamAuthority> {
    use x509_parser::prelude::FromDer as _;
    let upstream = shared.ca.upstream()?;
    let signer = &upstream.signer;
    let subject = x509_parser::certificate::X509Certificate::from_der(signer.cert_der())
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_default();
    Some(UpstreamAuthority {
        authority_id: hex::encode(signer.key_id()),
        subject,
        expires_at: crate::convert::unix_seconds(signer.not_after()),
        roots: u32::try_from(upstream.chain.roots.len()).unwrap_or(u32::MAX),
        cert_file_path: shared
            .ca
            .upstream_config()
            .map(|config| config.cert_file_path.display().to_string())
            .unwrap_or_default(),
    })
}

/// Serves `PrepareLocalAuthority`.
pub(crate) async fn prepare_request(
    shared: &Arc<Shared>,
    request: &PrepareLocalAuthorityRequest,
) -> Result<LocalAuthorityResponse, Status> {
    let kind = Kind::from_pb(request.kind)?;
    let now = SystemTime::now();
    let authority = shared
        .ca
        .apply_manual(|ca: &CaManager, x509, jwt| -> Result<_, StepError> {
            Ok(match kind {
                Kind::X509 => {
                    let slot = ca.create_x509_slot(now, SlotState::Prepared)?;
                    let created = to_pb(&slot);
                    // apply_manual deletes a replaced authority's key file after the commit.
                    prepare(x509, slot);
                    created
                }
                Kind::Jwt => {
                    let slot = ca.create_jwt_slot(now, SlotState::Prepared)?;
                    let created = to_pb(&slot);
                    prepare(jwt, slot);
                    created
                }
            })
        })
        .await?;
    finish(shared, kind, "prepared", &authority, String::new()).await
}

/// The step that a [`LocalAuthorityRequest`] applies.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    Activate,
    Taint,
    Revoke,
}

/// Serves `ActivateLocalAuthority`, `TaintLocalAuthority` and `RevokeLocalAuthority`.
pub(crate) async fn step_request(
    shared: &Arc<Shared>,
    step: Step,
    request: &LocalAuthorityRequest,
) -> Result<LocalAuthorityResponse, Status> {
    let kind = Kind::from_pb(request.kind)?;
    let id = request.authority_id.trim();
    // An X.509 authority created before the upstream was configured is self-signed and in
    // the bundle itself, so the upstream notices do not apply to it.
    let signed_by_upstream = kind == Kind::X509
        && shared.ca.upstream().is_some()
        && shared
            .ca
            .snapshot()
            .x509
            .iter()
            .find(|slot| slot.authority_id() == id)
            .is_some_and(|slot| !is_self_issued(slot.authority.cert_der()));
    let authority = shared
        .ca
        .apply_manual(|_: &CaManager, x509, jwt| -> Result<_, StepError> {
            Ok(match (kind, step) {
                (Kind::X509, Step::Activate) => to_pb(&activate(x509, kind, id)?),
                (Kind::X509, Step::Taint) => to_pb(&taint(x509, kind, id)?),
                // apply_manual deletes a revoked authority's key file after the commit.
                (Kind::X509, Step::Revoke) => to_pb(&revoke(x509, kind, id)?),
                (Kind::Jwt, Step::Activate) => to_pb(&activate(jwt, kind, id)?),
                (Kind::Jwt, Step::Taint) => to_pb(&taint(jwt, kind, id)?),
                (Kind::Jwt, Step::Revoke) => to_pb(&revoke(jwt, kind, id)?),
            })
        })
        .await?;
    let verb = match step {
        Step::Activate => "activated",
        Step::Taint => "tainted",
        Step::Revoke => "revoked",
    };
    let notice = match (kind, step) {
        (Kind::X509, Step::Revoke) if signed_by_upstream => REVOKE_UNDER_UPSTREAM,
        (Kind::X509, Step::Taint) if signed_by_upstream => TAINT_UNDER_UPSTREAM,
        _ => "",
    };
    finish(shared, kind, verb, &authority, notice.to_owned()).await
}

/// Returns whether the certificate's issuer is its subject, as for a self-signed root.
fn is_self_issued(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, cert)| cert.issuer().as_raw() == cert.subject().as_raw())
}

/// The notice of a revoked X.509 authority under an upstream CA.
pub(crate) const REVOKE_UNDER_UPSTREAM: &str = "The trust bundle is unchanged: it contains the \
     upstream roots, not this intermediate, so X.509-SVIDs that it signed stay valid until they \
     expire. The server deleted the intermediate's key and no longer lists it as tainted. To \
     distrust it before then, replace the upstream CA and its roots.";

/// The notice of a tainted X.509 authority under an upstream CA.
pub(crate) const TAINT_UNDER_UPSTREAM: &str = "Agents replace the X.509-SVIDs that this \
     intermediate signed. The trust bundle contains the upstream roots and stays the same, also \
     after a revoke.";

/// Publishes the changed bundle, re-issues the server SVID when the active authority changed,
/// and sends agents a sync hint.
async fn finish(
    shared: &Arc<Shared>,
    kind: Kind,
    verb: &'static str,
    authority: &LocalAuthority,
    notice: String,
) -> Result<LocalAuthorityResponse, Status> {
    tracing::info!(
        kind = kind.command(),
        authority_id = %authority.authority_id,
        "local authority {verb}"
    );
    let published = async {
        crate::tasks::publish_bundle(shared).await?;
        shared
            .identity
            .refresh(&shared.ca.snapshot(), SystemTime::now())
    }
    .await;
    if let Err(error) = published {
        // The step is stored, so the rotation task publishes the bundle on its next change.
        // Until then agents see the previous bundle.
        return Err(StepError::Server(error).into());
    }
    shared.hints.notify("bundle");
    Ok(LocalAuthorityResponse {
        authority: Some(authority.clone()),
        notice,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;

    #[derive(Clone, Debug)]
    struct TestSlot {
        id: &'static str,
        state: SlotState,
        tainted: bool,
    }

    impl Slot for TestSlot {
        fn authority_id(&self) -> String {
            self.id.to_owned()
        }
        fn state(&self) -> SlotState {
            self.state
        }
        fn set_state(&mut self, state: SlotState) {
            self.state = state;
        }
        fn tainted(&self) -> bool {
            self.tainted
        }
        fn set_tainted(&mut self) {
            self.tainted = true;
        }
        fn expires_at(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(100)
        }
    }

    fn slot(id: &'static str, state: SlotState) -> TestSlot {
        TestSlot {
            id,
            state,
            tainted: false,
        }
    }

    fn states(slots: &[TestSlot]) -> Vec<(&'static str, SlotState, bool)> {
        slots.iter().map(|s| (s.id, s.state, s.tainted)).collect()
    }

    fn status(error: StepError) -> Status {
        error.into()
    }

    #[test]
    fn full_cycle_reaches_revoke() {
        let mut slots = vec![slot("a1", SlotState::Active)];
        assert!(prepare(&mut slots, slot("b2", SlotState::Prepared)).is_none());
        activate(&mut slots, Kind::X509, "B2").expect("activate");
        assert_eq!(
            states(&slots),
            [
                ("a1", SlotState::Old, false),
                ("b2", SlotState::Active, false)
            ]
        );
        taint(&mut slots, Kind::X509, "a1").expect("taint");
        assert_eq!(states(&slots)[0], ("a1", SlotState::Old, true));
        let removed = revoke(&mut slots, Kind::X509, "a1").expect("revoke");
        assert_eq!(removed.id, "a1");
        assert_eq!(states(&slots), [("b2", SlotState::Active, false)]);
    }

    #[test]
    fn prepare_replaces_prepared() {
        let mut slots = vec![
            slot("a1", SlotState::Active),
            slot("b2", SlotState::Prepared),
        ];
        let replaced = prepare(&mut slots, slot("c3", SlotState::Prepared));
        assert_eq!(replaced.map(|s| s.id), Some("b2"));
        assert_eq!(
            states(&slots),
            [
                ("a1", SlotState::Active, false),
                ("c3", SlotState::Prepared, false)
            ]
        );
    }

    #[test]
    fn activate_rejects_active_old_and_unknown() {
        let mut slots = vec![slot("a1", SlotState::Old), slot("b2", SlotState::Active)];
        let active = status(activate(&mut slots, Kind::X509, "b2").unwrap_err());
        assert_eq!(active.code(), Code::FailedPrecondition);
        assert_eq!(active.message(), "X.509 authority b2 is already active");

        let old = status(activate(&mut slots, Kind::Jwt, "a1").unwrap_err());
        assert_eq!(old.code(), Code::FailedPrecondition);
        assert!(
            old.message()
                .contains("JWT authority a1 is old and cannot be activated again"),
            "{}",
            old.message()
        );
        assert!(
            old.message().contains("twid localauthority jwt prepare"),
            "{}",
            old.message()
        );

        let unknown = status(activate(&mut slots, Kind::X509, "ff").unwrap_err());
        assert_eq!(unknown.code(), Code::NotFound);
        assert!(
            unknown
                .message()
                .starts_with("X.509 authority ff not found"),
            "{}",
            unknown.message()
        );

        let empty = status(activate(&mut slots, Kind::X509, "").unwrap_err());
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert!(
            empty.message().contains("--authority-id"),
            "{}",
            empty.message()
        );
        assert_eq!(
            states(&slots),
            [
                ("a1", SlotState::Old, false),
                ("b2", SlotState::Active, false)
            ]
        );
    }

    #[test]
    fn taint_rejects_active_prepared_and_tainted() {
        let mut slots = vec![
            slot("a1", SlotState::Old),
            slot("b2", SlotState::Active),
            slot("c3", SlotState::Prepared),
        ];
        let active = status(taint(&mut slots, Kind::X509, "b2").unwrap_err());
        assert_eq!(active.code(), Code::FailedPrecondition);
        assert_eq!(
            active.message(),
            "X.509 authority b2 is active; activate the prepared authority first, then taint \
             the old one"
        );

        let prepared = status(taint(&mut slots, Kind::X509, "c3").unwrap_err());
        assert_eq!(prepared.code(), Code::FailedPrecondition);
        assert!(
            prepared.message().contains("only the old authority"),
            "{}",
            prepared.message()
        );

        taint(&mut slots, Kind::X509, "a1").expect("taint old");
        let again = status(taint(&mut slots, Kind::X509, "a1").unwrap_err());
        assert_eq!(again.code(), Code::FailedPrecondition);
        assert!(
            again.message().contains("already tainted"),
            "{}",
            again.message()
        );

        let unknown = status(taint(&mut slots, Kind::Jwt, "zz").unwrap_err());
        assert_eq!(unknown.code(), Code::NotFound);
    }

    #[test]
    fn revoke_rejects_untainted() {
        let mut slots = vec![
            slot("a1", SlotState::Old),
            slot("b2", SlotState::Active),
            slot("c3", SlotState::Prepared),
        ];
        for id in ["a1", "b2", "c3"] {
            let error = status(revoke(&mut slots, Kind::Jwt, id).unwrap_err());
            assert_eq!(error.code(), Code::FailedPrecondition, "{id}");
            assert!(
                error.message().contains("is not tainted; taint it first"),
                "{id}: {}",
                error.message()
            );
        }
        assert_eq!(slots.len(), 3);

        let unknown = status(revoke(&mut slots, Kind::Jwt, "zz").unwrap_err());
        assert_eq!(unknown.code(), Code::NotFound);
        let empty = status(revoke(&mut slots, Kind::Jwt, " ").unwrap_err());
        assert_eq!(empty.code(), Code::NotFound);
    }

    #[test]
    fn kind_rejects_unspecified() {
        let error = Kind::from_pb(0).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(Kind::from_pb(1).unwrap(), Kind::X509);
        assert_eq!(Kind::from_pb(2).unwrap(), Kind::Jwt);
        assert!(Kind::from_pb(7).is_err());
    }
}
