//! Distinguished names: the configurable CA subject and its DER encoding.

use crate::CaError;
use crate::der::{DerWriter, TAG_PRINTABLE_STRING, TAG_SEQUENCE, TAG_SET, TAG_UTF8_STRING, oid};

/// Upper bound of organizationName and commonName in RFC 5280 appendix A.1, in characters.
const MAX_NAME_CHARS: usize = 64;

/// The subject of CA certificates. Each value becomes its own relative distinguished name,
/// in the order countries, organizations, common name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSubject {
    /// countryName values: two-letter codes, encoded as PrintableString.
    pub country: Vec<String>,
    /// organizationName values, 1 to 64 characters each, encoded as UTF8String.
    pub organization: Vec<String>,
    /// The commonName, 1 to 64 characters, encoded as UTF8String.
    pub common_name: Option<String>,
}

impl Default for CaSubject {
    /// Returns SPIRE's default CA subject, C=US, O=SPIFFE.
    fn default() -> Self {
        Self {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: None,
        }
    }
}

impl CaSubject {
    /// Encodes the subject as a DER Name.
    ///
    /// An empty subject is rejected because OpenSSL treats a certificate whose issuer and
    /// subject are both empty as self-issued, so leaves of such a CA would look self-signed.
    pub(crate) fn to_name_der(&self) -> Result<Vec<u8>, CaError> {
        if self.country.is_empty() && self.organization.is_empty() && self.common_name.is_none() {
            return Err(CaError::InvalidSubject(
                "the subject needs at least one country, organization or common name".to_owned(),
            ));
        }
        for country in &self.country {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(CaError::InvalidSubject(format!(
                    "country {country:?} is not a two-letter code"
                )));
            }
        }
        for (field, value) in self
            .organization
            .iter()
            .map(|o| ("organization", o))
            .chain(self.common_name.iter().map(|cn| ("common name", cn)))
        {
            let chars = value.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS || value.chars().any(char::is_control) {
                return Err(CaError::InvalidSubject(format!(
                    "{field} {value:?} must be 1 to {MAX_NAME_CHARS} characters without control characters"
                )));
            }
        }
        let mut writer = DerWriter::with_capacity(128);
        writer.nested(TAG_SEQUENCE, |w| {
            for country in &self.country {
                write_attribute(
                    w,
                    oid::COUNTRY_NAME,
                    TAG_PRINTABLE_STRING,
                    country.as_bytes(),
                );
            }
            for organization in &self.organization {
                write_attribute(
                    w,
                    oid::ORGANIZATION_NAME,
                    TAG_UTF8_STRING,
                    organization.as_bytes(),
                );
            }
            if let Some(common_name) = &self.common_name {
                write_attribute(w, oid::COMMON_NAME, TAG_UTF8_STRING, common_name.as_bytes());
            }
        });
        Ok(writer.into_vec())
    }
}

/// Writes one single-valued relative distinguished name.
pub(crate) fn write_attribute(writer: &mut DerWriter, oid: &[u8], tag: u8, value: &[u8]) {
    writer.nested(TAG_SET, |w| {
        w.nested(TAG_SEQUENCE, |w| {
            w.raw(oid);
            w.tlv(tag, value);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::X509Name;

    fn parse(der: &[u8]) -> String {
        let (rest, name) = X509Name::from_der(der).unwrap();
        assert!(rest.is_empty());
        name.to_string()
    }

    #[test]
    fn default_is_spire_default() {
        let der = CaSubject::default().to_name_der().unwrap();
        assert_eq!(parse(&der), "C=US, O=SPIFFE");
    }

    #[test]
    fn keeps_every_value_in_order() {
        let subject = CaSubject {
            country: vec!["US".into(), "DE".into()],
            organization: vec!["Acme".into(), "Ünïcode Org".into()],
            common_name: Some("Acme CA".into()),
        };
        let der = subject.to_name_der().unwrap();
        assert_eq!(parse(&der), "C=US, C=DE, O=Acme, O=Ünïcode Org, CN=Acme CA");
    }

    #[test]
    fn rejects_invalid_subjects() {
        let empty = CaSubject {
            country: vec![],
            organization: vec![],
            common_name: None,
        };
        assert!(empty.to_name_der().is_err());
        let cases = [
            ("USA", "Acme", None),
            ("U1", "Acme", None),
            ("US", "", None),
            ("US", "Acme", Some("x".repeat(65))),
            ("US", "Acme\n", None),
        ];
        for (country, organization, common_name) in cases {
            let subject = CaSubject {
                country: vec![country.into()],
                organization: vec![organization.into()],
                common_name: common_name.clone(),
            };
            assert!(
                subject.to_name_der().is_err(),
                "accepted {country:?} {organization:?} {common_name:?}"
            );
        }
    }
}
