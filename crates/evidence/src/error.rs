use std::fmt;

/// The class of a verification failure, so callers can count and report failures by cause
/// without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The evidence or collateral bytes do not parse.
    Malformed,
    /// A signature over the evidence or the collateral is invalid.
    Signature,
    /// A certificate chain does not end at a trusted root, or a certificate in it is unusable.
    Chain,
    /// A certificate in the chain is revoked.
    Revoked,
    /// A certificate, CRL, TCB info or QE identity is not valid at `now`.
    Expired,
    /// The platform TCB matches no acceptable TCB level.
    TcbLevel,
    /// The evidence comes from a debug-mode enclave, TD, guest or enclave image.
    Debug,
    /// The evidence is too old, or its nonce is not the expected one.
    Freshness,
    /// The evidence does not bind the expected nonce and public key.
    Binding,
    /// The claims are valid but the policy does not allow them.
    Policy,
    /// The collateral does not belong to this evidence (for example another FMSPC).
    Collateral,
}

impl Reason {
    /// Returns a short, stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Signature => "signature",
            Reason::Chain => "chain",
            Reason::Revoked => "revoked",
            Reason::Expired => "expired",
            Reason::TcbLevel => "tcb_level",
            Reason::Debug => "debug",
            Reason::Freshness => "freshness",
            Reason::Binding => "binding",
            Reason::Policy => "policy",
            Reason::Collateral => "collateral",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why evidence failed verification: a [`Reason`] and a message that names the field, the
/// certificate or the value that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct VerifyError {
    pub reason: Reason,
    pub message: String,
}

impl VerifyError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(Reason::Malformed, message)
    }

    pub fn signature(message: impl Into<String>) -> Self {
        Self::new(Reason::Signature, message)
    }

    pub fn chain(message: impl Into<String>) -> Self {
        Self::new(Reason::Chain, message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(Reason::Expired, message)
    }

    pub fn policy(message: impl Into<String>) -> Self {
        Self::new(Reason::Policy, message)
    }
}
