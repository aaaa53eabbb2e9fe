//! Named JWT issuers: JWT-SVIDs for an issuer's audiences carry its `iss`, its TTL and a `jti`,
//! and are signed by its own key.
//!
//! An issuer's key comes from `key_file`, which is polled and re-read when its inode, size or
//! modification time changes. Without `key_file` the server generates the key and rotates it on
//! the CA schedule: the next key is published at half the active key's life and signs from five
//! sixths on.
//! Every published issuer key is also added to the trust domain's JWT bundle, so that the
//! Workload API's ValidateJWTSVID accepts the tokens.
//!
//! Generated keys are PEM files (0600) `jwt-issuer-<kid>.pem` in the key directory, and their
//! states are `ca_state` rows `jwt_issuer.<name>`, so that they survive restarts. With the
//! in-memory key manager they are lost on restart, like the CA keys.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use twid_ca::{CaError, JwtKey, KeyType, PrivateKey};
use twid_config::JwtIssuerConfig;
use twid_datastore::Datastore;
use twid_spiffe::jwt::JwtAuthority;

use crate::ServerError;

/// Lifetime given to a key read from `key_file`: such a key has no expiry of its own, so it
/// signs until the file changes.
const FILE_KEY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SEC1_PEM_BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
const SEC1_PEM_END: &str = "-----END EC PRIVATE KEY-----";
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A key of an issuer with the time it leaves the published key set.
#[derive(Clone)]
pub(crate) struct PublishedKey {
    pub(crate) key: Arc<JwtKey>,
    pub(crate) publish_until: SystemTime,
    /// Set for a generated key that is published but does not sign yet.
    pub(crate) prepared: bool,
}

/// An issuer's keys at one moment; replaced as a whole on every change.
pub(crate) struct IssuerKeys {
    pub(crate) active: Arc<JwtKey>,
    /// Every key in the JWKS, including `active`, oldest first.
    pub(crate) published: Vec<PublishedKey>,
}

/// Identity of a key file's content as seen by `stat`, compared on every poll.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
}

enum KeyOrigin {
    File {
        path: PathBuf,
        stamp: Mutex<Option<FileStamp>>,
    },
    Generated {
        key_type: KeyType,
        key_ttl: Duration,
        /// Directory of the key files; `None` keeps keys in memory only.
        keys_dir: Option<PathBuf>,
    },
}

/// The key directory and datastore that persist generated issuer keys.
pub(crate) struct KeyStore {
    pub(crate) keys_dir: PathBuf,
    pub(crate) datastore: Datastore,
}

/// Settings shared by every issuer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IssuerSettings {
    /// Token lifetime of issuers without `ttl`.
    pub(crate) default_token_ttl: Duration,
    /// Type of generated keys.
    pub(crate) key_type: KeyType,
    /// Lifetime of generated keys.
    pub(crate) key_ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct StoredIssuerKey {
    key_id: String,
    not_after: i64,
    publish_until: i64,
    prepared: bool,
    active: bool,
}

fn state_key(issuer_name: &str) -> String {
    format!("jwt_issuer.{issuer_name}")
}

fn key_file_name(key_id: &str) -> String {
    format!("jwt-issuer-{key_id}.pem")
}

fn from_unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
}

/// One `jwt_issuer` block with its keys.
pub(crate) struct Issuer {
    pub(crate) config: JwtIssuerConfig,
    /// The lifetime of the tokens it signs.
    pub(crate) token_ttl: Duration,
    origin: KeyOrigin,
    keys: ArcSwap<IssuerKeys>,
}

impl Issuer {
    /// Returns the current keys.
    pub(crate) fn keys(&self) -> Arc<IssuerKeys> {
        self.keys.load_full()
    }

    /// Signs a JWT-SVID with the issuer's active key, its `iss`, its TTL and a random `jti`.
    pub(crate) fn sign(
        &self,
        subject: &twid_spiffe::SpiffeId,
        audience: &[String],
        now: SystemTime,
    ) -> Result<(String, SystemTime), CaError> {
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(self.config.issuer.clone()));
        claims.insert(
            "jti".into(),
            Value::from(uuid::Uuid::now_v7().simple().to_string()),
        );
        self.keys()
            .active
            .sign_jwt_svid(subject, audience, self.token_ttl, now, Some(&claims))
    }

    /// Returns the public JWKs of every published key: `kid`, `kty`, the key members, `alg`
    /// and `use: sig`.
    pub(crate) fn jwks(&self) -> Vec<Value> {
        self.keys()
            .published
            .iter()
            .filter_map(|published| public_jwk(&published.key))
            .collect()
    }

    /// Returns the JWS algorithms of the published keys, without repeats.
    pub(crate) fn algorithms(&self) -> Vec<String> {
        let mut algorithms: Vec<String> = Vec::new();
        for published in &self.keys().published {
            let name = published.key.algorithm().as_str().to_owned();
            if !algorithms.contains(&name) {
                algorithms.push(name);
            }
        }
        algorithms
    }

    /// Re-reads a changed key file or applies a due rotation step, and drops keys whose
    /// tokens have all expired. Returns whether the published key set changed.
    fn refresh(&self, now: SystemTime) -> Result<bool, ServerError> {
        let current = self.keys();
        let mut published: Vec<PublishedKey> = current
            .published
            .iter()
            .filter(|key| key.publish_until > now)
            .cloned()
            .collect();
        let mut active = Arc::clone(&current.active);
        match &self.origin {
            KeyOrigin::File { path, stamp } => {
                let new_stamp = file_stamp(path).map_err(|error| self.key_error(path, error))?;
                let mut last = stamp
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last != Some(new_stamp) {
                    let key = read_file_key(path, now).map_err(|e| self.key_error(path, e))?;
                    *last = Some(new_stamp);
                    // Limit: a replaced key file signs at once. Agents that have not synced the
                    // new bundle yet reject its tokens in ValidateJWTSVID for up to one sync
                    // interval, while the OIDC endpoint serves the new key at once.
                    if key.key_id() != active.key_id() {
                        tracing::info!(
                            issuer = %self.config.name,
                            kid = %key.key_id(),
                            path = %path.display(),
                            "JWT issuer key file changed; signing with the new key"
                        );
                        retire(&mut published, active.key_id(), now + self.token_ttl);
                        active = Arc::new(key);
                        published.push(PublishedKey {
                            key: Arc::clone(&active),
                            publish_until: active.not_after(),
                            prepared: false,
                        });
                    }
                }
            }
            KeyOrigin::Generated {
                key_type,
                key_ttl,
                keys_dir,
            } => {
                let generate = || generate_key(*key_type, *key_ttl, keys_dir.as_deref(), now);
                active = self.rotate_generated(&mut published, active, *key_ttl, generate, now)?;
            }
        }
        let changed = published.len() != current.published.len()
            || published
                .iter()
                .zip(&current.published)
                .any(|(a, b)| a.key.key_id() != b.key.key_id() || a.prepared != b.prepared);
        if changed {
            self.keys.store(Arc::new(IssuerKeys { active, published }));
        }
        Ok(changed)
    }

    fn rotate_generated(
        &self,
        published: &mut Vec<PublishedKey>,
        active: Arc<JwtKey>,
        key_ttl: Duration,
        generate: impl FnOnce() -> Result<JwtKey, ServerError>,
        now: SystemTime,
    ) -> Result<Arc<JwtKey>, ServerError> {
        let not_before = active.not_after().checked_sub(key_ttl).unwrap_or(now);
        let life = crate::ca::lifetime_fraction(not_before, active.not_after(), now);
        let prepared = published.iter().position(|key| key.prepared);
        if prepared.is_none() && life >= 0.5 {
            let key = generate()?;
            tracing::info!(issuer = %self.config.name, kid = %key.key_id(), "JWT issuer key prepared");
            let publish_until = key.not_after() + self.token_ttl;
            published.push(PublishedKey {
                key: Arc::new(key),
                publish_until,
                prepared: true,
            });
            return Ok(active);
        }
        match prepared {
            Some(index) if life >= 5.0 / 6.0 || active.not_after() <= now => {
                published[index].prepared = false;
                let next = Arc::clone(&published[index].key);
                tracing::info!(issuer = %self.config.name, kid = %next.key_id(), "JWT issuer key activated");
                Ok(next)
            }
            _ => Ok(active),
        }
    }

    fn key_error(&self, path: &Path, source: CaError) -> ServerError {
        ServerError::IssuerKey {
            issuer: self.config.name.clone(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Shortens the publication of the key `key_id` to `until`.
fn retire(published: &mut [PublishedKey], key_id: &str, until: SystemTime) {
    for key in published
        .iter_mut()
        .filter(|key| key.key.key_id() == key_id)
    {
        key.publish_until = key.publish_until.min(until);
    }
}

/// Every configured issuer; cheap to share.
pub(crate) struct IssuerRegistry {
    issuers: Vec<Issuer>,
    datastore: Option<Datastore>,
}

/// Generates a key and, with a key directory, writes it there before it is published.
fn generate_key(
    key_type: KeyType,
    key_ttl: Duration,
    keys_dir: Option<&Path>,
    now: SystemTime,
) -> Result<JwtKey, ServerError> {
    let key = JwtKey::generate(key_type, now, key_ttl)?;
    if let Some(dir) = keys_dir {
        key.private_key()
            .write_pem_file(&dir.join(key_file_name(key.key_id())))?;
    }
    Ok(key)
}

/// Reads every `key_file`, so that a bad one fails start-up before any state changes.
///
/// # Errors
/// Returns [`ServerError::IssuerKey`] naming the issuer and the file.
pub(crate) fn check_key_files(configs: &[JwtIssuerConfig]) -> Result<(), ServerError> {
    for config in configs {
        if let Some(path) = &config.key_file {
            read_file_key(path, SystemTime::now()).map_err(|source| ServerError::IssuerKey {
                issuer: config.name.clone(),
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Reads the stored generated keys of an issuer; keys no longer published are left out.
async fn load_stored_keys(
    name: &str,
    store: &KeyStore,
    now: SystemTime,
) -> Result<Vec<(PublishedKey, bool)>, ServerError> {
    let Some(bytes) = store.datastore.get_ca_state(&state_key(name)).await? else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredIssuerKey> = serde_json::from_slice(&bytes).map_err(|error| {
        ServerError::Corrupt(format!("stored keys of JWT issuer {name:?}: {error}"))
    })?;
    let mut keys = Vec::with_capacity(stored.len());
    for item in stored {
        let publish_until = from_unix(item.publish_until);
        if publish_until <= now {
            continue;
        }
        let path = store.keys_dir.join(key_file_name(&item.key_id));
        let key = PrivateKey::read_pem_file(&path)?;
        let key = JwtKey::from_parts(item.key_id, key, from_unix(item.not_after))?;
        let published = PublishedKey {
            key: Arc::new(key),
            publish_until,
            prepared: item.prepared,
        };
        keys.push((published, item.active));
    }
    Ok(keys)
}

impl IssuerRegistry {
    /// Loads every key file and generates the keys of issuers without one.
    ///
    /// # Errors
    /// Returns [`ServerError::IssuerKey`] naming the issuer and file when a key file cannot be
    /// read or contains no supported key.
    pub(crate) async fn load(
        configs: &[JwtIssuerConfig],
        settings: IssuerSettings,
        store: Option<KeyStore>,
        now: SystemTime,
    ) -> Result<Self, ServerError> {
        let mut issuers = Vec::with_capacity(configs.len());
        for config in configs {
            let token_ttl = config.ttl.unwrap_or(settings.default_token_ttl);
            let mut stored = Vec::new();
            if let (None, Some(store)) = (&config.key_file, &store) {
                stored = load_stored_keys(&config.name, store, now).await?;
            }
            let (origin, key) = match &config.key_file {
                Some(path) => {
                    let key_error = |source| ServerError::IssuerKey {
                        issuer: config.name.clone(),
                        path: path.clone(),
                        source,
                    };
                    let stamp = file_stamp(path).map_err(key_error)?;
                    let key = read_file_key(path, now).map_err(key_error)?;
                    let origin = KeyOrigin::File {
                        path: path.clone(),
                        stamp: Mutex::new(Some(stamp)),
                    };
                    (origin, key)
                }
                None => {
                    let keys_dir = store.as_ref().map(|store| store.keys_dir.clone());
                    let origin = KeyOrigin::Generated {
                        key_type: settings.key_type,
                        key_ttl: settings.key_ttl,
                        keys_dir: keys_dir.clone(),
                    };
                    let active = stored
                        .iter()
                        .find(|(key, active)| *active && key.key.not_after() > now)
                        .map(|(key, _)| Arc::clone(&key.key));
                    if let Some(active) = active {
                        let published = stored.into_iter().map(|(key, _)| key).collect();
                        tracing::info!(issuer = %config.name, kid = %active.key_id(), "JWT issuer keys loaded");
                        issuers.push(Issuer {
                            config: config.clone(),
                            token_ttl,
                            origin,
                            keys: ArcSwap::from_pointee(IssuerKeys { active, published }),
                        });
                        continue;
                    }
                    let key = generate_key(
                        settings.key_type,
                        settings.key_ttl,
                        keys_dir.as_deref(),
                        now,
                    )?;
                    (origin, key)
                }
            };
            tracing::info!(
                issuer = %config.name,
                iss = %config.issuer,
                kid = %key.key_id(),
                algorithm = %key.algorithm().as_str(),
                "JWT issuer loaded"
            );
            let active = Arc::new(key);
            let publish_until = active.not_after() + token_ttl;
            issuers.push(Issuer {
                config: config.clone(),
                token_ttl,
                origin,
                keys: ArcSwap::from_pointee(IssuerKeys {
                    active: Arc::clone(&active),
                    published: vec![PublishedKey {
                        key: active,
                        publish_until,
                        prepared: false,
                    }],
                }),
            });
        }
        let registry = Self {
            issuers,
            datastore: store.map(|store| store.datastore),
        };
        registry.refresh(now);
        registry.persist().await?;
        Ok(registry)
    }

    /// Stores the states of every generated issuer key, when keys are kept on disk.
    pub(crate) async fn persist(&self) -> Result<(), ServerError> {
        let Some(datastore) = &self.datastore else {
            return Ok(());
        };
        for issuer in &self.issuers {
            if !matches!(issuer.origin, KeyOrigin::Generated { .. }) {
                continue;
            }
            let keys = issuer.keys();
            let stored: Vec<StoredIssuerKey> = keys
                .published
                .iter()
                .map(|published| StoredIssuerKey {
                    key_id: published.key.key_id().to_owned(),
                    not_after: crate::convert::unix_seconds(published.key.not_after()),
                    publish_until: crate::convert::unix_seconds(published.publish_until),
                    prepared: published.prepared,
                    active: published.key.key_id() == keys.active.key_id(),
                })
                .collect();
            let json = serde_json::to_vec(&stored).map_err(ServerError::encode)?;
            datastore
                .put_ca_state(&state_key(&issuer.config.name), &json)
                .await?;
        }
        Ok(())
    }

    /// Returns the issuer whose audience list contains every requested audience, `None` when
    /// no requested audience belongs to an issuer.
    ///
    /// # Errors
    /// Returns a message when some audiences belong to an issuer and others do not, or to two
    /// issuers, because one token cannot carry two `iss` values.
    pub(crate) fn for_audience(&self, audience: &[String]) -> Result<Option<&Issuer>, String> {
        let mut chosen: Option<&Issuer> = None;
        let mut unclaimed = Vec::new();
        for requested in audience {
            let owner = self
                .issuers
                .iter()
                .find(|issuer| issuer.config.audience.contains(requested));
            match (owner, chosen) {
                (None, _) => unclaimed.push(requested.as_str()),
                (Some(owner), None) => chosen = Some(owner),
                (Some(owner), Some(first)) if !std::ptr::eq(owner, first) => {
                    return Err(format!(
                        "audiences belong to two JWT issuers, {:?} and {:?}; request a \
                         separate JWT-SVID for each",
                        first.config.name, owner.config.name
                    ));
                }
                (Some(_), Some(_)) => {}
            }
        }
        match chosen {
            Some(issuer) if !unclaimed.is_empty() => Err(format!(
                "audiences {unclaimed:?} are not served by JWT issuer {:?}, which other \
                 requested audiences require; request a separate JWT-SVID for them",
                issuer.config.name
            )),
            chosen => Ok(chosen),
        }
    }

    /// Returns the issuer whose `iss` is `issuer_url`.
    pub(crate) fn by_url(&self, issuer_url: &str) -> Option<&Issuer> {
        self.issuers
            .iter()
            .find(|issuer| issuer.config.issuer == issuer_url)
    }

    /// Returns every issuer.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.iter()
    }

    /// Refreshes every issuer and returns whether any published key set changed. A failing
    /// issuer keeps its last good keys; its error is logged and the others still refresh.
    pub(crate) fn refresh(&self, now: SystemTime) -> bool {
        let mut changed = false;
        for issuer in &self.issuers {
            match issuer.refresh(now) {
                Ok(issuer_changed) => changed |= issuer_changed,
                Err(error) => tracing::error!(
                    issuer = %issuer.config.name,
                    error = %crate::tasks::error_chain(&error),
                    "JWT issuer key refresh failed; keeping the last good key"
                ),
            }
        }
        changed
    }

    /// Returns the bundle authorities of every published issuer key, with their expiry.
    pub(crate) fn bundle_authorities(&self) -> Vec<(JwtAuthority, Arc<JwtKey>)> {
        let mut authorities = Vec::new();
        for issuer in &self.issuers {
            for published in &issuer.keys().published {
                let key = &published.key;
                match JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der()) {
                    Ok(authority) => authorities.push((authority, Arc::clone(key))),
                    Err(error) => tracing::error!(
                        issuer = %issuer.config.name,
                        kid = %key.key_id(),
                        %error,
                        "JWT issuer key cannot be published"
                    ),
                }
            }
        }
        authorities
    }
}

/// Builds the public JWK of `key` with `alg` and `use: sig`, as OIDC discovery serves it.
fn public_jwk(key: &JwtKey) -> Option<Value> {
    let authority = JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der()).ok()?;
    let mut jwk = authority.to_jwk(Some("sig"));
    if let Value::Object(object) = &mut jwk {
        object.insert("alg".into(), key.algorithm().as_str().into());
    }
    Some(jwk)
}

fn file_stamp(path: &Path) -> Result<FileStamp, CaError> {
    let metadata = std::fs::metadata(path).map_err(|e| io_error("stat", path, e))?;
    Ok(FileStamp {
        device: metadata.dev(),
        inode: metadata.ino(),
        size: metadata.size(),
        modified: metadata.modified().ok(),
    })
}

/// Reads an issuer key file: PKCS#8 `PRIVATE KEY` (EC P-256, P-384, RSA 2048 or 4096) or SEC1
/// `EC PRIVATE KEY` (P-256 or P-384). The `kid` is derived from the public key, so the same
/// file always gives the same `kid`.
fn read_file_key(path: &Path, now: SystemTime) -> Result<JwtKey, CaError> {
    let key = read_private_key(path)?;
    let spki = key.public_key_spki_der();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    let key_id = URL_SAFE_NO_PAD.encode(digest.as_ref());
    JwtKey::from_parts(key_id, key, now + FILE_KEY_LIFETIME)
}

// Limit: RSA keys must be PKCS#8 with a 2048- or 4096-bit modulus, the sizes `PrivateKey`
// supports; PKCS#1 `RSA PRIVATE KEY` files and RSA 3072 keys are rejected with an error.
fn read_private_key(path: &Path) -> Result<PrivateKey, CaError> {
    let metadata = std::fs::metadata(path).map_err(|e| io_error("stat", path, e))?;
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(invalid_key_file(path, "larger than 64 KiB"));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))?,
    );
    if !text.contains(SEC1_PEM_BEGIN) {
        return PrivateKey::read_pem_file(path);
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    let body = text
        .split(SEC1_PEM_BEGIN)
        .nth(1)
        .and_then(|rest| rest.split(SEC1_PEM_END).next())
        .ok_or_else(|| invalid_key_file(path, "unterminated EC PRIVATE KEY block"))?;
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = zeroize::Zeroizing::new(
        STANDARD
            .decode(base64.as_bytes())
            .map_err(|_| invalid_key_file(path, "invalid base64 in EC PRIVATE KEY block"))?,
    );
    let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
        .or_else(|_| EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_ASN1_SIGNING, &der))
        .map_err(|_| invalid_key_file(path, "not an EC P-256 or P-384 private key"))?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| invalid_key_file(path, "cannot convert the EC key to PKCS#8"))?;
    PrivateKey::from_pkcs8_der(pkcs8.as_ref()).map_err(|e| invalid_key_file(path, &e.to_string()))
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

fn invalid_key_file(path: &Path, reason: &str) -> CaError {
    CaError::InvalidKeyFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Public keys of the configured JWT issuers, for an OIDC discovery endpoint.
///
/// Cloning is cheap; every call reads the current keys.
#[derive(Clone)]
pub struct OidcKeys {
    registry: Arc<IssuerRegistry>,
}

impl OidcKeys {
    pub(crate) fn new(registry: Arc<IssuerRegistry>) -> Self {
        Self { registry }
    }

    /// Returns the issuer URLs of every `jwt_issuer` block.
    pub fn issuers(&self) -> Vec<String> {
        self.registry
            .iter()
            .map(|issuer| issuer.config.issuer.clone())
            .collect()
    }

    /// Returns the JWKS of the issuer whose `iss` is `issuer_url`: its active key, the next
    /// key once published, and old keys until their last token expires. Each JWK has `kid`,
    /// `kty`, `crv`/`x`/`y` or `n`/`e`, `alg` and `use: sig`. `None` for an unknown issuer.
    pub fn jwks(&self, issuer_url: &str) -> Option<Vec<Value>> {
        self.registry.by_url(issuer_url).map(Issuer::jwks)
    }

    /// Returns the JWS algorithms (`ES256`, `ES384`, `RS256`) of the issuer's published keys.
    /// `None` for an unknown issuer.
    pub fn algorithms(&self, issuer_url: &str) -> Option<Vec<String>> {
        self.registry.by_url(issuer_url).map(Issuer::algorithms)
    }
}

impl std::fmt::Debug for OidcKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcKeys")
            .field("issuers", &self.issuers())
            .finish()
    }
}

/// Serves the keys of one issuer to the OIDC discovery endpoint.
pub(crate) struct IssuerKeySource {
    pub(crate) keys: OidcKeys,
    pub(crate) issuer: String,
}

impl twid_oidc::KeySource for IssuerKeySource {
    fn issuer(&self) -> String {
        self.issuer.clone()
    }

    fn jwks(&self) -> Vec<Value> {
        self.keys.jwks(&self.issuer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use aws_lc_rs::encoding::{AsDer as _, EcPrivateKeyRfc5915Der};
    use aws_lc_rs::rand::SystemRandom;
    use twid_spiffe::{JwtBundle, JwtBundleSet, JwtSvid, SpiffeId, TrustDomain};

    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    const KEY_TTL: Duration = Duration::from_secs(3600);

    fn issuer_config(name: &str, audience: &[&str], key_file: Option<PathBuf>) -> JwtIssuerConfig {
        JwtIssuerConfig {
            name: name.to_owned(),
            issuer: format!("https://{name}.example.org"),
            key_file,
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            ttl: Some(TTL),
        }
    }

    const SETTINGS: IssuerSettings = IssuerSettings {
        default_token_ttl: Duration::from_secs(60),
        key_type: KeyType::EcP256,
        key_ttl: KEY_TTL,
    };

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn load(configs: &[JwtIssuerConfig], now: SystemTime) -> IssuerRegistry {
        block_on(IssuerRegistry::load(configs, SETTINGS, None, now)).unwrap()
    }

    fn write_pkcs8(path: &Path, key_type: KeyType) {
        PrivateKey::generate(key_type)
            .unwrap()
            .write_pem_file(path)
            .unwrap();
    }

    fn write_sec1_p384(path: &Path) {
        let pair =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pair.as_ref()).unwrap();
        let der: EcPrivateKeyRfc5915Der<'_> = pair.private_key().as_der().unwrap();
        let pem = format!(
            "{SEC1_PEM_BEGIN}\n{}\n{SEC1_PEM_END}\n",
            STANDARD.encode(der.as_ref())
        );
        std::fs::write(path, pem).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn audience(values: &[&str]) -> Vec<String> {
        values.iter().map(|a| (*a).to_owned()).collect()
    }

    fn validate(
        registry: &IssuerRegistry,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> JwtSvid {
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let mut bundle = JwtBundle::new(trust_domain);
        for (authority, _) in registry.bundle_authorities() {
            bundle.add_authority(authority);
        }
        let mut bundles = JwtBundleSet::new();
        bundles.insert(bundle);
        JwtSvid::parse_and_validate(token, &bundles, &[audience], now).unwrap()
    }

    #[test]
    fn audience_selects_issuer() {
        let now = SystemTime::now();
        let registry = load(
            &[
                issuer_config("aws", &["sts.amazonaws.com", "aws-2"], None),
                issuer_config("gcp", &["gcp"], None),
            ],
            now,
        );
        let chosen = |values: &[&str]| {
            registry
                .for_audience(&audience(values))
                .map(|issuer| issuer.map(|issuer| issuer.config.name.clone()))
        };
        assert_eq!(chosen(&["sts.amazonaws.com"]), Ok(Some("aws".to_owned())));
        assert_eq!(
            chosen(&["aws-2", "sts.amazonaws.com"]),
            Ok(Some("aws".to_owned()))
        );
        assert_eq!(chosen(&["gcp"]), Ok(Some("gcp".to_owned())));
        assert_eq!(chosen(&["other"]), Ok(None));
        let mixed = chosen(&["sts.amazonaws.com", "other"]).unwrap_err();
        assert!(mixed.contains("\"other\""), "{mixed}");
        let two = chosen(&["sts.amazonaws.com", "gcp"]).unwrap_err();
        assert!(two.contains("two JWT issuers"), "{two}");
    }

    #[test]
    fn issuer_token_has_iss_ttl_and_jti() {
        let now = SystemTime::now();
        let registry = load(&[issuer_config("aws", &["sts.amazonaws.com"], None)], now);
        let issuer = registry
            .for_audience(&audience(&["sts.amazonaws.com"]))
            .unwrap()
            .unwrap();
        let subject = SpiffeId::new("spiffe://example.org/workload").unwrap();
        let (token, expiry) = issuer
            .sign(&subject, &audience(&["sts.amazonaws.com"]), now)
            .unwrap();
        let svid = validate(&registry, &token, "sts.amazonaws.com", now);
        assert_eq!(svid.claims["iss"], "https://aws.example.org");
        assert_eq!(svid.expiry - svid.issued_at.unwrap(), 300);
        assert_eq!(crate::convert::unix_seconds(expiry), svid.expiry);
        let jti = svid.claims["jti"].as_str().unwrap().to_owned();
        let (second, _) = issuer
            .sign(&subject, &audience(&["sts.amazonaws.com"]), now)
            .unwrap();
        let second = JwtSvid::parse_insecure(&second).unwrap();
        assert_ne!(second.claims["jti"].as_str().unwrap(), jti);
    }

    #[test]
    fn jwks_has_alg_and_use() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_pkcs8(&path, KeyType::Rsa2048);
        let registry = Arc::new(load(&[issuer_config("aws", &["a"], Some(path))], now));
        let keys = OidcKeys::new(Arc::clone(&registry));
        assert_eq!(keys.issuers(), vec!["https://aws.example.org".to_owned()]);
        let jwks = keys.jwks("https://aws.example.org").unwrap();
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks[0]["alg"], "RS256");
        assert_eq!(jwks[0]["use"], "sig");
        assert_eq!(jwks[0]["kty"], "RSA");
        assert!(jwks[0]["n"].is_string());
        assert!(jwks[0]["d"].is_null());
        let active_kid = registry
            .iter()
            .next()
            .unwrap()
            .keys()
            .active
            .key_id()
            .to_owned();
        assert_eq!(jwks[0]["kid"], active_kid.as_str());
        assert_eq!(
            keys.algorithms("https://aws.example.org"),
            Some(vec!["RS256".to_owned()])
        );
        assert!(keys.jwks("https://unknown.example.org").is_none());
    }

    #[test]
    fn key_file_reloads_on_change() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_pkcs8(&path, KeyType::EcP256);
        let registry = load(&[issuer_config("aws", &["a"], Some(path.clone()))], now);
        let issuer = registry.iter().next().unwrap();
        let first_kid = issuer.keys().active.key_id().to_owned();
        assert!(!registry.refresh(now), "an unchanged file is not a change");

        let next = dir.path().join("key.next.pem");
        write_sec1_p384(&next);
        std::fs::rename(&next, &path).unwrap();
        assert!(registry.refresh(now));
        let keys = issuer.keys();
        assert_ne!(keys.active.key_id(), first_kid);
        assert_eq!(keys.active.algorithm().as_str(), "ES384");
        let published: Vec<&str> = keys.published.iter().map(|k| k.key.key_id()).collect();
        assert_eq!(published, vec![first_kid.as_str(), keys.active.key_id()]);

        // The old key leaves the key set once its last token has expired.
        assert!(registry.refresh(now + TTL + Duration::from_secs(1)));
        assert_eq!(issuer.keys().published.len(), 1);
    }

    #[test]
    fn broken_key_file_keeps_last_key() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_pkcs8(&path, KeyType::EcP256);
        let registry = load(&[issuer_config("aws", &["a"], Some(path.clone()))], now);
        let issuer = registry.iter().next().unwrap();
        let kid = issuer.keys().active.key_id().to_owned();
        std::fs::write(&path, "not a key").unwrap();
        assert!(!registry.refresh(now));
        assert_eq!(issuer.keys().active.key_id(), kid);
        let error = issuer.refresh(now).err().unwrap().to_string();
        assert!(error.contains("\"aws\""), "{error}");
        assert!(error.contains(path.to_str().unwrap()), "{error}");
        std::fs::remove_file(&path).unwrap();
        assert!(issuer.refresh(now).is_err());
        assert_eq!(issuer.keys().active.key_id(), kid);
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let config = [issuer_config("aws", &["a"], Some(path.clone()))];
        let load_error = || check_key_files(&config).err().unwrap();
        assert!(load_error().to_string().contains(path.to_str().unwrap()));

        write_sec1_p384(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_error();
        assert!(
            matches!(
                &error,
                ServerError::IssuerKey {
                    source: CaError::InsecureKeyFile { .. },
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn generated_key_rotates_with_next_published_first() {
        let start = SystemTime::now();
        let registry = load(&[issuer_config("aws", &["a"], None)], start);
        let issuer = registry.iter().next().unwrap();
        let first = issuer.keys().active.key_id().to_owned();

        assert!(!registry.refresh(start + KEY_TTL / 4));
        assert!(registry.refresh(start + KEY_TTL / 2));
        let keys = issuer.keys();
        assert_eq!(
            keys.active.key_id(),
            first,
            "the next key must not sign yet"
        );
        assert_eq!(keys.published.len(), 2);
        let next = keys.published[1].key.key_id().to_owned();
        assert!(keys.published[1].prepared);

        assert!(registry.refresh(start + KEY_TTL * 5 / 6));
        let keys = issuer.keys();
        assert_eq!(keys.active.key_id(), next);
        assert_eq!(keys.published.len(), 2, "the old key stays published");

        assert!(registry.refresh(start + KEY_TTL + TTL + Duration::from_secs(1)));
        let kids: Vec<String> = issuer
            .keys()
            .published
            .iter()
            .map(|key| key.key.key_id().to_owned())
            .collect();
        assert!(!kids.contains(&first), "{kids:?}");
        assert!(kids.contains(&next));
    }

    #[test]
    fn generated_keys_survive_restart() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        crate::ca::create_private_dir(&keys_dir).unwrap();
        let database = crate::test_support::TestDatastore::new(dir.path());
        let config = [issuer_config("aws", &["sts.amazonaws.com"], None)];
        let subject = SpiffeId::new("spiffe://example.org/workload").unwrap();
        let open = || {
            block_on(async {
                let store = KeyStore {
                    keys_dir: keys_dir.clone(),
                    datastore: Datastore::open(&database.config).await.unwrap(),
                };
                IssuerRegistry::load(&config, SETTINGS, Some(store), now)
                    .await
                    .unwrap()
            })
        };

        let first = open();
        let issuer = first.iter().next().unwrap();
        let kid = issuer.keys().active.key_id().to_owned();
        let key_file = keys_dir.join(key_file_name(&kid));
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (token, _) = issuer
            .sign(&subject, &audience(&["sts.amazonaws.com"]), now)
            .unwrap();
        drop(first);

        let second = open();
        assert_eq!(second.iter().next().unwrap().keys().active.key_id(), kid);
        let svid = validate(&second, &token, "sts.amazonaws.com", now);
        assert_eq!(svid.key_id, kid);
    }
}
