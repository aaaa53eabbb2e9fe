//! X.509 authorities: a CA certificate and its private key, which sign X.509-SVIDs.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use twid_spiffe::{SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::cert::{
    NOT_BEFORE_BACKDATE_SECONDS, key_identifier, parse_certificate, random_serial,
    sign_certificate, validity_der, write_tbs_header,
};
use crate::der::{TAG_BOOLEAN, TAG_CONTEXT_3, TAG_IMPLICIT_0, TAG_SEQUENCE, TAG_URI, oid};
use crate::timestamp::{from_unix_seconds, unix_seconds};
use crate::{CaError, CaSubject, PrivateKey};

/// keyUsage keyCertSign (bit 5) and cRLSign (bit 6): one unused bit.
const CA_KEY_USAGE: [u8; 4] = [0x03, 0x02, 0x01, 0x06];

/// A CA certificate with its private key, ready to sign X.509-SVIDs.
///
/// Everything a leaf copies from the CA (issuer name, authority key identifier, signature
/// algorithm, validity end) is computed once here, so signing builds only the leaf fields.
pub struct X509Authority {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKey,
    /// The trust domain of the CA's SPIFFE ID URI SAN, if it has one.
    pub(crate) trust_domain: Option<TrustDomain>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) not_after_unix: i64,
    /// The CA subject exactly as the certificate encodes it, used as the leaves' issuer.
    pub(crate) subject_name: Vec<u8>,
    /// The CA's subject key identifier, used as the leaves' authority key identifier.
    pub(crate) key_id: Vec<u8>,
}

impl X509Authority {
    /// Creates a self-signed CA certificate for `trust_domain`.
    ///
    /// The certificate has basicConstraints cA=true (critical, no path length limit),
    /// keyUsage keyCertSign and cRLSign (critical), a subject key identifier, and the URI SAN
    /// `spiffe://<trust_domain>`. `notBefore` is `now` minus 10 seconds so that verifiers
    /// with slightly slow clocks accept it at once; `notAfter` is `now + ttl`. Times are
    /// truncated to whole seconds. `serial` defaults to 48 bits of `now` in milliseconds followed
    /// by 80 random bits.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidTtl`] for a TTL under one second, [`CaError::InvalidSerial`]
    /// for serial 0, [`CaError::InvalidSubject`] for an empty or invalid subject,
    /// [`CaError::TimeOutOfRange`] when `now + ttl` cannot be encoded, and
    /// [`CaError::Signing`] or [`CaError::Random`] when the crypto library fails.
    pub fn self_signed(
        trust_domain: &TrustDomain,
        key: PrivateKey,
        subject: &CaSubject,
        now: SystemTime,
        ttl: Duration,
        serial: Option<u128>,
    ) -> Result<Self, CaError> {
        let authority = Self::create(trust_domain, key, subject, now, ttl, serial, None)?;
        tracing::debug!(
            trust_domain = %trust_domain,
            key_type = %authority.key_type(),
            not_after = %crate::timestamp::rfc3339(authority.not_after),
            "created self-signed X.509 authority"
        );
        Ok(authority)
    }

    /// Creates an intermediate CA certificate for `trust_domain`, signed by `issuer`.
    ///
    /// The certificate has the extensions of [`Self::self_signed`] plus an authority key
    /// identifier, the issuer's subject name byte for byte, and the issuer key's signature
    /// algorithm. `notAfter` is `now + ttl`, so callers cap `ttl` at the issuer's own
    /// `notAfter` when a chain must stay valid to its end.
    ///
    /// # Errors
    /// Returns the errors of [`Self::self_signed`].
    pub fn signed_by(
        trust_domain: &TrustDomain,
        key: PrivateKey,
        subject: &CaSubject,
        now: SystemTime,
        ttl: Duration,
        issuer: &X509Authority,
    ) -> Result<Self, CaError> {
        let authority = Self::create(trust_domain, key, subject, now, ttl, None, Some(issuer))?;
        tracing::debug!(
            trust_domain = %trust_domain,
            key_type = %authority.key_type(),
            not_after = %crate::timestamp::rfc3339(authority.not_after),
            "created intermediate X.509 authority"
        );
        Ok(authority)
    }

    /// Builds a CA certificate for `key`, self-signed when `issuer` is `None`.
    fn create(
        trust_domain: &TrustDomain,
        key: PrivateKey,
        subject: &CaSubject,
        now: SystemTime,
        ttl: Duration,
        serial: Option<u128>,
        issuer: Option<&X509Authority>,
    ) -> Result<Self, CaError> {
        let ttl_seconds = whole_seconds(ttl)?;
        let serial = match serial {
            Some(0) => return Err(CaError::InvalidSerial),
            Some(value) => value.to_be_bytes(),
            None => random_serial(now)?,
        };
        let now_unix = unix_seconds(now);
        let not_after = now_unix
            .checked_add(ttl_seconds)
            .ok_or(CaError::TimeOutOfRange(now))?;
        let validity = validity_der(now_unix - NOT_BEFORE_BACKDATE_SECONDS, not_after)?;
        let name = subject.to_name_der()?;
        let key_id = key_identifier(key.public_key_bits());
        let uri = trust_domain.id_string();
        let (signer, issuer_name) = match issuer {
            Some(issuer) => (&issuer.key, issuer.subject_name.as_slice()),
            None => (&key, name.as_slice()),
        };

        let cert = sign_certificate(signer, 1024, |w| {
            w.nested(TAG_SEQUENCE, |w| {
                write_tbs_header(w, &serial, signer, issuer_name, &validity);
                w.raw(&name);
                w.raw(key.spki());
                w.nested(TAG_CONTEXT_3, |w| {
                    w.nested(TAG_SEQUENCE, |w| {
                        w.extension(oid::BASIC_CONSTRAINTS, true, |w| {
                            w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_BOOLEAN, &[0xff]));
                        });
                        w.extension(oid::KEY_USAGE, true, |w| w.raw(&CA_KEY_USAGE));
                        w.extension(oid::SUBJECT_KEY_IDENTIFIER, false, |w| {
                            w.tlv(crate::der::TAG_OCTET_STRING, &key_id);
                        });
                        if let Some(issuer) = issuer {
                            w.extension(oid::AUTHORITY_KEY_IDENTIFIER, false, |w| {
                                w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_IMPLICIT_0, &issuer.key_id));
                            });
                        }
                        w.extension(oid::SUBJECT_ALT_NAME, false, |w| {
                            w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_URI, uri.as_bytes()));
                        });
                    });
                });
            });
        })?;
        Self::from_parts(cert, key)
    }

    /// Pairs a stored CA certificate with its private key.
    ///
    /// The certificate must have basicConstraints cA=true, keyUsage keyCertSign and a
    /// non-empty subject, and its public key must be the key's. A SPIFFE ID URI SAN, if
    /// present, must have no path; it then restricts signing to its trust domain. Without
    /// a subject key identifier, leaves get an authority key identifier computed from the
    /// CA key.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidCertificate`] when the certificate does not parse or does
    /// not meet the rules above, and [`CaError::KeyMismatch`] when the key does not match.
    pub fn from_parts(cert: CertificateDer<'static>, key: PrivateKey) -> Result<Self, CaError> {
        let parsed = parse_certificate(&cert)?;
        let spki = parsed.public_key();
        if spki.subject_public_key.data.as_ref() != key.public_key_bits()
            || spki.algorithm.algorithm.to_id_string() != key_algorithm_oid(&key)
        {
            return Err(CaError::KeyMismatch);
        }
        check_ca_extensions(&parsed)?;

        let subject_name = parsed.subject().as_raw().to_vec();
        if parsed.subject().iter().next().is_none() {
            return Err(CaError::InvalidCertificate(
                "the CA subject is empty, so OpenSSL would treat its leaves as self-signed"
                    .to_owned(),
            ));
        }

        let key_id = subject_key_id(&parsed)?
            .unwrap_or_else(|| key_identifier(key.public_key_bits()).to_vec());
        let trust_domain = ca_trust_domain(&parsed)?;
        let validity = parsed.validity();
        let not_before = from_unix_seconds(validity.not_before.timestamp());
        let not_after_unix = validity.not_after.timestamp();
        drop(parsed);
        Ok(Self {
            cert,
            key,
            trust_domain,
            not_before,
            not_after: from_unix_seconds(not_after_unix),
            not_after_unix,
            subject_name,
            key_id,
        })
    }

    /// Returns the CA certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Returns the start of the CA certificate's validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// Returns the end of the CA certificate's validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Returns the CA's subject key identifier, which every leaf it signs carries as its
    /// authority key identifier.
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// Returns the type of the CA key.
    pub fn key_type(&self) -> crate::KeyType {
        self.key.key_type()
    }

    /// Returns the trust domain named by the CA's SPIFFE ID, if it has one.
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// Checks that the authority may sign for `id`.
    pub(crate) fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.path().is_empty() {
            return Err(CaError::IdWithoutPath(id.clone()));
        }
        if let Some(trust_domain) = &self.trust_domain
            && !id.is_member_of(trust_domain)
        {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: trust_domain.clone(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Authority")
            .field("trust_domain", &self.trust_domain)
            .field("key_type", &self.key.key_type())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Returns the whole seconds of a TTL, which must be at least one second.
pub(crate) fn whole_seconds(ttl: Duration) -> Result<i64, CaError> {
    match i64::try_from(ttl.as_secs()) {
        Ok(seconds) if seconds >= 1 => Ok(seconds),
        _ => Err(CaError::InvalidTtl(ttl)),
    }
}

fn key_algorithm_oid(key: &PrivateKey) -> &'static str {
    if key.key_type().is_rsa() {
        "1.2.840.113549.1.1.1"
    } else {
        "1.2.840.10045.2.1"
    }
}

fn check_ca_extensions(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let malformed = |name: &str| CaError::InvalidCertificate(format!("malformed {name} extension"));
    let constraints = cert
        .basic_constraints()
        .map_err(|_| malformed("basicConstraints"))?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::InvalidCertificate(
            "not a CA: basicConstraints cA is not true".to_owned(),
        ));
    }
    let usage = cert.key_usage().map_err(|_| malformed("keyUsage"))?;
    if !usage.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(CaError::InvalidCertificate(
            "not a CA: keyUsage lacks keyCertSign".to_owned(),
        ));
    }
    Ok(())
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Result<Option<Vec<u8>>, CaError> {
    for extension in cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(id) = extension.parsed_extension() {
            if id.0.is_empty() {
                return Err(CaError::InvalidCertificate(
                    "empty subject key identifier".to_owned(),
                ));
            }
            return Ok(Some(id.0.to_vec()));
        }
    }
    Ok(None)
}

/// Returns the trust domain of the CA's SPIFFE ID URI SAN. Other URI schemes are ignored.
fn ca_trust_domain(cert: &X509Certificate<'_>) -> Result<Option<TrustDomain>, CaError> {
    let san = cert.subject_alternative_name().map_err(|_| {
        CaError::InvalidCertificate("malformed subjectAltName extension".to_owned())
    })?;
    let names = san
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or_default();
    let mut found: Option<TrustDomain> = None;
    for name in names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Ok(id) = SpiffeId::new(uri) else {
            continue;
        };
        if !id.path().is_empty() {
            return Err(CaError::InvalidCertificate(format!(
                "CA SPIFFE ID {id} has a path; a signing certificate names only its trust domain"
            )));
        }
        if found.as_ref().is_some_and(|td| td != id.trust_domain()) {
            return Err(CaError::InvalidCertificate(
                "CA names more than one trust domain".to_owned(),
            ));
        }
        found = Some(id.trust_domain().clone());
    }
    Ok(found)
}
