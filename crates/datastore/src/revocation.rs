//! Revocation rules and the credentials they revoked, and the issuance log scan that finds the
//! credentials a new rule revokes.
//!
//! The server decides what a rule matches; this module stores rules and credentials as given.

use std::collections::HashSet;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::notify::{ChangeKind, send_change};
use crate::{DatabaseType, Datastore, DatastoreError, bump_revision};

/// Bind parameters per inserted revoked credential.
const CREDENTIAL_COLUMN_COUNT: usize = 7;

/// Rows per multi-row INSERT of revoked credentials, largest first. A list is split greedily
/// into these sizes, so only four distinct statements exist. 64 rows use 448 bind parameters.
const INSERT_CHUNK_ROWS: [usize; 4] = [64, 16, 4, 1];

/// The PostgreSQL advisory lock key that serializes [`Datastore::add_new_revoked_credentials`]:
/// the ASCII bytes of "twid-rev".
const POSTGRES_REVOCATION_LOCK: i64 = 0x7477_6964_2d72_6576;

/// A stored revocation rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRule {
    /// Assigned by the datastore, growing with every rule.
    pub id: i64,
    /// `selector`, `tcb_status` or `agent`.
    pub kind: String,
    /// The selector as `type:value`, the TCB status name or the agent's SPIFFE ID.
    pub value: String,
    /// The operator's free-text reason.
    pub reason: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A rule to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    /// `selector`, `tcb_status` or `agent`.
    pub kind: String,
    /// The selector as `type:value`, the TCB status name or the agent's SPIFFE ID.
    pub value: String,
    /// The operator's free-text reason.
    pub reason: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A revoked credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCredential {
    /// The rule that revoked it. Ignored by [`Datastore::add_revoked_credentials`], which
    /// takes the rule ID as a parameter.
    pub revocation_id: i64,
    /// `x509`, `jwt` or `wit`.
    pub kind: String,
    /// Lowercase hex serial number of an X.509-SVID.
    pub serial: Option<String>,
    /// JWT ID claim of a JWT-SVID or WIT.
    pub jti: Option<String>,
    /// The SPIFFE ID the credential names.
    pub spiffe_id: String,
    /// The agent that obtained it.
    pub agent_id: Option<String>,
    /// Unix seconds: the credential's expiry or an upper bound of it.
    pub expires_at: i64,
}

/// An issuance log record of an issued credential, with the columns a revocation scan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCredential {
    /// Position in the issuance log.
    pub seq: i64,
    /// `x509`, `jwt` or `wit`.
    pub kind: String,
    /// Lowercase hex X.509 serial number.
    pub serial: Option<String>,
    /// JWT ID claim.
    pub jti: Option<String>,
    /// The SPIFFE ID issued.
    pub spiffe_id: Option<String>,
    /// The registration entry the credential was issued for.
    pub entry_id: Option<String>,
    /// The SPIFFE ID of the agent that requested the credential.
    pub agent_id: Option<String>,
    /// JSON array of `{"type","value"}` objects.
    pub selectors: String,
    /// The attestation result as JSON text.
    pub attestation_result: Option<String>,
    /// Time of issuance, in milliseconds since the unix epoch.
    pub time_unix_ms: i64,
}

/// The columns [`rule_from_row`] reads.
macro_rules! rule_columns {
    () => {
        "id, kind, value, reason, created_at"
    };
}

/// The columns [`credential_from_row`] reads.
macro_rules! credential_columns {
    () => {
        "revocation_id, kind, serial, jti, spiffe_id, agent_id, expires_at"
    };
}

impl Datastore {
    /// Stores a revocation rule and returns it with its ID.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn create_revocation(
        &self,
        rule: &NewRevocation,
    ) -> Result<RevocationRule, DatastoreError> {
        let mut tx = self.begin_write().await?;
        // SQLite (3.35 and later) and PostgreSQL both return the generated ID this way.
        let row = sqlx::query(
            "INSERT INTO revocations (kind, value, reason, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(rule.kind.as_str())
        .bind(rule.value.as_str())
        .bind(rule.reason.as_str())
        .bind(rule.created_at)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        bump_revision(&mut tx).await?;
        // No change notification yet: other servers would wake their agents' Watch streams
        // before the rule's credentials are stored. [`Datastore::add_revoked_credentials`]
        // notifies once they are.
        tx.commit().await?;
        tracing::debug!(revocation_id = id, kind = %rule.kind, "revocation rule stored");
        Ok(RevocationRule {
            id,
            kind: rule.kind.clone(),
            value: rule.value.clone(),
            reason: rule.reason.clone(),
            created_at: rule.created_at,
        })
    }

    /// Stores `credentials` as revoked by rule `revocation_id`, in one transaction, and
    /// notifies other servers of the rule and its credentials. Call it with no credentials to
    /// notify them of a rule whose credentials could not be listed.
    ///
    /// # Errors
    /// Returns the database failure, for example a foreign key violation for an unknown rule
    /// on PostgreSQL.
    pub async fn add_revoked_credentials(
        &self,
        revocation_id: i64,
        credentials: &[RevokedCredential],
    ) -> Result<(), DatastoreError> {
        let tx = self.begin_write().await?;
        self.commit_credentials(tx, revocation_id, credentials)
            .await
    }

    /// Stores the `credentials` that no rule has revoked yet as revoked by rule
    /// `revocation_id`, like [`Self::add_revoked_credentials`]. Returns them and the number of
    /// distinct serials and JWT IDs that earlier rules revoked. Concurrent calls take turns, so
    /// a credential that two new rules match is stored and returned once.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn add_new_revoked_credentials(
        &self,
        revocation_id: i64,
        credentials: Vec<RevokedCredential>,
    ) -> Result<(Vec<RevokedCredential>, u64), DatastoreError> {
        // SQLite's BEGIN IMMEDIATE already lets one writer in at a time.
        let mut tx = self.begin_write().await?;
        if self.backend == DatabaseType::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(POSTGRES_REVOCATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }

        let rows = sqlx::query("SELECT serial, jti FROM revoked_credentials")
            .fetch_all(&mut *tx)
            .await?;
        let mut known = HashSet::new();
        for row in &rows {
            let serial: Option<String> = row.try_get("serial")?;
            let jti: Option<String> = row.try_get("jti")?;
            known.insert((serial, jti));
        }
        let (fresh, old): (Vec<_>, Vec<_>) = credentials
            .into_iter()
            .partition(|c| !known.contains(&(c.serial.clone(), c.jti.clone())));
        let already = old
            .iter()
            .map(|c| (c.serial.as_deref(), c.jti.as_deref()))
            .collect::<HashSet<_>>()
            .len();
        self.commit_credentials(tx, revocation_id, &fresh).await?;
        Ok((fresh, already as u64))
    }

    /// Inserts `credentials` for rule `revocation_id` in `tx`, notifies other servers and
    /// commits.
    async fn commit_credentials(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        revocation_id: i64,
        credentials: &[RevokedCredential],
    ) -> Result<(), DatastoreError> {
        let mut rest = credentials;
        for size in INSERT_CHUNK_ROWS {
            while rest.len() >= size {
                let (chunk, tail) = rest.split_at(size);
                insert_credential_chunk(&mut tx, self.backend, revocation_id, chunk).await?;
                rest = tail;
            }
        }
        bump_revision(&mut tx).await?;
        send_change(&mut tx, self.backend, ChangeKind::Revocation).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns every revocation rule, oldest first.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn list_revocations(&self) -> Result<Vec<RevocationRule>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM revocations ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Returns the rules created at or after `created_at` (unix seconds), oldest first: the
    /// rules that apply to an agent attested at that time.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn revocations_since(
        &self,
        created_at: i64,
    ) -> Result<Vec<RevocationRule>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM revocations WHERE created_at >= $1 ORDER BY id"
        ))
        .bind(created_at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Returns the ID of the oldest rule that revoked the X.509-SVID with `serial` (lowercase
    /// hex), or `None` when none did.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn serial_revocation(&self, serial: &str) -> Result<Option<i64>, DatastoreError> {
        let row = sqlx::query(
            "SELECT MIN(revocation_id) AS revocation_id FROM revoked_credentials \
             WHERE serial = $1",
        )
        .bind(serial)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("revocation_id")?)
    }

    /// Returns the revoked credentials that expire after `now` (unix seconds), ordered by
    /// rule and then by insertion. A credential revoked by several rules appears once per
    /// rule.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn unexpired_revoked_credentials(
        &self,
        now: i64,
    ) -> Result<Vec<RevokedCredential>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            credential_columns!(),
            " FROM revoked_credentials WHERE expires_at > $1 ORDER BY revocation_id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// Returns the revoked credentials that `agent_id` obtained and that expire after `now`
    /// (unix seconds).
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn unexpired_revoked_credentials_of_agent(
        &self,
        agent_id: &str,
        now: i64,
    ) -> Result<Vec<RevokedCredential>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            credential_columns!(),
            " FROM revoked_credentials WHERE agent_id = $1 AND expires_at > $2 \
             ORDER BY revocation_id"
        ))
        .bind(agent_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// Returns the lowest seq among issuance log records with a time at or after
    /// `from_unix_ms`, or `None` when there is none. A scan of recent records starts here:
    /// paging by seq from the start of the log would read every older record first, because
    /// no index orders records by seq and time together.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn issuance_log_first_seq_since(
        &self,
        from_unix_ms: i64,
    ) -> Result<Option<i64>, DatastoreError> {
        if self.backend == DatabaseType::Postgres {
            self.summarize_log_time_index().await;
        }
        // `seq + 0` keeps PostgreSQL from rewriting MIN(seq) into a walk of the primary key
        // from the oldest record, which reads every record older than `from_unix_ms`.
        let row =
            sqlx::query("SELECT MIN(seq + 0) AS first FROM issuance_log WHERE time_unix_ms >= $1")
                .bind(from_unix_ms)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<Option<i64>, _>("first")?)
    }

    /// Adds the full block ranges appended since the last summary to the PostgreSQL BRIN
    /// index on the log's times, which covers a range only once it is summarized. A failure,
    /// such as a database role that does not own the index, is logged, and the scan then
    /// reads every unsummarized range: slower, with the same result.
    async fn summarize_log_time_index(&self) {
        let summarized = sqlx::query(
            "SELECT brin_summarize_new_values('issuance_log_time'::regclass) AS ranges",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|row| row.try_get::<i32, _>("ranges"));
        match summarized {
            Ok(ranges) => tracing::debug!(ranges, "summarized the issuance log time index"),
            Err(error) => tracing::warn!(
                error = %error,
                "summarizing the issuance log time index failed; the revocation scan reads \
                 the unsummarized part of the log in full. Grant the server's database role \
                 ownership of index issuance_log_time"
            ),
        }
    }

    /// Returns up to `limit` issuance log records of issued credentials (not refusals) with
    /// `seq > after_seq` and a time at or after `from_unix_ms`, in seq order. Callers page
    /// through the log by passing the last seq they received.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn issued_credentials_since(
        &self,
        from_unix_ms: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<IssuedCredential>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, serial, jti, spiffe_id, entry_id, agent_id, selectors, \
             attestation_result, time_unix_ms FROM issuance_log \
             WHERE seq > $1 AND time_unix_ms >= $2 AND kind <> 'refusal' \
             ORDER BY seq LIMIT $3",
        )
        .bind(after_seq)
        .bind(from_unix_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IssuedCredential {
                    seq: row.try_get("seq")?,
                    kind: row.try_get("kind")?,
                    serial: row.try_get("serial")?,
                    jti: row.try_get("jti")?,
                    spiffe_id: row.try_get("spiffe_id")?,
                    entry_id: row.try_get("entry_id")?,
                    agent_id: row.try_get("agent_id")?,
                    selectors: row.try_get("selectors")?,
                    attestation_result: row.try_get("attestation_result")?,
                    time_unix_ms: row.try_get("time_unix_ms")?,
                })
            })
            .collect()
    }
}

/// Inserts `credentials` as revoked by rule `revocation_id` in one statement.
async fn insert_credential_chunk(
    conn: &mut AnyConnection,
    backend: DatabaseType,
    revocation_id: i64,
    credentials: &[RevokedCredential],
) -> Result<(), DatastoreError> {
    let mut sql = String::from(
        "INSERT INTO revoked_credentials (revocation_id, kind, serial, jti, spiffe_id, \
         agent_id, expires_at) VALUES ",
    );
    for row in 0..credentials.len() {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..CREDENTIAL_COLUMN_COUNT {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                DatabaseType::Sqlite => sql.push('?'),
                DatabaseType::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * CREDENTIAL_COLUMN_COUNT + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    // The statement contains only placeholders; every value is bound.
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for credential in credentials {
        query = query
            .bind(revocation_id)
            .bind(credential.kind.clone())
            .bind(credential.serial.clone())
            .bind(credential.jti.clone())
            .bind(credential.spiffe_id.clone())
            .bind(credential.agent_id.clone())
            .bind(credential.expires_at);
    }
    query.execute(conn).await?;
    Ok(())
}

fn rule_from_row(row: &AnyRow) -> Result<RevocationRule, DatastoreError> {
    Ok(RevocationRule {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        value: row.try_get("value")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
    })
}

fn credential_from_row(row: &AnyRow) -> Result<RevokedCredential, DatastoreError> {
    Ok(RevokedCredential {
        revocation_id: row.try_get("revocation_id")?,
        kind: row.try_get("kind")?,
        serial: row.try_get("serial")?,
        jti: row.try_get("jti")?,
        spiffe_id: row.try_get("spiffe_id")?,
        agent_id: row.try_get("agent_id")?,
        expires_at: row.try_get("expires_at")?,
    })
}
