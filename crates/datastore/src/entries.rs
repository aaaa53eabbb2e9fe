//! Registration entries.
//!
//! Two entries may not share SPIFFE ID, parent ID and selector set, as in SPIRE. The table
//! enforces this with a unique hash of the three, so concurrent creators cannot both succeed.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{NewEntry, RegistrationEntry, Selector};

use crate::error::map_unique;
use crate::notify::{ChangeKind, send_change};
use crate::{
    Datastore, DatastoreError, bump_revision, from_json, get_bool, parse_spiffe_id, replica,
    sha256_hex, to_json, to_u64, unix_now,
};

/// Conditions for [`Datastore::list_entries`]. An entry is listed when it meets every
/// condition that is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries with this parent ID.
    pub parent_id: Option<SpiffeId>,
    /// Only entries whose selector set equals this one, ignoring order and duplicates. An
    /// empty list sets no condition.
    pub selectors: Vec<Selector>,
}

/// The columns [`entry_from_row`] reads, as a literal so that `concat!` can build `'static`
/// statements from it.
macro_rules! entry_columns {
    () => {
        "id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, dns_names, \
         federates_with, admin, downstream, hint, expires_at, created_at, revision_number"
    };
}

impl Datastore {
    /// Stores a new entry under a fresh UUID v4, with revision number 0.
    ///
    /// # Errors
    /// Returns [`DatastoreError::AlreadyExists`] if an entry with the same SPIFFE ID, parent ID
    /// and selector set exists, or the database failure.
    pub async fn create_entry(
        &self,
        entry: &NewEntry,
        now: i64,
    ) -> Result<RegistrationEntry, DatastoreError> {
        let mut results = self
            .create_entries(std::slice::from_ref(entry), now)
            .await?;
        results
            .pop()
            .expect("create_entries returns one result per input entry")
    }

    /// Stores several new entries in one transaction and returns one result per input, in
    /// input order. An entry that duplicates a stored one, or an earlier one in `entries`,
    /// gets [`DatastoreError::AlreadyExists`] and the others are still stored.
    ///
    /// # Errors
    /// Returns the database failure, in which case no entry was stored.
    pub async fn create_entries(
        &self,
        entries: &[NewEntry],
        now: i64,
    ) -> Result<Vec<Result<RegistrationEntry, DatastoreError>>, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let mut results = Vec::with_capacity(entries.len());
        let mut created = 0_usize;
        for entry in entries {
            match insert_entry(&mut tx, entry, now).await? {
                Some(stored) => {
                    created += 1;
                    results.push(Ok(stored));
                }
                None => results.push(Err(duplicate_entry(entry))),
            }
        }
        if created > 0 {
            let revision = bump_revision(&mut tx).await?;
            let ids: Vec<&str> = results
                .iter()
                .flatten()
                .map(|entry| entry.id.as_str())
                .collect();
            record_changes(&mut tx, revision, ids, now).await?;
            send_change(&mut tx, self.backend, ChangeKind::Entry).await?;
        }
        tx.commit().await?;
        tracing::debug!(
            created,
            rejected = entries.len() - created,
            "entries created"
        );
        Ok(results)
    }

    /// Returns the entry with `id`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM registration_entries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Returns the entries that match `filter`, oldest first.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let mut values: Vec<String> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        if let Some(spiffe_id) = &filter.spiffe_id {
            values.push(spiffe_id.to_string());
            conditions.push(format!("spiffe_id = ${}", values.len()));
        }
        if let Some(parent_id) = &filter.parent_id {
            values.push(parent_id.to_string());
            conditions.push(format!("parent_id = ${}", values.len()));
        }
        if !filter.selectors.is_empty() {
            values.push(selectors_key(&filter.selectors));
            conditions.push(format!("selectors_key = ${}", values.len()));
        }

        let mut sql = String::from(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM registration_entries"
        ));
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY created_at, id");

        // The statement contains only fixed text and numbered placeholders, never a value.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Returns every entry, oldest first.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn list_all_entries(&self) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        self.list_entries(&EntryFilter::default()).await
    }

    /// Replaces the operator-supplied fields of entry `id`, keeps its creation time and
    /// increments its revision number.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] if no entry has `id`,
    /// [`DatastoreError::AlreadyExists`] if another entry has the new SPIFFE ID, parent ID and
    /// selector set, or the database failure.
    pub async fn update_entry(
        &self,
        id: &str,
        entry: &NewEntry,
        now: i64,
    ) -> Result<RegistrationEntry, DatastoreError> {
        let keys = EntryKeys::new(entry);
        let mut tx = self.begin_write().await?;

        let row = sqlx::query(
            "UPDATE registration_entries SET spiffe_id = $1, parent_id = $2, selectors = $3, \
             selectors_key = $4, identity_key = $5, x509_svid_ttl = $6, jwt_svid_ttl = $7, \
             dns_names = $8, federates_with = $9, admin = $10, downstream = $11, hint = $12, \
             expires_at = $13, updated_at = $14, revision_number = revision_number + 1 \
             WHERE id = $15 RETURNING created_at, revision_number",
        )
        .bind(entry.spiffe_id.as_str())
        .bind(entry.parent_id.as_str())
        .bind(to_json(&entry.selectors))
        .bind(keys.selectors_key)
        .bind(keys.identity_key)
        .bind(entry.x509_svid_ttl)
        .bind(entry.jwt_svid_ttl)
        .bind(to_json(&entry.dns_names))
        .bind(to_json(&entry.federates_with))
        .bind(entry.admin)
        .bind(entry.downstream)
        .bind(entry.hint.as_str())
        .bind(entry.expires_at)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| map_unique(error, || duplicate_description(entry)))?;
        let Some(row) = row else {
            return Err(DatastoreError::NotFound(format!("registration entry {id}")));
        };
        let created_at: i64 = row.try_get("created_at")?;
        let revision_number: i64 = row.try_get("revision_number")?;

        let revision = bump_revision(&mut tx).await?;
        record_changes(&mut tx, revision, [id], now).await?;
        send_change(&mut tx, self.backend, ChangeKind::Entry).await?;
        tx.commit().await?;
        tracing::debug!(entry_id = id, revision_number, "entry updated");
        Ok(RegistrationEntry::from_new(
            id.to_owned(),
            entry.clone(),
            created_at,
            revision_number,
        ))
    }

    /// Deletes entry `id` and returns it as it was.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] if no entry has `id`, the database failure, or
    /// [`DatastoreError::Corrupt`], in which case nothing was deleted.
    pub async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "DELETE FROM registration_entries WHERE id = $1 RETURNING ",
            entry_columns!()
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(DatastoreError::NotFound(format!("registration entry {id}")));
        };
        let entry = entry_from_row(&row)?;
        let revision = bump_revision(&mut tx).await?;
        record_changes(&mut tx, revision, [id], unix_now()).await?;
        send_change(&mut tx, self.backend, ChangeKind::Entry).await?;
        tx.commit().await?;
        tracing::debug!(entry_id = id, "entry deleted");
        Ok(entry)
    }

    /// Returns the number of stored entries.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn count_entries(&self) -> Result<u64, DatastoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM registration_entries")
            .fetch_one(&self.pool)
            .await?;
        to_u64("COUNT(*)", row.try_get("count")?)
    }

    /// Deletes every entry whose `expires_at` is set and not after `now`, and returns how many
    /// it deleted.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn prune_expired_entries(&self, now: i64) -> Result<u64, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "DELETE FROM registration_entries WHERE expires_at IS NOT NULL AND expires_at <= $1 \
             RETURNING id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let ids = rows
            .iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = ids.len() as u64;
        if deleted > 0 {
            let revision = bump_revision(&mut tx).await?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            record_changes(&mut tx, revision, ids, now).await?;
            send_change(&mut tx, self.backend, ChangeKind::Entry).await?;
        }
        tx.commit().await?;
        if deleted > 0 {
            tracing::info!(deleted, "expired entries pruned");
        }
        Ok(deleted)
    }
}

/// Inserts `entry` and returns it as stored, or `None` if it duplicates a stored entry.
async fn insert_entry(
    conn: &mut AnyConnection,
    entry: &NewEntry,
    now: i64,
) -> Result<Option<RegistrationEntry>, DatastoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let keys = EntryKeys::new(entry);

    // ON CONFLICT DO NOTHING reports a duplicate as zero inserted rows. A unique violation
    // would abort the whole PostgreSQL transaction, and a batch must go on with its other
    // entries.
    let inserted = sqlx::query(
        "INSERT INTO registration_entries (id, spiffe_id, parent_id, selectors, selectors_key, \
         identity_key, x509_svid_ttl, jwt_svid_ttl, dns_names, federates_with, admin, \
         downstream, hint, expires_at, created_at, updated_at, revision_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id.as_str())
    .bind(entry.spiffe_id.as_str())
    .bind(entry.parent_id.as_str())
    .bind(to_json(&entry.selectors))
    .bind(keys.selectors_key)
    .bind(keys.identity_key)
    .bind(entry.x509_svid_ttl)
    .bind(entry.jwt_svid_ttl)
    .bind(to_json(&entry.dns_names))
    .bind(to_json(&entry.federates_with))
    .bind(entry.admin)
    .bind(entry.downstream)
    .bind(entry.hint.as_str())
    .bind(entry.expires_at)
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    Ok(Some(RegistrationEntry::from_new(id, entry.clone(), now, 0)))
}

fn duplicate_entry(entry: &NewEntry) -> DatastoreError {
    DatastoreError::AlreadyExists(duplicate_description(entry))
}

fn duplicate_description(entry: &NewEntry) -> String {
    format!(
        "a registration entry with SPIFFE ID {}, parent ID {} and the same selectors",
        entry.spiffe_id, entry.parent_id
    )
}

/// The hashed lookup keys of an entry.
///
/// Each key is the hex SHA-256 of compact JSON, in which the selector set is sorted and
/// deduplicated and each selector is `{"type":..,"value":..}`. Both keys are stored, so this
/// encoding must never change.
struct EntryKeys {
    /// Hash of the selector set.
    selectors_key: String,
    /// Hash of `[spiffe_id, parent_id, selector set]`.
    identity_key: String,
}

impl EntryKeys {
    fn new(entry: &NewEntry) -> Self {
        let set = selector_set(&entry.selectors);
        let identity = (entry.spiffe_id.as_str(), entry.parent_id.as_str(), &set);
        Self {
            selectors_key: sha256_hex(to_json(&set).as_bytes()),
            identity_key: sha256_hex(to_json(&identity).as_bytes()),
        }
    }
}

fn selector_set(selectors: &[Selector]) -> Vec<&Selector> {
    let mut set: Vec<&Selector> = selectors.iter().collect();
    set.sort();
    set.dedup();
    set
}

fn selectors_key(selectors: &[Selector]) -> String {
    sha256_hex(to_json(&selector_set(selectors)).as_bytes())
}

fn entry_from_row(row: &AnyRow) -> Result<RegistrationEntry, DatastoreError> {
    let id: String = row.try_get("id")?;
    let field = |column: &str| format!("{column} of registration entry {id}");
    let text = |column: &str| row.try_get::<String, _>(column);

    let federates_with: Vec<TrustDomain> =
        from_json(&field("federates_with"), &text("federates_with")?)?;
    Ok(RegistrationEntry {
        spiffe_id: parse_spiffe_id(&field("spiffe_id"), &text("spiffe_id")?)?,
        parent_id: parse_spiffe_id(&field("parent_id"), &text("parent_id")?)?,
        selectors: from_json(&field("selectors"), &text("selectors")?)?,
        x509_svid_ttl: row.try_get("x509_svid_ttl")?,
        jwt_svid_ttl: row.try_get("jwt_svid_ttl")?,
        dns_names: from_json(&field("dns_names"), &text("dns_names")?)?,
        federates_with,
        admin: get_bool(row, "admin")?,
        downstream: get_bool(row, "downstream")?,
        hint: text("hint")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        revision_number: row.try_get("revision_number")?,
        id,
    })
}

/// Appends one `entry_changes` row per ID under `revision`.
async fn record_changes<'a>(
    conn: &mut AnyConnection,
    revision: u64,
    ids: impl IntoIterator<Item = &'a str>,
    now: i64,
) -> Result<(), DatastoreError> {
    let revision = i64::try_from(revision)
        .map_err(|_| DatastoreError::Corrupt(format!("changes.revision is {revision}")))?;
    for id in ids {
        sqlx::query(
            "INSERT INTO entry_changes (revision, entry_id, changed_at) VALUES ($1, $2, $3)",
        )
        .bind(revision)
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The registration entry changes after a revision, from
/// [`Datastore::entry_changes_since`].
#[derive(Debug, Clone, Default)]
pub struct EntryChanges {
    /// The change counter when the changes were read; apply them and continue from here.
    pub revision: u64,
    /// `(revision, entry ID)` for every entry written after the requested revision, in
    /// revision order. An ID may appear more than once.
    pub changed: Vec<(u64, String)>,
    /// The current state of the changed entries that still exist. A changed ID without an
    /// entry here was deleted. They are read in the same snapshot as `revision`.
    pub entries: Vec<RegistrationEntry>,
    /// The change token of `revision`, or `None` when nothing changed after the requested
    /// revision or `revision` has no token (a server without change tokens wrote it).
    pub token: Option<i64>,
}

/// Every registration entry at one revision, from [`Datastore::entries_at_revision`].
#[derive(Debug, Clone, Default)]
pub struct EntrySnapshot {
    /// The change counter in the snapshot.
    pub revision: u64,
    /// The change token of `revision`, or `None` when it has none.
    pub token: Option<i64>,
    /// Every entry, oldest first.
    pub entries: Vec<RegistrationEntry>,
}

impl Datastore {
    /// Returns the change counter and every entry, for a reader that starts an index at that
    /// revision, which is at least `at_least`. Both come from one snapshot, read from the
    /// read-only replica when one is configured and has reached `at_least` (see
    /// [`Datastore::replica_stats`]), from the primary otherwise.
    ///
    /// # Errors
    /// Returns the primary's failure or [`DatastoreError::Corrupt`]. A replica's failure only
    /// moves the read to the primary.
    pub async fn entries_at_revision(
        &self,
        at_least: u64,
    ) -> Result<EntrySnapshot, DatastoreError> {
        self.read_tolerating_lag(
            at_least,
            replica::FULL_READ_TIMEOUT,
            "all entries",
            0,
            |conn, _| Box::pin(read_all_entries(conn)),
        )
        .await
    }

    /// Returns the change counter and every entry from one snapshot of the primary, never the
    /// replica, for a reader whose earlier data cannot be trusted.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn entries_at_revision_on_primary(&self) -> Result<EntrySnapshot, DatastoreError> {
        self.read_on_primary("all entries", 0, |conn, _| Box::pin(read_all_entries(conn)))
            .await
    }

    /// Returns the entries written after `after`, or `None` when the rows that list them
    /// were pruned, in which case the caller reads every entry again. The result is at least
    /// as new as revision `at_least` and comes from one snapshot, of the read-only replica
    /// when it has reached `at_least`, of the primary otherwise.
    ///
    /// # Errors
    /// Returns the primary's failure or [`DatastoreError::Corrupt`]. A replica's failure only
    /// moves the read to the primary.
    pub async fn entry_changes_since(
        &self,
        after: u64,
        at_least: u64,
    ) -> Result<Option<EntryChanges>, DatastoreError> {
        self.read_tolerating_lag(
            at_least,
            replica::CHANGES_READ_TIMEOUT,
            "entry changes",
            after,
            |conn, after| Box::pin(read_entry_changes(conn, after)),
        )
        .await
    }

    /// Deletes the `entry_changes` rows written before `before` (Unix seconds), moves the
    /// horizon past them, and returns how many it deleted.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn prune_entry_changes(&self, before: i64) -> Result<u64, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query("SELECT MAX(revision) AS newest FROM entry_changes WHERE changed_at < $1")
                .bind(before)
                .fetch_one(&mut *tx)
                .await?;
        let Some(newest) = row.try_get::<Option<i64>, _>("newest")? else {
            tx.commit().await?;
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM entry_changes WHERE revision <= $1")
            .bind(newest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE entry_changes_horizon SET revision = $1 WHERE revision < $1")
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        // Replica reads and the entry index's check compare the tokens of recent revisions
        // only, so tokens as old as the pruned change rows are no longer needed.
        sqlx::query("DELETE FROM change_tokens WHERE revision < $1")
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(deleted, horizon = newest, "entry change rows pruned");
        Ok(deleted)
    }
}

/// Reads the change counter, its token and every entry, oldest first, on one connection. Run
/// it inside a snapshot transaction so that all belong to one state.
async fn read_all_entries(conn: &mut AnyConnection) -> Result<EntrySnapshot, DatastoreError> {
    let (revision, token) = read_revision(&mut *conn).await?;
    let rows = sqlx::query(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM registration_entries ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let entries = rows
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EntrySnapshot {
        revision,
        token,
        entries,
    })
}

/// Reads the change counter and its change token.
async fn read_revision(conn: &mut AnyConnection) -> Result<(u64, Option<i64>), DatastoreError> {
    let row = sqlx::query(
        "SELECT c.revision, t.token FROM changes c \
         LEFT JOIN change_tokens t ON t.revision = c.revision",
    )
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| DatastoreError::Corrupt("the changes table has no row".into()))?;
    let revision = to_u64("changes.revision", row.try_get("revision")?)?;
    Ok((revision, row.try_get("token")?))
}

/// Reads what changed after revision `after` on one connection, inside a snapshot, so that a
/// prune cannot remove change rows between the horizon check and their read.
async fn read_entry_changes(
    conn: &mut AnyConnection,
    after: u64,
) -> Result<Option<EntryChanges>, DatastoreError> {
    let horizon_row = sqlx::query("SELECT revision FROM entry_changes_horizon")
        .fetch_one(&mut *conn)
        .await?;
    let horizon = to_u64(
        "entry_changes_horizon.revision",
        horizon_row.try_get("revision")?,
    )?;
    if after < horizon {
        return Ok(None);
    }

    let (revision, token) = read_revision(&mut *conn).await?;
    if revision <= after {
        return Ok(Some(EntryChanges {
            revision: after.max(revision),
            ..EntryChanges::default()
        }));
    }

    let (after_i64, revision_i64) = (to_i64(after)?, to_i64(revision)?);
    let rows = sqlx::query(
        "SELECT revision, entry_id FROM entry_changes WHERE revision > $1 AND revision <= $2 \
         ORDER BY revision",
    )
    .bind(after_i64)
    .bind(revision_i64)
    .fetch_all(&mut *conn)
    .await?;
    let mut changed = Vec::with_capacity(rows.len());
    for row in &rows {
        let at = to_u64("entry_changes.revision", row.try_get("revision")?)?;
        changed.push((at, row.try_get::<String, _>("entry_id")?));
    }

    let entry_rows = sqlx::query(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM registration_entries WHERE id IN (SELECT entry_id FROM entry_changes \
         WHERE revision > $1 AND revision <= $2)"
    ))
    .bind(after_i64)
    .bind(revision_i64)
    .fetch_all(&mut *conn)
    .await?;
    let entries = entry_rows
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(EntryChanges {
        revision,
        changed,
        entries,
        token,
    }))
}

fn to_i64(revision: u64) -> Result<i64, DatastoreError> {
    i64::try_from(revision)
        .map_err(|_| DatastoreError::Corrupt(format!("revision {revision} exceeds BIGINT")))
}
