//! The server's CA manager: the X.509 authorities and JWT keys of the trust domain, their
//! rotation, their persistence, and the bundle built from them.
//!
//! Each authority is in one of three states. A *prepared* authority is published in the bundle
//! but signs nothing yet. The *active* one signs. An *old* one signs nothing but stays in the
//! bundle until it expires. The schedule (prepare at half the active authority's lifetime,
//! activate at five sixths) means that agents have fetched a new key long before anything they
//! receive is signed with it, and that every SVID still valid verifies against the bundle.
//!
//! Private keys are PEM files (0600) in the key directory; the datastore keeps only the
//! certificates, key IDs and states (`ca_state` rows `x509_authorities` and `jwt_keys`).

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
pub(crate) struct X509Slot {
    pub(crate) id: String,
    pub(crate) authority: Arc<X509Authority>,
    pub(crate) state: SlotState,
}

/// A JWT signing key and its state.
pub(crate) struct JwtSlot {
    pub(crate) key: Arc<JwtKey>,
    pub(crate) state: SlotState,
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
}

#[derive(Serialize, Deserialize)]
struct StoredX509 {
    id: String,
    cert_der: String,
    state: SlotState,
}

#[derive(Serialize, Deserialize)]
struct StoredJwt {
    key_id: String,
    not_after: i64,
    state: SlotState,
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
        self.persist(&x509, &jwt).await?;
        log_transitions(&current, &x509, &jwt);
        self.snapshot.store(Arc::new(CaSnapshot {
            x509,
            jwt,
            generation: current.generation + 1,
        }));
        metrics::counter!(twid_telemetry::names::CA_ROTATIONS_TOTAL).increment(1);
        record_active_expiry(&self.snapshot());
        Ok(true)
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
            .map(|slot| X509Slot {
                id: slot.id.clone(),
                authority: Arc::clone(&slot.authority),
                state: slot.state,
            })
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
            .map(|slot| JwtSlot {
                key: Arc::clone(&slot.key),
                state: slot.state,
            })
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
            })
            .collect();
        let stored_jwt: Vec<StoredJwt> = jwt
            .iter()
            .map(|slot| StoredJwt {
                key_id: slot.key.key_id().to_owned(),
                not_after: crate::convert::unix_seconds(slot.key.not_after()),
                state: slot.state,
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
            .all(|(x, y)| x.id == y.id && x.state == y.state)
}

fn same_jwt(a: &[JwtSlot], b: &[JwtSlot]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.key.key_id() == y.key.key_id() && x.state == y.state)
}

fn log_transitions(old: &CaSnapshot, x509: &[X509Slot], jwt: &[JwtSlot]) {
    for slot in x509 {
        let before = old.x509.iter().find(|o| o.id == slot.id).map(|o| o.state);
        if before != Some(slot.state) {
            tracing::info!(
                authority_id = %slot.id,
                state = ?slot.state,
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
            .map(|o| o.state);
        if before != Some(slot.state) {
            tracing::info!(kid = %slot.key.key_id(), state = ?slot.state, "JWT key changed state");
        }
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
        });
    }
    Ok(slots)
}
