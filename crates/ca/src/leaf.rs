//! X.509-SVID issuance: the leaf certificate template of the SPIFFE X.509-SVID standard.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use twid_spiffe::SpiffeId;

use crate::authority::whole_seconds;
use crate::cert::{
    NOT_BEFORE_BACKDATE_SECONDS, key_identifier, random_serial, sign_certificate, validity_der,
    write_tbs_header,
};
use crate::der::{
    DerWriter, TAG_CONTEXT_3, TAG_DNS_NAME, TAG_IMPLICIT_0, TAG_OCTET_STRING, TAG_PRINTABLE_STRING,
    TAG_SEQUENCE, TAG_URI, TAG_UTF8_STRING, oid,
};
use crate::extension::{SvidExtension, encode_extensions};
use crate::public_key::parse_spki;
use crate::subject::write_attribute;
use crate::timestamp::{from_unix_seconds, rfc3339, unix_seconds};
use crate::{CaError, X509Authority};

/// keyUsage digitalSignature (bit 0), keyEncipherment (bit 2) and keyAgreement (bit 4):
/// three unused bits. keyEncipherment only matters for RSA keys, but SPIRE sets all three
/// for every key type and verifiers accept them.
const LEAF_KEY_USAGE: [u8; 4] = [0x03, 0x02, 0x03, 0xa8];

/// The organization of leaf subjects, as in SPIRE's default X.509-SVID subject.
const LEAF_ORGANIZATION: &[u8] = b"SPIRE";
const LEAF_COUNTRY: &[u8] = b"US";

/// Upper bound of commonName in RFC 5280 appendix A.1, in characters.
const MAX_COMMON_NAME_CHARS: usize = 64;

/// The identity, key, lifetime and DNS names of an X.509-SVID to sign.
#[derive(Clone, Copy, Debug)]
pub struct X509SvidRequest<'a> {
    /// The SVID's SPIFFE ID, which must have a path.
    pub spiffe_id: &'a SpiffeId,
    /// The key to certify, as DER SubjectPublicKeyInfo.
    pub public_key_spki_der: &'a [u8],
    /// Requested lifetime; the certificate ends no later than the CA.
    pub ttl: Duration,
    /// DNS SANs; the first also becomes the subject common name when it has at most 64
    /// characters.
    pub dns_names: &'a [String],
    /// The signing time.
    pub now: SystemTime,
}

impl X509Authority {
    /// Signs an X.509-SVID.
    ///
    /// The leaf has a random 128-bit serial, subject C=US, O=SPIRE (plus CN = the first DNS
    /// name), basicConstraints cA=false (critical), keyUsage digitalSignature,
    /// keyEncipherment and keyAgreement (critical), extKeyUsage serverAuth and clientAuth,
    /// subject and authority key identifiers, and a subjectAltName with the SPIFFE ID as the
    /// only URI followed by the DNS names. `notBefore` is `now` minus 10 seconds; `notAfter`
    /// is `now + ttl`, capped at the CA's `notAfter`.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidTtl`] for a TTL under one second,
    /// [`CaError::IdWithoutPath`] or [`CaError::ForeignTrustDomain`] for an ID the CA may not
    /// certify, [`CaError::InvalidDnsName`], [`CaError::UnsupportedPublicKey`],
    /// [`CaError::Expired`] when the CA has expired at `now`, and [`CaError::Signing`] or
    /// [`CaError::Random`] when the crypto library fails.
    pub fn sign_x509_svid(
        &self,
        request: &X509SvidRequest<'_>,
    ) -> Result<CertificateDer<'static>, CaError> {
        self.sign_x509_svid_with_extensions(request, &[])
    }

    /// Signs an X.509-SVID as [`sign_x509_svid`](Self::sign_x509_svid) does, with the caller's
    /// `extensions` appended, non-critical and in order, after the subjectAltName.
    ///
    /// # Errors
    /// Returns the errors of [`sign_x509_svid`](Self::sign_x509_svid), and
    /// [`CaError::InvalidExtension`] for a malformed OID, an OID under id-ce (2.5.29), an OID
    /// given twice, a value that is not exactly one DER element or is over
    /// [`MAX_SVID_EXTENSION_LEN`](crate::MAX_SVID_EXTENSION_LEN) bytes, or more than
    /// [`MAX_SVID_EXTENSIONS`](crate::MAX_SVID_EXTENSIONS) extensions.
    pub fn sign_x509_svid_with_extensions(
        &self,
        request: &X509SvidRequest<'_>,
        extensions: &[SvidExtension],
    ) -> Result<CertificateDer<'static>, CaError> {
        let extensions = encode_extensions(extensions)?;
        let ttl_seconds = whole_seconds(request.ttl)?;
        self.check_id(request.spiffe_id)?;
        for name in request.dns_names {
            check_dns_name(name)?;
        }
        let spki = parse_spki(request.public_key_spki_der)?;

        let now = unix_seconds(request.now);
        if now >= self.not_after_unix {
            return Err(CaError::Expired {
                not_after: self.not_after,
                now: request.now,
            });
        }
        let not_after = now.saturating_add(ttl_seconds).min(self.not_after_unix);
        let validity = validity_der(now - NOT_BEFORE_BACKDATE_SECONDS, not_after)?;
        let serial = random_serial(request.now)?;
        let subject_key_id = key_identifier(&spki.subject_public_key.data);
        let common_name = request
            .dns_names
            .first()
            .filter(|name| name.len() <= MAX_COMMON_NAME_CHARS);

        let extensions_len: usize = extensions
            .iter()
            .map(|extension| extension.oid_der.len() + extension.value_der.len() + 16)
            .sum();
        let cert = sign_certificate(&self.key, 1024 + extensions_len, |w| {
            w.nested(TAG_SEQUENCE, |w| {
                write_tbs_header(w, &serial, &self.key, &self.subject_name, &validity);
                write_leaf_subject(w, common_name.map(String::as_str));
                w.raw(request.public_key_spki_der);
                w.nested(TAG_CONTEXT_3, |w| {
                    w.nested(TAG_SEQUENCE, |w| {
                        self.write_leaf_extensions(w, request, &subject_key_id);
                        for extension in &extensions {
                            w.extension(&extension.oid_der, false, |w| {
                                w.raw(extension.value_der);
                            });
                        }
                    });
                });
            });
        })?;
        tracing::debug!(
            spiffe_id = %request.spiffe_id,
            serial = %hex::encode(serial),
            not_after = %rfc3339(from_unix_seconds(not_after)),
            "signed X.509-SVID"
        );
        Ok(cert)
    }

    fn write_leaf_extensions(
        &self,
        w: &mut DerWriter,
        request: &X509SvidRequest<'_>,
        subject_key_id: &[u8],
    ) {
        // basicConstraints with cA absent, which DER uses for the default FALSE.
        w.extension(oid::BASIC_CONSTRAINTS, true, |w| {
            w.nested(TAG_SEQUENCE, |_| {});
        });
        w.extension(oid::KEY_USAGE, true, |w| w.raw(&LEAF_KEY_USAGE));
        w.extension(oid::EXT_KEY_USAGE, false, |w| {
            w.nested(TAG_SEQUENCE, |w| {
                w.raw(oid::SERVER_AUTH);
                w.raw(oid::CLIENT_AUTH);
            });
        });
        w.extension(oid::SUBJECT_KEY_IDENTIFIER, false, |w| {
            w.tlv(TAG_OCTET_STRING, subject_key_id);
        });
        w.extension(oid::AUTHORITY_KEY_IDENTIFIER, false, |w| {
            w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_IMPLICIT_0, &self.key_id));
        });
        // The subject is never empty, so the SAN extension is not critical.
        w.extension(oid::SUBJECT_ALT_NAME, false, |w| {
            w.nested(TAG_SEQUENCE, |w| {
                w.tlv(TAG_URI, request.spiffe_id.as_str().as_bytes());
                for name in request.dns_names {
                    w.tlv(TAG_DNS_NAME, name.as_bytes());
                }
            });
        });
    }
}

fn write_leaf_subject(w: &mut DerWriter, common_name: Option<&str>) {
    w.nested(TAG_SEQUENCE, |w| {
        write_attribute(w, oid::COUNTRY_NAME, TAG_PRINTABLE_STRING, LEAF_COUNTRY);
        write_attribute(
            w,
            oid::ORGANIZATION_NAME,
            TAG_UTF8_STRING,
            LEAF_ORGANIZATION,
        );
        if let Some(common_name) = common_name {
            write_attribute(w, oid::COMMON_NAME, TAG_UTF8_STRING, common_name.as_bytes());
        }
    });
}

/// Checks RFC 1123 hostname syntax: dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen, 253 characters at most, where the first
/// label may be the wildcard `*`.
fn check_dns_name(name: &str) -> Result<(), CaError> {
    let invalid = || CaError::InvalidDnsName(name.to_owned());
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_accept_hostnames_and_wildcards() {
        for name in [
            "example.org",
            "a",
            "*.example.org",
            "x-1.y2.z",
            &"a".repeat(63),
        ] {
            assert!(check_dns_name(name).is_ok(), "{name:?} rejected");
        }
    }

    #[test]
    fn dns_names_reject_bad_syntax() {
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".bb";
        for name in [
            "",
            ".",
            "example.org.",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "*",
            "a.*.b",
            "**.b",
            "é.org",
            "a b",
            &long_label,
            &long_name,
        ] {
            assert!(check_dns_name(name).is_err(), "{name:?} accepted");
        }
    }
}
