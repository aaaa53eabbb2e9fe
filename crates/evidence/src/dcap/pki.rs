//! Certificate chains, CRLs and validity windows for DCAP collateral.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::{Reason, TrustAnchors, VerifyError};

/// Limits on the number of certificates in a chain, so a crafted chain cannot make chain
/// building slow.
const MAX_CHAIN_LEN: usize = 8;

/// The validity bounds collected while checking certificates, CRLs and collateral.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Window {
    /// Earliest end of validity seen so far.
    pub(crate) valid_until: Option<i64>,
    /// Earliest issue time of dated collateral seen so far.
    pub(crate) issued_at: Option<i64>,
}

impl Window {
    fn end(&mut self, at: i64) {
        self.valid_until = Some(self.valid_until.map_or(at, |current| current.min(at)));
    }

    fn issued(&mut self, at: i64) {
        self.issued_at = Some(self.issued_at.map_or(at, |current| current.min(at)));
    }

    /// Requires `start <= now <= end` for the item named `context`, then records both bounds.
    pub(crate) fn check(
        &mut self,
        context: &str,
        (start_name, start): (&str, i64),
        (end_name, end): (&str, i64),
        now: i64,
        collateral: bool,
    ) -> Result<(), VerifyError> {
        if now < start {
            return Err(VerifyError::expired(format!(
                "{context} {start_name} {} is after now {}",
                format_time(start),
                format_time(now)
            )));
        }
        if now > end {
            return Err(VerifyError::expired(format!(
                "{context} {end_name} {} is before now {}",
                format_time(end),
                format_time(now)
            )));
        }
        self.end(end);
        if collateral {
            self.issued(start);
        }
        Ok(())
    }
}

/// Formats Unix seconds as RFC 3339 UTC, or as the plain number when out of range.
pub(crate) fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses an RFC 3339 time such as `2025-06-19T10:56:11Z` into Unix seconds.
pub(crate) fn parse_time(value: &str, context: &str) -> Result<i64, VerifyError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|error| {
            VerifyError::malformed(format!(
                "{context} {value:?} is not an RFC 3339 time: {error}"
            ))
        })
}

/// Returns the subject common name of a certificate, for messages.
pub(crate) fn subject_cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| cert.subject().to_string(), str::to_owned)
}

/// Parses one DER certificate, named by `context` in errors.
pub(crate) fn parse_certificate<'a>(
    der: &'a [u8],
    context: &str,
) -> Result<X509Certificate<'a>, VerifyError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(VerifyError::malformed(format!(
            "{context}: trailing bytes after the certificate"
        ))),
        Err(error) => Err(VerifyError::malformed(format!(
            "{context}: invalid X.509 certificate: {error}"
        ))),
    }
}

/// A certificate with its DER encoding.
pub(crate) struct Cert<'a> {
    pub(crate) der: &'a [u8],
    pub(crate) x509: X509Certificate<'a>,
}

fn is_self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

/// Orders certificates leaf first by issuer and subject names, whatever order they came in.
/// The leaf is the certificate that issued no other one in the set.
fn order_leaf_first<'a>(certs: Vec<Cert<'a>>, context: &str) -> Result<Vec<Cert<'a>>, VerifyError> {
    let issued_other = |index: usize| {
        certs.iter().enumerate().any(|(other, cert)| {
            other != index
                && !is_self_issued(&cert.x509)
                && cert.x509.issuer().as_raw() == certs[index].x509.subject().as_raw()
        })
    };
    let leaves: Vec<usize> = (0..certs.len())
        .filter(|index| !issued_other(*index))
        .collect();
    let leaf = match leaves.as_slice() {
        [leaf] => *leaf,
        [] => {
            return Err(VerifyError::chain(format!(
                "{context}: no leaf certificate (the issuers form a loop)"
            )));
        }
        _ => {
            return Err(VerifyError::chain(format!(
                "{context}: the certificates do not form one chain ({} candidate leaves)",
                leaves.len()
            )));
        }
    };
    let mut remaining: Vec<Option<Cert<'a>>> = certs.into_iter().map(Some).collect();
    let mut ordered = Vec::new();
    let mut next = remaining.get_mut(leaf).and_then(Option::take);
    while let Some(cert) = next {
        let self_issued = is_self_issued(&cert.x509);
        let issuer = cert.x509.issuer().as_raw().to_vec();
        ordered.push(cert);
        if self_issued {
            break;
        }
        next = remaining
            .iter_mut()
            .find(|slot| {
                slot.as_ref()
                    .is_some_and(|candidate| candidate.x509.subject().as_raw() == issuer)
            })
            .and_then(Option::take);
    }
    Ok(ordered)
}

/// Verifies that `child` is signed by `issuer` and that `issuer` is a CA.
fn check_issued_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    context: &str,
) -> Result<(), VerifyError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(VerifyError::chain(format!(
            "{context}: certificate {} names issuer {}, but the next certificate is {}",
            subject_cn(child),
            child.issuer(),
            subject_cn(issuer)
        )));
    }
    let is_ca = issuer
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|constraints| constraints.value.ca);
    if !is_ca {
        return Err(VerifyError::chain(format!(
            "{context}: issuer certificate {} is not a CA (basicConstraints cA is not set)",
            subject_cn(issuer)
        )));
    }
    child
        .verify_signature(Some(issuer.public_key()))
        .map_err(|error| {
            VerifyError::chain(format!(
                "{context}: signature of certificate {} does not verify under {}: {error}",
                subject_cn(child),
                subject_cn(issuer)
            ))
        })
}

/// Verifies a certificate chain given in any order, leaf to a trusted root, at `now`, and
/// returns it leaf first with the root last. A chain without its root is completed from the
/// full certificates in `anchors`.
pub(crate) fn verify_chain<'a>(
    ders: &'a [Vec<u8>],
    anchors: &'a TrustAnchors,
    now: i64,
    context: &str,
    window: &mut Window,
) -> Result<Vec<Cert<'a>>, VerifyError> {
    if ders.is_empty() {
        return Err(VerifyError::malformed(format!("{context}: no certificate")));
    }
    if ders.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::malformed(format!(
            "{context}: {} certificates exceed the limit of {MAX_CHAIN_LEN}",
            ders.len()
        )));
    }
    let mut certs = Vec::with_capacity(ders.len());
    for (index, der) in ders.iter().enumerate() {
        let x509 = parse_certificate(der, &format!("{context} certificate {index}"))?;
        certs.push(Cert { der, x509 });
    }
    let mut chain = order_leaf_first(certs, context)?;

    for pair in chain.windows(2) {
        if let [child, issuer] = pair {
            check_issued_by(&child.x509, &issuer.x509, context)?;
        }
    }

    let Some(last) = chain.last() else {
        return Err(VerifyError::malformed(format!("{context}: no certificate")));
    };
    if is_self_issued(&last.x509) {
        last.x509.verify_signature(None).map_err(|error| {
            VerifyError::chain(format!(
                "{context}: self-signature of root {} does not verify: {error}",
                subject_cn(&last.x509)
            ))
        })?;
        if !anchors.contains(last.der) {
            return Err(VerifyError::chain(format!(
                "{context}: untrusted root {} (SHA-256 {}): it is not one of the trust anchors",
                subject_cn(&last.x509),
                hex::encode(crate::roots::sha256(last.der))
            )));
        }
    } else {
        let mut found = None;
        for der in anchors.certificates() {
            let Ok(root) = parse_certificate(der, "trust anchor") else {
                continue;
            };
            if check_issued_by(&last.x509, &root, context).is_ok() {
                found = Some(Cert { der, x509: root });
                break;
            }
        }
        let root = found.ok_or_else(|| {
            VerifyError::chain(format!(
                "{context}: untrusted root: no trust anchor issued {} (issuer {})",
                subject_cn(&last.x509),
                last.x509.issuer()
            ))
        })?;
        chain.push(root);
    }

    for cert in &chain {
        let validity = cert.x509.validity();
        window.check(
            &format!("certificate {}", subject_cn(&cert.x509)),
            ("notBefore", validity.not_before.timestamp()),
            ("notAfter", validity.not_after.timestamp()),
            now,
            false,
        )?;
    }
    Ok(chain)
}

/// Parses a DER CRL.
pub(crate) fn parse_crl<'a>(
    der: &'a [u8],
    context: &str,
) -> Result<CertificateRevocationList<'a>, VerifyError> {
    match CertificateRevocationList::from_der(der) {
        Ok((_, crl)) => Ok(crl),
        Err(error) => Err(VerifyError::malformed(format!(
            "{context}: invalid CRL: {error}"
        ))),
    }
}

/// Checks a CRL's issuer name, its signature under `issuer` and its validity at `now`.
pub(crate) fn check_crl(
    crl: &CertificateRevocationList<'_>,
    issuer: &X509Certificate<'_>,
    now: i64,
    context: &str,
    window: &mut Window,
) -> Result<(), VerifyError> {
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "{context} is issued by {}, but the certificate to check is issued by {}",
                crl.issuer(),
                issuer.subject()
            ),
        ));
    }
    crl.verify_signature(issuer.public_key()).map_err(|error| {
        VerifyError::signature(format!(
            "{context} signature does not verify under {}: {error}",
            subject_cn(issuer)
        ))
    })?;
    let next_update = crl
        .next_update()
        .ok_or_else(|| VerifyError::malformed(format!("{context} has no nextUpdate")))?;
    window.check(
        context,
        ("thisUpdate", crl.last_update().timestamp()),
        ("nextUpdate", next_update.timestamp()),
        now,
        true,
    )
}

/// Fails with `Reason::Revoked` when `cert` is listed in `crl`.
pub(crate) fn check_not_revoked(
    crl: &CertificateRevocationList<'_>,
    cert: &X509Certificate<'_>,
    context: &str,
) -> Result<(), VerifyError> {
    let serial = cert.tbs_certificate.raw_serial();
    if crl
        .iter_revoked_certificates()
        .any(|revoked| revoked.raw_serial() == serial)
    {
        return Err(VerifyError::new(
            Reason::Revoked,
            format!(
                "certificate {} (serial {}) is revoked by the {context}",
                subject_cn(cert),
                cert.tbs_certificate.raw_serial_as_string()
            ),
        ));
    }
    Ok(())
}
