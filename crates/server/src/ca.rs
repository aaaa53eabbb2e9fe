//! The server's CA manager: the X.509 authorities and JWT keys of the trust domain, their
//! rotation, their persistence, and the bundle built from them.
//!
//! Each authority is in one of three states. A *prepared* authority is published in the bundle
//! but signs nothing yet. The *active* one signs. An *old* one signs nothing but stays in the
//! bundle until it expires. The schedule (prepare at half the active authority's lifetime,
//! activate at five sixths) means that agents have fetched a new key long before anything they
//! receive is signed with it, and that every SVID still valid verifies against the bundle.
//!
//! Operators can also step through the same states by hand (`twid localauthority`, see
//! [`crate::localauthority`]): prepare, activate, taint an old authority so that agents replace
//! what it signed, and revoke a tainted one, which removes it from the bundle. The schedule
//! only adds and activates authorities, so it never undoes a manual step.
//!
//! Private keys are PEM files (0600) in the key directory; the datastore keeps only the
//! certificates, key IDs, states and taint marks (`ca_state` rows `x509_authorities` and
//! `jwt_keys`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use twid_ca::{CaSubject, JwtKey, KeyType, PrivateKey, X509Authority};
use twid_datastore::Datastore;
use twid_spiffe::TrustDomain;

use crate::ServerError;

const X509_STATE_KEY: &str = "x509_authorities";
const JWT_STATE_KEY: &str = "jwt_keys";

/// Lifecycle state of an authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SlotState {
    Prepared,
    Active,
    Old,
}

/// An X.509 authority and its state.
#[derive(Clone)]
pub(crate) struct X509Slot {
    /// The `<id>` in the key file name `x509-ca-<id>.pem`. Operators see the subject key
    /// identifier instead.
    pub(crate) id: String,
    pub(crate) authority: Arc<X509Authority>,
    pub(crate) state: SlotState,
    /// Set by an operator on an old authority: agents replace every SVID chained to it.
    pub(crate) tainted: bool,
}

impl X509Slot {
    /// Returns the authority ID that operators and agents use: the subject key identifier in
    /// lowercase hex.
    pub(crate) fn authority_id(&self) -> String {
        hex::encode(self.authority.key_id())
    }
}

/// A JWT signing key and its state.
#[derive(Clone)]
pub(crate) struct JwtSlot {
    pub(crate) key: Arc<JwtKey>,
    pub(crate) state: SlotState,
    /// Set by an operator on an old key: agents drop every cached JWT-SVID it signed.
    pub(crate) tainted: bool,
}

/// The authorities at one moment; replaced as a whole on every change.
pub(crate) struct CaSnapshot {
    pub(crate) x509: Vec<X509Slot>,
    pub(crate) jwt: Vec<JwtSlot>,
    /// Increments whenever the set of published authorities changes.
    pub(crate) generation: u64,
}

impl CaSnapshot {
    /// Returns the authority that signs X.509-SVIDs now.
    pub(crate) fn active_x509(&self) -> Option<&Arc<X509Authority>> {
        self.x509
            .iter()
            .find(|slot| slot.state == SlotState::Active)
            .map(|slot| &slot.authority)
    }

    /// Returns the key that signs JWT-SVIDs now.
    pub(crate) fn active_jwt(&self) -> Option<&Arc<JwtKey>> {
        self.jwt
            .iter()
            .find(|slot| slot.state == SlotState::Active)
            .map(|slot| &slot.key)
    }

    /// Returns every published X.509 authority certificate, oldest first.
    pub(crate) fn x509_authorities(&self) -> Vec<CertificateDer<'static>> {
        self.x509
            .iter()
            .map(|slot| slot.authority.cert_der().clone())
            .collect()
    }

    /// Returns the subject key identifiers (lowercase hex) of the tainted X.509 authorities.
    pub(crate) fn tainted_x509_ids(&self) -> Vec<String> {
        self.x509
            .iter()
            .filter(|slot| slot.tainted)
            .map(X509Slot::authority_id)
            .collect()
    }

    /// Returns the key IDs of the tainted JWT keys.
    pub(crate) fn tainted_jwt_ids(&self) -> Vec<String> {
        self.jwt
            .iter()
            .filter(|slot| slot.tainted)
            .map(|slot| slot.key.key_id().to_owned())
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredX509 {
    id: String,
    cert_der: String,
    state: SlotState,
    /// Absent in rows written before tainting existed.
    #[serde(default)]
    tainted: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredJwt {
    key_id: String,
    not_after: i64,
    state: SlotState,
    /// Absent in rows written before tainting existed.
    #[serde(default)]
    tainted: bool,
}

/// Settings of the CA manager, taken from the server configuration.
#[derive(Clone, Debug)]
pub(crate) struct CaSettings {
    pub(crate) trust_domain: TrustDomain,
    pub(crate) key_type: KeyType,
    pub(crate) jwt_key_type: KeyType,
    pub(crate) ca_ttl: Duration,
    pub(crate) subject: CaSubject,
    /// Directory for private key files; `None` keeps keys in memory only.
    pub(crate) keys_dir: Option<PathBuf>,
}

/// Owns the trust domain's authorities.
pub(crate) struct CaManager {
    settings: CaSettings,
    datastore: Datastore,
    snapshot: ArcSwap<CaSnapshot>,
    /// Serializes rotation steps; readers use `snapshot` without locking.
    rotate_lock: Mutex<()>,
}

impl CaManager {
    /// Loads the persisted authorities, or creates the first ones.
    pub(crate) async fn load_or_create(
        settings: CaSettings,
        datastore: Datastore,
        now: SystemTime,
    ) -> Result<Self, ServerError> {
        if let Some(dir) = &settings.keys_dir {
            create_private_dir(dir)?;
        }
        let x509 = load_x509(&settings, &datastore).await?;
        let jwt = load_jwt(&settings, &datastore).await?;
        let manager = Self {
            settings,
            datastore,
            snapshot: ArcSwap::from_pointee(CaSnapshot {
                x509,
                jwt,
                generation: 0,
            }),
            rotate_lock: Mutex::new(()),
        };
        manager.rotate(now).await?;
        record_active_expiry(&manager.snapshot());
        Ok(manager)
    }

    /// Returns the current authorities.
    pub(crate) fn snapshot(&self) -> Arc<CaSnapshot> {
        self.snapshot.load_full()
    }

    pub(crate) fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }

    /// Applies every due rotation step at `now` and returns whether anything changed.
    pub(crate) async fn rotate(&self, now: SystemTime) -> Result<bool, ServerError> {
        let _guard = self.rotate_lock.lock().await;
        let current = self.snapshot.load_full();
        let x509 = self.next_x509_slots(&current, now)?;
        let jwt = self.next_jwt_slots(&current, now)?;
        let changed = !same_x509(&current.x509, &x509) || !same_jwt(&current.jwt, &jwt);
        if !changed {
            return Ok(false);
        }
        self.commit(&current, x509, jwt).await?;
        metrics::counter!(twid_telemetry::names::CA_ROTATIONS_TOTAL).increment(1);
        Ok(true)
    }

    /// Applies an operator's step to a copy of the current authorities and commits the
    /// result. `step` receives the X.509 and JWT slots and may change either list. Nothing is
    /// stored when `step` fails.
    pub(crate) async fn apply_manual<T, E>(
        &self,
        step: impl FnOnce(&Self, &mut Vec<X509Slot>, &mut Vec<JwtSlot>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<ServerError>,
    {
        let _guard = self.rotate_lock.lock().await;
        let current = self.snapshot.load_full();
        let mut x509 = current.x509.clone();
        let mut jwt = current.jwt.clone();
        let output = step(self, &mut x509, &mut jwt)?;
        self.commit(&current, x509, jwt).await?;
        Ok(output)
    }

    /// Persists the new slots, then publishes them as the next snapshot. Callers hold
    /// `rotate_lock`.
    async fn commit(
        &self,
        current: &CaSnapshot,
        x509: Vec<X509Slot>,
        jwt: Vec<JwtSlot>,
    ) -> Result<(), ServerError> {
        self.persist(&x509, &jwt).await?;
        log_transitions(current, &x509, &jwt);
        self.snapshot.store(Arc::new(CaSnapshot {
            x509,
            jwt,
            generation: current.generation + 1,
        }));
        record_active_expiry(&self.snapshot());
        Ok(())
    }

    /// Creates a new X.509 authority in `state`, with its key file, for a manual prepare.
    pub(crate) fn create_x509_slot(
        &self,
        now: SystemTime,
        state: SlotState,
    ) -> Result<X509Slot, ServerError> {
        self.new_x509_slot(now, state)
    }

    /// Creates a new JWT key in `state`, with its key file, for a manual prepare.
    pub(crate) fn create_jwt_slot(
        &self,
        now: SystemTime,
        state: SlotState,
    ) -> Result<JwtSlot, ServerError> {
        self.new_jwt_slot(now, state)
    }

    /// Deletes the private key file of an X.509 authority that left the bundle. A failure is
    /// logged, because the authority is already gone from the stored state.
    pub(crate) fn remove_x509_key_file(&self, slot: &X509Slot) {
        if let Some(dir) = &self.settings.keys_dir {
            remove_key_file(&dir.join(format!("x509-ca-{}.pem", slot.id)));
        }
    }

    /// Deletes the private key file of a JWT key that left the bundle, like
    /// [`Self::remove_x509_key_file`].
    pub(crate) fn remove_jwt_key_file(&self, slot: &JwtSlot) {
        if let Some(dir) = &self.settings.keys_dir {
            remove_key_file(&dir.join(format!("jwt-{}.pem", slot.key.key_id())));
        }
    }

    fn next_x509_slots(
        &self,
        current: &CaSnapshot,
        now: SystemTime,
    ) -> Result<Vec<X509Slot>, ServerError> {
        let mut slots: Vec<X509Slot> = current
            .x509
            .iter()
            .filter(|slot| slot.authority.not_after() > now)
            .cloned()
            .collect();
        let active = slots
            .iter()
            .position(|slot| slot.state == SlotState::Active);
        let prepared = slots
            .iter()
            .position(|slot| slot.state == SlotState::Prepared);
        match (active, prepared) {
            (None, Some(next)) => slots[next].state = SlotState::Active,
            (None, None) => slots.push(self.new_x509_slot(now, SlotState::Active)?),
            (Some(active), prepared) => {
                let authority = &slots[active].authority;
                let life = lifetime_fraction(authority.not_before(), authority.not_after(), now);
                if prepared.is_none() && life >= 0.5 {
                    slots.push(self.new_x509_slot(now, SlotState::Prepared)?);
                } else if let Some(next) = prepared.filter(|_| life >= 5.0 / 6.0) {
                    slots[active].state = SlotState::Old;
                    slots[next].state = SlotState::Active;
                }
            }
        }
        Ok(slots)
    }

    fn next_jwt_slots(
        &self,
        current: &CaSnapshot,
        now: SystemTime,
    ) -> Result<Vec<JwtSlot>, ServerError> {
        let mut slots: Vec<JwtSlot> = current
            .jwt
            .iter()
            .filter(|slot| slot.key.not_after() > now)
            .cloned()
            .collect();
        let active = slots
            .iter()
            .position(|slot| slot.state == SlotState::Active);
        let prepared = slots
            .iter()
            .position(|slot| slot.state == SlotState::Prepared);
        match (active, prepared) {
            (None, Some(next)) => slots[next].state = SlotState::Active,
            (None, None) => slots.push(self.new_jwt_slot(now, SlotState::Active)?),
            (Some(active), prepared) => {
                let key = &slots[active].key;
                let not_before = key.not_after() - self.settings.ca_ttl;
                let life = lifetime_fraction(not_before, key.not_after(), now);
                if prepared.is_none() && life >= 0.5 {
                    slots.push(self.new_jwt_slot(now, SlotState::Prepared)?);
                } else if let Some(next) = prepared.filter(|_| life >= 5.0 / 6.0) {
                    slots[active].state = SlotState::Old;
                    slots[next].state = SlotState::Active;
                }
            }
        }
        Ok(slots)
    }

    fn new_x509_slot(&self, now: SystemTime, state: SlotState) -> Result<X509Slot, ServerError> {
        let key = PrivateKey::generate(self.settings.key_type)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Some(dir) = &self.settings.keys_dir {
            key.write_pem_file(&dir.join(format!("x509-ca-{id}.pem")))?;
        }
        let authority = X509Authority::self_signed(
            &self.settings.trust_domain,
            key,
            &self.settings.subject,
            now,
            self.settings.ca_ttl,
            None,
        )?;
        Ok(X509Slot {
            id,
            authority: Arc::new(authority),
            state,
            tainted: false,
        })
    }

    fn new_jwt_slot(&self, now: SystemTime, state: SlotState) -> Result<JwtSlot, ServerError> {
        let key = JwtKey::generate(self.settings.jwt_key_type, now, self.settings.ca_ttl)?;
        if let Some(dir) = &self.settings.keys_dir {
            key.private_key()
                .write_pem_file(&dir.join(format!("jwt-{}.pem", key.key_id())))?;
        }
        Ok(JwtSlot {
            key: Arc::new(key),
            state,
            tainted: false,
        })
    }

    async fn persist(&self, x509: &[X509Slot], jwt: &[JwtSlot]) -> Result<(), ServerError> {
        if self.settings.keys_dir.is_none() {
            return Ok(());
        }
        let stored_x509: Vec<StoredX509> = x509
            .iter()
            .map(|slot| StoredX509 {
                id: slot.id.clone(),
                cert_der: BASE64.encode(slot.authority.cert_der()),
                state: slot.state,
                tainted: slot.tainted,
            })
            .collect();
        let stored_jwt: Vec<StoredJwt> = jwt
            .iter()
            .map(|slot| StoredJwt {
                key_id: slot.key.key_id().to_owned(),
                not_after: crate::convert::unix_seconds(slot.key.not_after()),
                state: slot.state,
                tainted: slot.tainted,
            })
            .collect();
        let x509_json = serde_json::to_vec(&stored_x509).map_err(ServerError::encode)?;
        let jwt_json = serde_json::to_vec(&stored_jwt).map_err(ServerError::encode)?;
        self.datastore
            .put_ca_state(X509_STATE_KEY, &x509_json)
            .await?;
        self.datastore
            .put_ca_state(JWT_STATE_KEY, &jwt_json)
            .await?;
        Ok(())
    }
}

/// Returns how far `now` is through `[not_before, not_after]`, from 0.0 to 1.0.
/// Publishes when the active X.509 authority expires, so that alerts can fire if rotation
/// stalls.
fn record_active_expiry(snapshot: &CaSnapshot) {
    if let Some(authority) = snapshot.active_x509() {
        let expires_at = crate::convert::unix_seconds(authority.not_after());
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(twid_telemetry::names::CA_AUTHORITY_EXPIRES_AT_SECONDS)
            .set(expires_at as f64);
    }
}

pub(crate) fn lifetime_fraction(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> f64 {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or_default()
        .as_secs_f64();
    let elapsed = now
        .duration_since(not_before)
        .unwrap_or_default()
        .as_secs_f64();
    if total <= 0.0 { 1.0 } else { elapsed / total }
}

fn same_x509(a: &[X509Slot], b: &[X509Slot]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.id == y.id && x.state == y.state && x.tainted == y.tainted)
}

fn same_jwt(a: &[JwtSlot], b: &[JwtSlot]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.key.key_id() == y.key.key_id() && x.state == y.state && x.tainted == y.tainted
        })
}

fn log_transitions(old: &CaSnapshot, x509: &[X509Slot], jwt: &[JwtSlot]) {
    for slot in x509 {
        let before = old
            .x509
            .iter()
            .find(|o| o.id == slot.id)
            .map(|o| (o.state, o.tainted));
        if before != Some((slot.state, slot.tainted)) {
            tracing::info!(
                authority_id = %slot.authority_id(),
                key_file_id = %slot.id,
                state = ?slot.state,
                tainted = slot.tainted,
                not_after = crate::convert::unix_seconds(slot.authority.not_after()),
                "X.509 authority changed state"
            );
        }
    }
    for slot in jwt {
        let before = old
            .jwt
            .iter()
            .find(|o| o.key.key_id() == slot.key.key_id())
            .map(|o| (o.state, o.tainted));
        if before != Some((slot.state, slot.tainted)) {
            tracing::info!(
                kid = %slot.key.key_id(),
                state = ?slot.state,
                tainted = slot.tainted,
                "JWT key changed state"
            );
        }
    }
    for slot in &old.x509 {
        if !x509.iter().any(|new| new.id == slot.id) {
            tracing::info!(
                authority_id = %slot.authority_id(),
                key_file_id = %slot.id,
                "X.509 authority removed from the bundle"
            );
        }
    }
    for slot in &old.jwt {
        if !jwt.iter().any(|new| new.key.key_id() == slot.key.key_id()) {
            tracing::info!(kid = %slot.key.key_id(), "JWT key removed from the bundle");
        }
    }
}

fn remove_key_file(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed the key file of a removed authority")
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            path = %path.display(),
            %error,
            "failed to remove the key file of a removed authority; delete it by hand"
        ),
    }
}

/// Creates `dir` and missing parents with mode 0700, because it contains keys or the datastore.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let refuse = |message: String| {
        ServerError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
        )
    };
    if let Ok(metadata) = std::fs::metadata(dir)
        && !metadata.is_dir()
    {
        return Err(refuse("it exists but is not a directory".to_owned()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServerError::io(dir, source))?;
    let metadata = std::fs::metadata(dir).map_err(|source| ServerError::io(dir, source))?;
    let mode = metadata.mode() & 0o7777;
    // Any user who can write here can swap the CA keys or the datastore, so only the server's own
    // user may. An existing directory's mode is otherwise left alone; files in it are 0600.
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(refuse(format!(
            "it belongs to uid {}, not to the server's uid {euid}; chown it or choose another \
             directory",
            metadata.uid()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "other users can write to it (mode {mode:o}); run chmod go-w on it"
        )));
    }
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = format_args!("{mode:o}"),
            "directory with keys or the datastore is readable by other users; consider chmod 700"
        );
    }
    Ok(())
}

async fn load_x509(
    settings: &CaSettings,
    datastore: &Datastore,
) -> Result<Vec<X509Slot>, ServerError> {
    let Some(dir) = &settings.keys_dir else {
        return Ok(Vec::new());
    };
    let Some(bytes) = datastore.get_ca_state(X509_STATE_KEY).await? else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredX509> = serde_json::from_slice(&bytes)
        .map_err(|error| ServerError::Corrupt(format!("stored X.509 authorities: {error}")))?;
    let mut slots = Vec::with_capacity(stored.len());
    for item in stored {
        let cert = BASE64
            .decode(&item.cert_der)
            .map_err(|error| ServerError::Corrupt(format!("stored CA certificate: {error}")))?;
        let key = PrivateKey::read_pem_file(&dir.join(format!("x509-ca-{}.pem", item.id)))?;
        let authority = X509Authority::from_parts(CertificateDer::from(cert), key)?;
        slots.push(X509Slot {
            id: item.id,
            authority: Arc::new(authority),
            state: item.state,
            tainted: item.tainted,
        });
    }
    Ok(slots)
}

async fn load_jwt(
    settings: &CaSettings,
    datastore: &Datastore,
) -> Result<Vec<JwtSlot>, ServerError> {
    let Some(dir) = &settings.keys_dir else {
        return Ok(Vec::new());
    };
    let Some(bytes) = datastore.get_ca_state(JWT_STATE_KEY).await? else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredJwt> = serde_json::from_slice(&bytes)
        .map_err(|error| ServerError::Corrupt(format!("stored JWT keys: {error}")))?;
    let mut slots = Vec::with_capacity(stored.len());
    for item in stored {
        let key = PrivateKey::read_pem_file(&dir.join(format!("jwt-{}.pem", item.key_id)))?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(item.not_after).unwrap_or_default());
        let key = JwtKey::from_parts(item.key_id, key, not_after)?;
        slots.push(JwtSlot {
            key: Arc::new(key),
            state: item.state,
            tainted: item.tainted,
        });
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localauthority::{self, Kind, StepError};

    const TTL: Duration = Duration::from_secs(3600);

    fn settings(keys_dir: &std::path::Path) -> CaSettings {
        CaSettings {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            ca_ttl: TTL,
            subject: CaSubject {
                country: Vec::new(),
                organization: vec!["twid test".to_owned()],
                common_name: None,
            },
            keys_dir: Some(keys_dir.to_owned()),
        }
    }

    async fn open(dir: &std::path::Path, now: SystemTime) -> CaManager {
        let keys_dir = dir.join("keys");
        let database = twid_datastore::DatastoreConfig {
            database_type: twid_datastore::DatabaseType::Sqlite,
            connection_string: dir.join("datastore.sqlite3").display().to_string(),
        };
        let datastore = Datastore::open(&database).await.unwrap();
        CaManager::load_or_create(settings(&keys_dir), datastore, now)
            .await
            .unwrap()
    }

    fn x509_states(ca: &CaManager) -> Vec<(String, SlotState, bool)> {
        ca.snapshot()
            .x509
            .iter()
            .map(|slot| (slot.authority_id(), slot.state, slot.tainted))
            .collect()
    }

    fn jwt_states(ca: &CaManager) -> Vec<(String, SlotState, bool)> {
        ca.snapshot()
            .jwt
            .iter()
            .map(|slot| (slot.key.key_id().to_owned(), slot.state, slot.tainted))
            .collect()
    }

    /// Prepares and activates a new authority of both kinds, then taints the old ones, and
    /// returns the old X.509 authority ID and JWT key ID.
    async fn rotate_and_taint(ca: &CaManager, now: SystemTime) -> (String, String) {
        let (old_x509, old_jwt) = ca
            .apply_manual(|ca, x509, jwt| -> Result<_, StepError> {
                let old_x509 = x509[0].authority_id();
                let old_jwt = jwt[0].key.key_id().to_owned();
                let next = ca.create_x509_slot(now, SlotState::Prepared)?;
                let next_id = next.authority_id();
                localauthority::prepare(x509, next);
                localauthority::activate(x509, Kind::X509, &next_id)?;
                localauthority::taint(x509, Kind::X509, &old_x509)?;
                let next = ca.create_jwt_slot(now, SlotState::Prepared)?;
                let next_id = next.key.key_id().to_owned();
                localauthority::prepare(jwt, next);
                localauthority::activate(jwt, Kind::Jwt, &next_id)?;
                localauthority::taint(jwt, Kind::Jwt, &old_jwt)?;
                Ok((old_x509, old_jwt))
            })
            .await
            .unwrap();
        (old_x509, old_jwt)
    }

    #[tokio::test]
    async fn manual_steps_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = open(dir.path(), now).await;
        let (old_x509, old_jwt) = rotate_and_taint(&ca, now).await;
        let x509_before = x509_states(&ca);
        let jwt_before = jwt_states(&ca);
        assert_eq!(x509_before.len(), 2);
        assert_eq!(x509_before[0], (old_x509.clone(), SlotState::Old, true));
        assert_eq!(x509_before[1].1, SlotState::Active);
        assert_eq!(jwt_before[0], (old_jwt.clone(), SlotState::Old, true));
        assert_eq!(
            ca.snapshot().tainted_x509_ids(),
            std::slice::from_ref(&old_x509)
        );
        assert_eq!(
            ca.snapshot().tainted_jwt_ids(),
            std::slice::from_ref(&old_jwt)
        );
        drop(ca);

        let reopened = open(dir.path(), now).await;
        assert_eq!(x509_states(&reopened), x509_before);
        assert_eq!(jwt_states(&reopened), jwt_before);

        reopened
            .apply_manual(|ca, x509, jwt| -> Result<_, StepError> {
                let removed = localauthority::revoke(x509, Kind::X509, &old_x509)?;
                ca.remove_x509_key_file(&removed);
                let removed = localauthority::revoke(jwt, Kind::Jwt, &old_jwt)?;
                ca.remove_jwt_key_file(&removed);
                Ok(())
            })
            .await
            .unwrap();
        drop(reopened);

        let after_revoke = open(dir.path(), now).await;
        let x509_after = x509_states(&after_revoke);
        assert_eq!(x509_after.len(), 1);
        assert!(x509_after.iter().all(|(id, _, _)| *id != old_x509));
        let jwt_after = jwt_states(&after_revoke);
        assert_eq!(jwt_after.len(), 1);
        assert!(jwt_after.iter().all(|(id, _, _)| *id != old_jwt));
        assert!(after_revoke.snapshot().tainted_x509_ids().is_empty());
    }

    #[tokio::test]
    async fn schedule_keeps_manual_steps() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = open(dir.path(), now).await;
        let (old_x509, old_jwt) = rotate_and_taint(&ca, now).await;
        let active_x509 = x509_states(&ca)[1].0.clone();

        // Past half the new authority's life the schedule prepares a next one, and the
        // tainted old one keeps its state and mark.
        let later = now + TTL * 3 / 5;
        assert!(ca.rotate(later).await.unwrap());
        let states = x509_states(&ca);
        assert_eq!(states[0], (old_x509.clone(), SlotState::Old, true));
        assert_eq!(states[1], (active_x509, SlotState::Active, false));
        assert_eq!(states[2].1, SlotState::Prepared);
        assert_eq!(jwt_states(&ca)[0], (old_jwt, SlotState::Old, true));

        // A revoked authority never comes back: the schedule only adds new ones.
        ca.apply_manual(|_, x509, _| localauthority::revoke(x509, Kind::X509, &old_x509))
            .await
            .unwrap();
        ca.rotate(now + TTL * 9 / 10).await.unwrap();
        assert!(x509_states(&ca).iter().all(|(id, _, _)| *id != old_x509));
    }
}
