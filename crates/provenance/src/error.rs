//! Errors returned by issuance log operations.

use std::sync::Arc;

use twid_datastore::DatastoreError;

/// A failed issuance log operation. Tampering found by
/// [`IssuanceLog::verify`](crate::IssuanceLog::verify) is not an error but part of its
/// [`VerifyReport`](crate::VerifyReport).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The record breaks a rule of [`NewRecord`](crate::NewRecord), for example an X.509
    /// record without a serial number.
    #[error("invalid issuance log record: {0}")]
    InvalidRecord(String),
    /// The datastore failed. One failed append transaction fails every record in it, so the
    /// error is shared.
    #[error("issuance log storage failed: {0}")]
    Datastore(#[source] Arc<DatastoreError>),
    /// A stored record cannot be decoded into a [`Record`](crate::Record), for example because
    /// its SPIFFE ID is invalid. [`IssuanceLog::verify`](crate::IssuanceLog::verify) reports
    /// such a record as edited.
    #[error("issuance log record at seq {seq} cannot be decoded: {reason}")]
    Corrupt {
        /// The record's stored seq.
        seq: i64,
        /// The decoding failure.
        reason: String,
    },
    /// A checkpoint was requested but [`LogOptions`](crate::LogOptions) has no signing key.
    #[error("no checkpoint signing key is configured; set LogOptions::signing_key")]
    NoSigningKey,
    /// The key bytes cannot be used.
    #[error("invalid checkpoint key: {0}")]
    InvalidKey(String),
    /// The signing library failed to sign a checkpoint.
    #[error("signing the checkpoint at seq {seq} failed")]
    Signing {
        /// The seq of the record being signed.
        seq: u64,
    },
    /// The appender task has stopped, so the record was not written.
    #[error("the issuance log appender task has stopped; the record was not written")]
    Closed,
}

impl LogError {
    /// Returns whether the failure comes from damaged log data, such as a record stored
    /// outside twid past the head or a missing head row. Retrying does not help until an
    /// operator repairs the log.
    pub fn is_damaged_log(&self) -> bool {
        match self {
            Self::Corrupt { .. } => true,
            Self::Datastore(error) => matches!(**error, DatastoreError::Corrupt(_)),
            _ => false,
        }
    }
}

impl From<DatastoreError> for LogError {
    fn from(error: DatastoreError) -> Self {
        Self::Datastore(Arc::new(error))
    }
}
