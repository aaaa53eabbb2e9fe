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
//! certificates, public keys, key IDs, states and taint marks, in the `ca_state` rows
//! `x509_authorities/<instance ID>` and `jwt_keys/<instance ID>`.
//!
//! Several server replicas may share one PostgreSQL database, as in SPIRE. Each replica has
//! its own instance ID ([`crate::instance`]), its own authorities and key files, and its own
//! rotation schedule. The trust bundle that every replica serves is the union of all replicas'
//! authorities: each reads the other replicas' rows ([`CaManager::reload_peers`]) at start-up,
//! on every [`twid_datastore::ChangeKind::Authorities`] notification and on every rotation
//! tick. A server that ran before instance IDs existed stored its authorities under the bare
//! keys `x509_authorities` and `jwt_keys`. On its first start with an instance ID it moves
//! those rows to its own keys, so it keeps its CA.

use std::path::{Path, PathBuf};
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
use crate::upstream::{UpstreamChain, UpstreamSource};

/// The `ca_state` key of a server's X.509 authorities before instance IDs existed, and the
/// prefix of the per-instance keys `x509_authorities/<instance ID>`.
const X509_STATE_KEY: &str = "x509_authorities";
/// The `ca_state` key of a server's JWT keys before instance IDs existed, and the prefix of
/// the per-instance keys `jwt_keys/<instance ID>`.
const JWT_STATE_KEY: &str = "jwt_keys";

/// Returns the `ca_state` key of one instance's rows of the kind `prefix`.
fn instance_state_key(prefix: &str, instance_id: &str) -> String {
    format!("{prefix}/{instance_id}")
}

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
    /// The certificates above this authority when an upstream CA signed it, `None` for a
    /// self-signed authority.
    pub(crate) upstream: Option<Arc<UpstreamChain>>,
}

impl X509Slot {
    /// Returns the certificates that an X.509-SVID chain carries after the leaf: none for a
    /// self-signed authority, which the bundle contains, else this intermediate and the
    /// upstream intermediates.
    pub(crate) fn chain_above_leaf(&self) -> Vec<CertificateDer<'static>> {
        match &self.upstream {
            None => Vec::new(),
            Some(upstream) => std::iter::once(self.authority.cert_der().clone())
                .chain(upstream.intermediates.iter().cloned())
                .collect(),
        }
    }

    /// Returns the certificates that this authority adds to the bundle: its own certificate
    /// when self-signed, else the upstream roots.
    fn bundle_certs(&self) -> Vec<CertificateDer<'static>> {
        match &self.upstream {
            None => vec![self.authority.cert_der().clone()],
            Some(upstream) => upstream.roots.clone(),
        }
    }

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

/// An X.509 authority of another server replica on the same database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerX509 {
    pub(crate) instance_id: String,
    pub(crate) cert: CertificateDer<'static>,
    /// The subject key identifier in lowercase hex; empty in a row written before this field
    /// existed, until its replica restarts.
    pub(crate) authority_id: String,
    pub(crate) tainted: bool,
    /// The upstream roots that the bundle contains instead of `cert`. Empty when the
    /// authority is self-signed.
    pub(crate) roots: Vec<CertificateDer<'static>>,
}

/// A JWT key of another server replica on the same database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerJwt {
    pub(crate) instance_id: String,
    pub(crate) key_id: String,
    /// The public key as DER `SubjectPublicKeyInfo`.
    pub(crate) public_key: Vec<u8>,
    pub(crate) not_after: SystemTime,
    pub(crate) tainted: bool,
}

/// The unexpired authorities of the other server replicas, as their `ca_state` rows list them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerAuthorities {
    pub(crate) x509: Vec<PeerX509>,
    pub(crate) jwt: Vec<PeerJwt>,
}

/// A public JWT key of the trust bundle.
pub(crate) struct BundleJwtKey {
    pub(crate) key_id: String,
    /// DER `SubjectPublicKeyInfo`.
    pub(crate) public_key: Vec<u8>,
    pub(crate) not_after: SystemTime,
}

/// The authorities at one moment; replaced as a whole on every change.
pub(crate) struct CaSnapshot {
    /// This replica's X.509 authorities, which it signs with and rotates.
    pub(crate) x509: Vec<X509Slot>,
    /// This replica's JWT keys.
    pub(crate) jwt: Vec<JwtSlot>,
    /// The other replicas' authorities, which this replica only publishes and trusts.
    pub(crate) peers: Arc<PeerAuthorities>,
    /// Increments whenever the set of published authorities changes, this replica's or a
    /// peer's.
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

    /// Returns every published X.509 authority certificate: this replica's, oldest first, then
    /// the other replicas' ordered by instance ID. An authority that an upstream CA signed
    /// contributes the upstream roots instead of its own certificate, and a certificate that
    /// several authorities contribute appears once.
    pub(crate) fn x509_authorities(&self) -> Vec<CertificateDer<'static>> {
        let own = self.x509.iter().flat_map(X509Slot::bundle_certs);
        let peers = self.peers.x509.iter().flat_map(|peer| {
            if peer.roots.is_empty() {
                vec![peer.cert.clone()]
            } else {
                peer.roots.clone()
            }
        });
        let mut seen = std::collections::HashSet::new();
        own.chain(peers)
            .filter(|cert| seen.insert(cert.clone()))
            .collect()
    }

    /// Returns the chain to send with the X.509-SVID `leaf`: the leaf, then the certificates
    /// above it up to, and without, a bundle certificate. The issuing authority is found by
    /// the leaf's authority key identifier among this replica's authorities, and a leaf that
    /// none of them signed is returned alone.
    pub(crate) fn svid_chain(&self, leaf: Vec<u8>) -> Vec<Vec<u8>> {
        let issuer = leaf_authority_key_id(&leaf).and_then(|key_id| {
            self.x509
                .iter()
                .find(|slot| slot.authority.key_id() == key_id)
        });
        let above = issuer.map(X509Slot::chain_above_leaf).unwrap_or_default();
        std::iter::once(leaf)
            .chain(above.into_iter().map(|cert| cert.to_vec()))
            .collect()
    }

    /// Returns every published JWT key in the order of [`Self::x509_authorities`]. A key ID
    /// that two replicas both list appears once.
    pub(crate) fn jwt_public_keys(&self) -> Vec<BundleJwtKey> {
        let own = self.jwt.iter().map(|slot| BundleJwtKey {
            key_id: slot.key.key_id().to_owned(),
            public_key: slot.key.public_key_spki_der(),
            not_after: slot.key.not_after(),
        });
        let peers = self.peers.jwt.iter().map(|peer| BundleJwtKey {
            key_id: peer.key_id.clone(),
            public_key: peer.public_key.clone(),
            not_after: peer.not_after,
        });
        let mut seen = std::collections::HashSet::new();
        own.chain(peers)
            .filter(|key| seen.insert(key.key_id.clone()))
            .collect()
    }

    /// Returns the subject key identifiers (lowercase hex) of the tainted X.509 authorities of
    /// every replica.
    pub(crate) fn tainted_x509_ids(&self) -> Vec<String> {
        self.x509
            .iter()
            .filter(|slot| slot.tainted)
            .map(X509Slot::authority_id)
            .chain(
                self.peers
                    .x509
                    .iter()
                    .filter(|peer| peer.tainted && !peer.authority_id.is_empty())
                    .map(|peer| peer.authority_id.clone()),
            )
            .collect()
    }

    /// Returns the key IDs of the tainted JWT keys of every replica.
    pub(crate) fn tainted_jwt_ids(&self) -> Vec<String> {
        self.jwt
            .iter()
            .filter(|slot| slot.tainted)
            .map(|slot| slot.key.key_id().to_owned())
            .chain(
                self.peers
                    .jwt
                    .iter()
                    .filter(|peer| peer.tainted)
                    .map(|peer| peer.key_id.clone()),
            )
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
    /// The subject key identifier in lowercase hex, which other replicas list as tainted.
    /// Absent in rows written before replicas existed.
    #[serde(default)]
    authority_id: String,
    /// Base64 DER certificates between this authority and its upstream root, as
    /// [`UpstreamChain::intermediates`]. Absent for a self-signed authority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream_intermediates: Vec<String>,
    /// Base64 DER upstream roots, which the bundle contains instead of this authority.
    /// Absent for a self-signed authority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream_roots: Vec<String>,
}

impl StoredX509 {
    /// Decodes the upstream certificates, `None` for a self-signed authority.
    fn upstream(&self) -> Result<Option<Arc<UpstreamChain>>, ServerError> {
        if self.upstream_roots.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(UpstreamChain {
            intermediates: decode_certificates(&self.upstream_intermediates)?,
            roots: decode_certificates(&self.upstream_roots)?,
        })))
    }
}

fn decode_certificates(encoded: &[String]) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    encoded
        .iter()
        .map(|item| {
            BASE64
                .decode(item)
                .map(CertificateDer::from)
                .map_err(|error| {
                    ServerError::Corrupt(format!("stored upstream certificate: {error}"))
                })
        })
        .collect()
}

fn encode_certificates(certs: &[CertificateDer<'static>]) -> Vec<String> {
    certs.iter().map(|cert| BASE64.encode(cert)).collect()
}

/// Returns the authority key identifier of a DER certificate, `None` when it has none or
/// does not parse.
fn leaf_authority_key_id(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

#[derive(Serialize, Deserialize)]
struct StoredJwt {
    key_id: String,
    not_after: i64,
    state: SlotState,
    /// Absent in rows written before tainting existed.
    #[serde(default)]
    tainted: bool,
    /// The public key, base64 DER `SubjectPublicKeyInfo`, which other replicas publish.
    /// Absent in rows written before replicas existed.
    #[serde(default)]
    public_key: String,
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
    /// This replica's instance ID, which names its `ca_state` rows.
    pub(crate) instance_id: String,
    /// The `UpstreamAuthority "disk"` files; `None` makes every X.509 authority self-signed.
    pub(crate) upstream: Option<twid_config::UpstreamAuthorityDisk>,
}

impl CaSettings {
    fn x509_state_key(&self) -> String {
        instance_state_key(X509_STATE_KEY, &self.instance_id)
    }

    fn jwt_state_key(&self) -> String {
        instance_state_key(JWT_STATE_KEY, &self.instance_id)
    }
}

/// Owns the trust domain's authorities.
pub(crate) struct CaManager {
    settings: CaSettings,
    datastore: Datastore,
    snapshot: ArcSwap<CaSnapshot>,
    /// Serializes rotation steps; readers use `snapshot` without locking.
    rotate_lock: Mutex<()>,
    /// The upstream CA that signs new X.509 authorities, loaded and checked at start.
    upstream: Option<UpstreamSource>,
}

impl CaManager {
    /// Loads the persisted authorities, or creates the first ones.
    pub(crate) async fn load_or_create(
        settings: CaSettings,
        datastore: Datastore,
        now: SystemTime,
    ) -> Result<Self, ServerError> {
        let upstream = settings
            .upstream
            .clone()
            .map(|config| UpstreamSource::load(config, now))
            .transpose()?;
        if let Some(dir) = &settings.keys_dir {
            create_private_dir(dir)?;
            claim_legacy_state(&settings, dir, &datastore).await?;
        }
        let x509 = load_x509(&settings, &datastore).await?;
        let jwt = load_jwt(&settings, &datastore).await?;
        let peers = load_peers(&settings, &datastore, now).await?;
        let manager = Self {
            settings,
            datastore,
            snapshot: ArcSwap::from_pointee(CaSnapshot {
                x509,
                jwt,
                peers: Arc::new(peers),
                generation: 0,
            }),
            rotate_lock: Mutex::new(()),
            upstream,
        };
        if !manager.rotate(now).await? {
            // Rewrites rows from before replicas existed with the public keys and authority
            // IDs that other replicas read, and notifies the running replicas of this one.
            let current = manager.snapshot();
            manager.persist(&current.x509, &current.jwt).await?;
        }
        record_active_expiry(&manager.snapshot());
        manager.warn_if_active_not_upstream();
        tracing::info!(
            instance_id = %manager.settings.instance_id,
            peer_x509_authorities = manager.snapshot().peers.x509.len(),
            "CA loaded"
        );
        Ok(manager)
    }

    /// Logs a warning when an upstream CA is configured but the active X.509 authority is
    /// self-signed, as after adding the plugin to a server that ran without it. The schedule
    /// replaces such an authority only at its next rotation.
    fn warn_if_active_not_upstream(&self) {
        let snapshot = self.snapshot();
        let active = snapshot
            .x509
            .iter()
            .find(|slot| slot.state == SlotState::Active);
        if let (Some(_), Some(active)) = (&self.upstream, active)
            && active.upstream.is_none()
        {
            tracing::warn!(
                authority_id = %active.authority_id(),
                "the active X.509 authority is self-signed although UpstreamAuthority \"disk\" is \
                 configured; run `twid localauthority x509 prepare` and `activate` to switch to an \
                 authority under the upstream CA"
            );
        }
    }

    /// Returns the upstream CA that signed the most recent X.509 authority, `None` without
    /// `UpstreamAuthority "disk"`.
    pub(crate) fn upstream(&self) -> Option<Arc<crate::upstream::Upstream>> {
        self.upstream.as_ref().map(UpstreamSource::current)
    }

    /// Returns the configured `UpstreamAuthority "disk"` files.
    pub(crate) fn upstream_config(&self) -> Option<&twid_config::UpstreamAuthorityDisk> {
        self.upstream.as_ref().map(UpstreamSource::config)
    }

    /// Returns this replica's instance ID.
    pub(crate) fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }

    /// Reads the other replicas' authorities from the datastore and, when they changed,
    /// publishes a snapshot with them. Returns whether they changed.
    pub(crate) async fn reload_peers(&self, now: SystemTime) -> Result<bool, ServerError> {
        // Reading under the lock keeps a slower reload from publishing older rows than a
        // concurrent faster one.
        let _guard = self.rotate_lock.lock().await;
        let peers = load_peers(&self.settings, &self.datastore, now).await?;
        let current = self.snapshot.load_full();
        if *current.peers == peers {
            return Ok(false);
        }
        tracing::info!(
            peer_x509_authorities = peers.x509.len(),
            peer_jwt_keys = peers.jwt.len(),
            "other replicas' authorities changed"
        );
        self.snapshot.store(Arc::new(CaSnapshot {
            x509: current.x509.clone(),
            jwt: current.jwt.clone(),
            peers: Arc::new(peers),
            generation: current.generation + 1,
        }));
        Ok(true)
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
        // Key files of authorities that the step removed are deleted only once the new state
        // is stored: a state row that still names a deleted key file stops the next start.
        let removed_x509: Vec<X509Slot> = current
            .x509
            .iter()
            .filter(|old| !x509.iter().any(|new| new.id == old.id))
            .cloned()
            .collect();
        let removed_jwt: Vec<JwtSlot> = current
            .jwt
            .iter()
            .filter(|old| !jwt.iter().any(|new| new.key.key_id() == old.key.key_id()))
            .cloned()
            .collect();
        self.commit(&current, x509, jwt).await?;
        for slot in &removed_x509 {
            self.remove_x509_key_file(slot);
        }
        for slot in &removed_jwt {
            self.remove_jwt_key_file(slot);
        }
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
            peers: Arc::clone(&current.peers),
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
            // Limit: a replica's first authority signs at once, so agents that synced only with
            // other replicas trust it after their next sync, not before it signs.
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
        let settings = &self.settings;
        let (authority, upstream) = match &self.upstream {
            None => {
                let authority = X509Authority::self_signed(
                    &settings.trust_domain,
                    key,
                    &settings.subject,
                    now,
                    settings.ca_ttl,
                    None,
                )?;
                (authority, None)
            }
            Some(source) => {
                let upstream = source.reload(now);
                let ttl = upstream.capped_ttl(source.config(), now, settings.ca_ttl)?;
                let authority = X509Authority::signed_by(
                    &settings.trust_domain,
                    key,
                    &settings.subject,
                    now,
                    ttl,
                    &upstream.signer,
                )?;
                (authority, Some(Arc::clone(&upstream.chain)))
            }
        };
        Ok(X509Slot {
            id,
            authority: Arc::new(authority),
            state,
            tainted: false,
            upstream,
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

    /// Stores this replica's rows in one transaction, which notifies the other replicas.
    ///
    /// Limit: with keys in memory (`keys_dir` is `None`) nothing is stored, so other replicas
    /// neither publish nor trust this replica's authorities.
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
                authority_id: slot.authority_id(),
                upstream_intermediates: slot
                    .upstream
                    .as_ref()
                    .map(|chain| encode_certificates(&chain.intermediates))
                    .unwrap_or_default(),
                upstream_roots: slot
                    .upstream
                    .as_ref()
                    .map(|chain| encode_certificates(&chain.roots))
                    .unwrap_or_default(),
            })
            .collect();
        let stored_jwt: Vec<StoredJwt> = jwt
            .iter()
            .map(|slot| StoredJwt {
                key_id: slot.key.key_id().to_owned(),
                not_after: crate::convert::unix_seconds(slot.key.not_after()),
                state: slot.state,
                tainted: slot.tainted,
                public_key: BASE64.encode(slot.key.public_key_spki_der()),
            })
            .collect();
        let x509_json = serde_json::to_vec(&stored_x509).map_err(ServerError::encode)?;
        let jwt_json = serde_json::to_vec(&stored_jwt).map_err(ServerError::encode)?;
        let x509_key = self.settings.x509_state_key();
        let jwt_key = self.settings.jwt_state_key();
        self.datastore
            .put_authority_states(&[
                (x509_key.as_str(), x509_json.as_slice()),
                (jwt_key.as_str(), jwt_json.as_slice()),
            ])
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

fn remove_key_file(path: &Path) {
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
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
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
    let Some(bytes) = datastore.get_ca_state(&settings.x509_state_key()).await? else {
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
        let upstream = item.upstream()?;
        slots.push(X509Slot {
            id: item.id,
            authority: Arc::new(authority),
            state: item.state,
            tainted: item.tainted,
            upstream,
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
    let Some(bytes) = datastore.get_ca_state(&settings.jwt_state_key()).await? else {
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

/// Moves the rows of a server that ran before instance IDs existed (`x509_authorities` and
/// `jwt_keys`) to this instance's keys, in one transaction, when this instance has no rows yet
/// and `keys_dir` contains every key file the old rows name. A replica with another key
/// directory leaves the rows alone, for the server whose keys they are.
async fn claim_legacy_state(
    settings: &CaSettings,
    keys_dir: &Path,
    datastore: &Datastore,
) -> Result<(), ServerError> {
    let x509_key = settings.x509_state_key();
    let jwt_key = settings.jwt_state_key();
    if datastore.get_ca_state(&x509_key).await?.is_some()
        || datastore.get_ca_state(&jwt_key).await?.is_some()
    {
        return Ok(());
    }

    let mut key_files = Vec::new();
    if let Some(bytes) = datastore.get_ca_state(X509_STATE_KEY).await? {
        let stored: Vec<StoredX509> = serde_json::from_slice(&bytes)
            .map_err(|error| ServerError::Corrupt(format!("stored X.509 authorities: {error}")))?;
        key_files.extend(stored.iter().map(|item| format!("x509-ca-{}.pem", item.id)));
    }
    if let Some(bytes) = datastore.get_ca_state(JWT_STATE_KEY).await? {
        let stored: Vec<StoredJwt> = serde_json::from_slice(&bytes)
            .map_err(|error| ServerError::Corrupt(format!("stored JWT keys: {error}")))?;
        key_files.extend(stored.iter().map(|item| format!("jwt-{}.pem", item.key_id)));
    }
    if key_files.is_empty() {
        return Ok(());
    }

    if let Some(missing) = key_files.iter().find(|name| !keys_dir.join(name).exists()) {
        tracing::warn!(
            keys_dir = %keys_dir.display(),
            missing_key_file = %missing,
            "the CA state of a server from before replicas existed names key files that are \
             not in this server's key directory; leaving it for the server that has them and \
             creating new authorities"
        );
        return Ok(());
    }

    let moved = datastore
        .move_ca_state(&[
            (X509_STATE_KEY, x509_key.as_str()),
            (JWT_STATE_KEY, jwt_key.as_str()),
        ])
        .await?;
    if moved {
        tracing::info!(
            instance_id = %settings.instance_id,
            "moved the CA state from before replicas existed to this server instance"
        );
    }
    Ok(())
}

/// Reads the unexpired authorities of every other replica. A row that cannot be decoded is
/// logged and skipped, because another replica's damage must not stop this one.
async fn load_peers(
    settings: &CaSettings,
    datastore: &Datastore,
    now: SystemTime,
) -> Result<PeerAuthorities, ServerError> {
    let mut peers = PeerAuthorities::default();
    let x509_prefix = format!("{X509_STATE_KEY}/");
    for (key, value) in datastore.list_ca_state(&x509_prefix).await? {
        let instance_id = key[x509_prefix.len()..].to_owned();
        if instance_id == settings.instance_id {
            continue;
        }
        match decode_peer_x509(&instance_id, &value, now) {
            Ok(authorities) => peers.x509.extend(authorities),
            Err(error) => tracing::warn!(
                %instance_id,
                %error,
                "skipping another replica's X.509 authorities"
            ),
        }
    }
    let jwt_prefix = format!("{JWT_STATE_KEY}/");
    for (key, value) in datastore.list_ca_state(&jwt_prefix).await? {
        let instance_id = key[jwt_prefix.len()..].to_owned();
        if instance_id == settings.instance_id {
            continue;
        }
        match decode_peer_jwt(&instance_id, &value, now) {
            Ok(keys) => peers.jwt.extend(keys),
            Err(error) => tracing::warn!(
                %instance_id,
                %error,
                "skipping another replica's JWT keys"
            ),
        }
    }
    Ok(peers)
}

fn decode_peer_x509(
    instance_id: &str,
    value: &[u8],
    now: SystemTime,
) -> Result<Vec<PeerX509>, ServerError> {
    let stored: Vec<StoredX509> = serde_json::from_slice(value)
        .map_err(|error| ServerError::Corrupt(format!("stored X.509 authorities: {error}")))?;
    let mut authorities = Vec::with_capacity(stored.len());
    for item in stored {
        let cert = BASE64
            .decode(&item.cert_der)
            .map_err(|error| ServerError::Corrupt(format!("stored CA certificate: {error}")))?;
        let cert = CertificateDer::from(cert);
        if twid_ca::not_after(&cert)? <= now {
            continue;
        }
        let roots = decode_certificates(&item.upstream_roots)?;
        authorities.push(PeerX509 {
            instance_id: instance_id.to_owned(),
            cert,
            authority_id: item.authority_id,
            tainted: item.tainted,
            roots,
        });
    }
    Ok(authorities)
}

fn decode_peer_jwt(
    instance_id: &str,
    value: &[u8],
    now: SystemTime,
) -> Result<Vec<PeerJwt>, ServerError> {
    let stored: Vec<StoredJwt> = serde_json::from_slice(value)
        .map_err(|error| ServerError::Corrupt(format!("stored JWT keys: {error}")))?;
    let mut keys = Vec::with_capacity(stored.len());
    for item in stored {
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(item.not_after).unwrap_or_default());
        // A row from before replicas existed has no public key until its replica restarts.
        if item.public_key.is_empty() || not_after <= now {
            continue;
        }
        let public_key = BASE64
            .decode(&item.public_key)
            .map_err(|error| ServerError::Corrupt(format!("stored JWT public key: {error}")))?;
        keys.push(PeerJwt {
            instance_id: instance_id.to_owned(),
            key_id: item.key_id,
            public_key,
            not_after,
            tainted: item.tainted,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod replica_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localauthority::{self, Kind, StepError};
    use crate::test_support::TestDatastore;

    const TTL: Duration = Duration::from_secs(3600);

    fn settings(keys_dir: &Path) -> CaSettings {
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
            instance_id: "test-instance".to_owned(),
            upstream: None,
        }
    }

    async fn open(dir: &Path, database: &TestDatastore, now: SystemTime) -> CaManager {
        let keys_dir = dir.join("keys");
        let datastore = Datastore::open(&database.config).await.unwrap();
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

    /// A revoke whose new state cannot be stored keeps the authority's key file, so the stored
    /// state, which still names the authority, loads at the next start.
    #[tokio::test]
    async fn failed_revoke_keeps_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let database = TestDatastore::new(dir.path());
        let now = SystemTime::now();
        let ca = open(dir.path(), &database, now).await;
        let (old_x509, old_jwt) = rotate_and_taint(&ca, now).await;
        let key_files = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path().join("keys"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = key_files();
        ca.datastore.close().await;
        let failed = ca
            .apply_manual(|_, x509, jwt| -> Result<_, StepError> {
                localauthority::revoke(x509, Kind::X509, &old_x509)?;
                localauthority::revoke(jwt, Kind::Jwt, &old_jwt)?;
                Ok(())
            })
            .await;
        assert!(
            failed.is_err(),
            "storing the state on a closed datastore fails"
        );
        assert_eq!(
            key_files(),
            before,
            "no key file is deleted before the state is stored"
        );
        drop(ca);

        let reopened = open(dir.path(), &database, now).await;
        assert!(
            x509_states(&reopened)
                .iter()
                .any(|(id, _, _)| *id == old_x509),
            "the stored state still names the authority, and its key file loads"
        );
    }

    async fn open_with_upstream(
        dir: &Path,
        database: &TestDatastore,
        instance_id: &str,
        upstream: twid_config::UpstreamAuthorityDisk,
        now: SystemTime,
    ) -> CaManager {
        let datastore = Datastore::open(&database.config).await.unwrap();
        let settings = CaSettings {
            instance_id: instance_id.to_owned(),
            upstream: Some(upstream),
            ..settings(&dir.join(format!("keys-{instance_id}")))
        };
        CaManager::load_or_create(settings, datastore, now)
            .await
            .unwrap()
    }

    /// Signs an X.509-SVID with the active authority of `ca` and verifies its chain against
    /// `bundle`.
    fn verify_svid(ca: &CaManager, bundle: Vec<CertificateDer<'static>>, now: SystemTime) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let spiffe_id = twid_spiffe::SpiffeId::new("spiffe://example.org/workload").unwrap();
        let snapshot = ca.snapshot();
        let leaf = snapshot
            .active_x509()
            .unwrap()
            .sign_x509_svid(&twid_ca::X509SvidRequest {
                spiffe_id: &spiffe_id,
                public_key_spki_der: &key.public_key_spki_der(),
                ttl: Duration::from_secs(600),
                dns_names: &[],
                now,
            })
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = snapshot
            .svid_chain(leaf.to_vec())
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let bundle = twid_spiffe::X509Bundle::from_authorities(trust_domain, bundle).unwrap();
        let mut bundles = twid_spiffe::X509BundleSet::new();
        bundles.insert(bundle);
        twid_spiffe::x509::verify_x509_svid(&chain, &bundles, now).unwrap();
    }

    #[tokio::test]
    async fn upstream_signs_authorities() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::upstream::tests::write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let now = SystemTime::now();
        let database = TestDatastore::new(dir.path());
        let ca =
            open_with_upstream(dir.path(), &database, "a", pki.intermediate_config(), now).await;
        let snapshot = ca.snapshot();
        let bundle = snapshot.x509_authorities();
        assert_eq!(bundle.len(), 1, "the bundle contains only the root");
        assert_eq!(bundle[0].as_ref(), pki.root_der);
        let active = &snapshot.x509[0];
        let above = active.chain_above_leaf();
        assert_eq!(above.len(), 2);
        assert_eq!(above[0], *active.authority.cert_der());
        assert_eq!(above[1].as_ref(), pki.intermediate_der);
        verify_svid(&ca, bundle.clone(), now);

        // A rotated authority is signed by the upstream too, and the bundle stays the root.
        ca.apply_manual(|ca, x509, _| -> Result<_, StepError> {
            let next = ca.create_x509_slot(now, SlotState::Prepared)?;
            let next_id = next.authority_id();
            localauthority::prepare(x509, next);
            localauthority::activate(x509, Kind::X509, &next_id)?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(ca.snapshot().x509.len(), 2);
        assert_eq!(ca.snapshot().x509_authorities(), bundle);
        verify_svid(&ca, bundle.clone(), now);
        drop(ca);

        // The chain survives a restart, and a second replica under the same root adds nothing
        // to the bundle.
        let reopened =
            open_with_upstream(dir.path(), &database, "a", pki.intermediate_config(), now).await;
        assert_eq!(reopened.snapshot().x509_authorities(), bundle);
        verify_svid(&reopened, bundle.clone(), now);
        let replica =
            open_with_upstream(dir.path(), &database, "b", pki.intermediate_config(), now).await;
        assert_eq!(replica.snapshot().peers.x509.len(), 2);
        assert_eq!(replica.snapshot().x509_authorities(), bundle);
        verify_svid(&replica, bundle.clone(), now);
    }

    #[tokio::test]
    async fn replicas_publish_union_of_roots() {
        let dir = tempfile::tempdir().unwrap();
        let first_pki_dir = dir.path().join("first");
        let second_pki_dir = dir.path().join("second");
        std::fs::create_dir(&first_pki_dir).unwrap();
        std::fs::create_dir(&second_pki_dir).unwrap();
        let lifetime = Duration::from_secs(30 * 86_400);
        let first_pki = crate::upstream::tests::write_pki(&first_pki_dir, lifetime);
        let second_pki = crate::upstream::tests::write_pki(&second_pki_dir, lifetime);
        let now = SystemTime::now();
        let database = TestDatastore::new(dir.path());
        let a = open_with_upstream(
            dir.path(),
            &database,
            "a",
            first_pki.intermediate_config(),
            now,
        )
        .await;
        let b = open_with_upstream(dir.path(), &database, "b", second_pki.root_config(), now).await;
        a.reload_peers(now).await.unwrap();
        for ca in [&a, &b] {
            let bundle = ca.snapshot().x509_authorities();
            assert_eq!(bundle.len(), 2, "one root per upstream");
            assert!(
                bundle
                    .iter()
                    .any(|cert| cert.as_ref() == first_pki.root_der)
            );
            assert!(
                bundle
                    .iter()
                    .any(|cert| cert.as_ref() == second_pki.root_der)
            );
        }
        // Each replica's SVIDs verify against the union bundle; the self-signed upstream root
        // adds no certificate to the chain.
        verify_svid(&a, a.snapshot().x509_authorities(), now);
        verify_svid(&b, a.snapshot().x509_authorities(), now);
        assert_eq!(b.snapshot().x509[0].chain_above_leaf().len(), 1);
    }

    #[tokio::test]
    async fn upstream_caps_authority_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::upstream::tests::write_pki(dir.path(), Duration::from_secs(1800));
        let now = SystemTime::now();
        let database = TestDatastore::new(dir.path());
        let ca =
            open_with_upstream(dir.path(), &database, "a", pki.intermediate_config(), now).await;
        let upstream_not_after = ca.upstream().unwrap().signer.not_after();
        let authority_not_after = ca.snapshot().x509[0].authority.not_after();
        assert!(
            authority_not_after <= upstream_not_after,
            "the authority ends with the upstream certificate, not after ca_ttl (1h)"
        );
        assert!(authority_not_after + Duration::from_secs(60) > upstream_not_after);
    }

    #[tokio::test]
    async fn manual_steps_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let database = TestDatastore::new(dir.path());
        let now = SystemTime::now();
        let ca = open(dir.path(), &database, now).await;
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

        let reopened = open(dir.path(), &database, now).await;
        assert_eq!(x509_states(&reopened), x509_before);
        assert_eq!(jwt_states(&reopened), jwt_before);

        reopened
            .apply_manual(|_, x509, jwt| -> Result<_, StepError> {
                localauthority::revoke(x509, Kind::X509, &old_x509)?;
                localauthority::revoke(jwt, Kind::Jwt, &old_jwt)?;
                Ok(())
            })
            .await
            .unwrap();
        drop(reopened);

        let after_revoke = open(dir.path(), &database, now).await;
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
        let database = TestDatastore::new(dir.path());
        let now = SystemTime::now();
        let ca = open(dir.path(), &database, now).await;
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
