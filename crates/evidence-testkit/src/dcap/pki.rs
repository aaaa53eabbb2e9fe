//! The test Intel PKI: the root, the PCK CA, the PCK leaf and the TCB signing certificate,
//! with the subject names, extensions and extension order of Intel's production certificates.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, PKCS_ECDSA_P256_SHA256, SerialNumber, SigningKey as _,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::der;
use super::{PckCa, PlatformSpec, Validity};

/// The distribution point of the root CA CRL in Intel's certificates. Nothing here fetches it.
const ROOT_CRL_URI: &str = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
/// The PCK CRL distribution points in Intel's PCK certificates. Nothing here fetches them.
const PROCESSOR_CRL_URI: &str =
    "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=processor&encoding=der";
const PLATFORM_CRL_URI: &str =
    "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der";

/// Subject common names of Intel's DCAP certificates.
const ROOT_CN: &str = "Intel SGX Root CA";
const PLATFORM_CA_CN: &str = "Intel SGX PCK Platform CA";
const PROCESSOR_CA_CN: &str = "Intel SGX PCK Processor CA";
const PCK_CN: &str = "Intel SGX PCK Certificate";
const TCB_SIGNING_CN: &str = "Intel SGX TCB Signing";

/// A P-256 key usable both by rcgen (DER ECDSA signatures in certificates and CRLs) and for the
/// raw r||s signatures that quotes and collateral JSON carry.
pub(super) struct SigningKey {
    rcgen: KeyPair,
    raw: EcdsaKeyPair,
}

impl SigningKey {
    pub(super) fn generate() -> SigningKey {
        let rcgen =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation failed");
        let raw =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rcgen.serialized_der())
                .expect("aws-lc-rs rejected the PKCS#8 key that rcgen generated");
        SigningKey { rcgen, raw }
    }

    /// Signs `message` with ECDSA P-256 / SHA-256 and returns the 64-byte r||s signature.
    pub(super) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        let signature = self
            .raw
            .sign(&SystemRandom::new(), message)
            .expect("ECDSA P-256 signing failed");
        let mut out = [0u8; 64];
        out.copy_from_slice(signature.as_ref());
        out
    }

    /// Signs `message` with ECDSA P-256 / SHA-256 and returns the DER signature that
    /// certificates and CRLs carry.
    fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        self.rcgen
            .sign(message)
            .expect("ECDSA P-256 signing failed")
    }

    /// Returns the public key as the 64 bytes x||y, the form quotes carry.
    pub(super) fn public_xy(&self) -> [u8; 64] {
        // aws-lc-rs returns the uncompressed point 0x04 || x || y.
        let point = self.raw.public_key().as_ref();
        let mut out = [0u8; 64];
        out.copy_from_slice(&point[1..65]);
        out
    }
}

/// A certificate with the parameters and key needed to issue from it.
pub(super) struct IssuedCertificate {
    pub(super) der: Vec<u8>,
    pub(super) serial: Vec<u8>,
    /// The subject key identifier, which CRLs from this issuer name as authority key ID.
    key_id: Vec<u8>,
    params: CertificateParams,
    pub(super) key: SigningKey,
}

impl IssuedCertificate {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key.rcgen)
    }
}

/// Every certificate and CRL of one test platform.
pub(super) struct Pki {
    pub(super) root: IssuedCertificate,
    pub(super) pck_ca: IssuedCertificate,
    pub(super) pck: IssuedCertificate,
    pub(super) tcb_signing: IssuedCertificate,
    pub(super) root_crl: Vec<u8>,
    pub(super) pck_crl: Vec<u8>,
}

impl Pki {
    pub(super) fn generate(spec: &PlatformSpec) -> Pki {
        let root = issue_root(&spec.root_validity);
        let (pck_ca_cn, pck_crl_uri) = match spec.pck_ca {
            PckCa::Processor => (PROCESSOR_CA_CN, PROCESSOR_CRL_URI),
            PckCa::Platform => (PLATFORM_CA_CN, PLATFORM_CRL_URI),
        };
        let pck_ca = issue(
            &root,
            CertificateTemplate {
                common_name: pck_ca_cn,
                validity: &spec.ca_validity,
                crl_uri: ROOT_CRL_URI,
                path_len: Some(0),
                sgx_extension: None,
            },
        );
        let tcb_signing = issue(
            &root,
            CertificateTemplate {
                common_name: TCB_SIGNING_CN,
                validity: &spec.ca_validity,
                crl_uri: ROOT_CRL_URI,
                path_len: None,
                sgx_extension: None,
            },
        );
        let sgx_extension = pck_sgx_extension(spec);
        let pck = issue(
            &pck_ca,
            CertificateTemplate {
                common_name: PCK_CN,
                validity: &spec.pck_validity,
                crl_uri: pck_crl_uri,
                path_len: None,
                sgx_extension: Some(sgx_extension),
            },
        );

        let mut root_revoked = Vec::new();
        if spec.revoked_pck_ca {
            root_revoked.push(pck_ca.serial.clone());
        }
        let root_crl = issue_crl(&root, &spec.crl_validity, root_revoked);

        // Intel's PCK CRLs list many revoked certificates; two unrelated serials keep a
        // verifier from passing only because the list is empty.
        let mut pck_revoked = vec![random_serial(), random_serial()];
        if spec.revoked_pck {
            pck_revoked.push(pck.serial.clone());
        }
        let pck_crl = issue_crl(&pck_ca, &spec.crl_validity, pck_revoked);

        Pki {
            root,
            pck_ca,
            pck,
            tcb_signing,
            root_crl,
            pck_crl,
        }
    }
}

fn pck_sgx_extension(spec: &PlatformSpec) -> Vec<u8> {
    let platform = match spec.pck_ca {
        PckCa::Processor => None,
        PckCa::Platform => Some(der::PlatformFields {
            platform_instance_id: &spec.platform_instance_id,
            dynamic_platform: true,
            cached_keys: true,
            smt_enabled: true,
        }),
    };
    der::sgx_extension(&der::SgxExtension {
        ppid: &spec.ppid,
        cpu_svn_components: &spec.cpu_svn_components,
        pce_svn: spec.pce_svn,
        pce_id: &spec.pce_id,
        fmspc: &spec.fmspc,
        platform,
    })
}

struct CertificateTemplate<'a> {
    common_name: &'a str,
    validity: &'a Validity,
    crl_uri: &'a str,
    /// `None` for an end entity, else the CA path length constraint.
    path_len: Option<u8>,
    sgx_extension: Option<Vec<u8>>,
}

/// Builds parameters whose extensions come out in Intel's order: authority key identifier,
/// CRL distribution points, subject key identifier, key usage (critical), basic constraints
/// (critical), then the SGX extension. rcgen writes its own extensions in another order, so
/// all but the authority key identifier are custom extensions here.
fn params_for(template: &CertificateTemplate<'_>, key: &SigningKey) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = intel_name(template.common_name);
    params.not_before = to_datetime(template.validity.not_before);
    params.not_after = to_datetime(template.validity.not_after);
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.is_ca = IsCa::NoCa;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.use_authority_key_identifier_extension = true;

    let subject_key_id = params.key_identifier(&key.rcgen);
    let key_usage = match template.path_len {
        Some(_) => der::key_usage_ca(),
        None => der::key_usage_signing(),
    };
    let mut extensions = vec![
        CustomExtension::from_oid_content(
            der::OID_CRL_DISTRIBUTION_POINTS,
            der::crl_distribution_points(template.crl_uri),
        ),
        CustomExtension::from_oid_content(
            der::OID_SUBJECT_KEY_IDENTIFIER,
            der::subject_key_identifier(&subject_key_id),
        ),
        critical(CustomExtension::from_oid_content(
            der::OID_KEY_USAGE,
            key_usage,
        )),
        critical(CustomExtension::from_oid_content(
            der::OID_BASIC_CONSTRAINTS,
            der::basic_constraints(template.path_len),
        )),
    ];
    if let Some(sgx_extension) = &template.sgx_extension {
        extensions.push(CustomExtension::from_oid_content(
            der::OID_SGX_EXTENSION,
            sgx_extension.clone(),
        ));
    }
    params.custom_extensions = extensions;
    params
}

fn critical(mut extension: CustomExtension) -> CustomExtension {
    extension.set_criticality(true);
    extension
}

fn issue_root(validity: &Validity) -> IssuedCertificate {
    let key = SigningKey::generate();
    let template = CertificateTemplate {
        common_name: ROOT_CN,
        validity,
        crl_uri: ROOT_CRL_URI,
        path_len: Some(1),
        sgx_extension: None,
    };
    let params = params_for(&template, &key);
    let certificate = params
        .self_signed(&key.rcgen)
        .expect("signing the test root failed");
    finish(certificate.der().to_vec(), params, key)
}

fn issue(issuer: &IssuedCertificate, template: CertificateTemplate<'_>) -> IssuedCertificate {
    let key = SigningKey::generate();
    let params = params_for(&template, &key);
    let certificate = params
        .signed_by(&key.rcgen, &issuer.issuer())
        .expect("signing a test certificate failed");
    finish(certificate.der().to_vec(), params, key)
}

fn finish(der: Vec<u8>, params: CertificateParams, key: SigningKey) -> IssuedCertificate {
    let serial = params
        .serial_number
        .as_ref()
        .map(SerialNumber::to_bytes)
        .unwrap_or_default();
    let key_id = params.key_identifier(&key.rcgen);
    IssuedCertificate {
        der,
        serial,
        key_id,
        params,
        key,
    }
}

/// Issues a CRL in the layout of Intel's CRLs (see [`der::crl_tbs`]). rcgen's CRLs put the
/// authority key identifier before the CRL number, so the CRL is encoded here.
fn issue_crl(issuer: &IssuedCertificate, validity: &Validity, revoked: Vec<Vec<u8>>) -> Vec<u8> {
    assert!(
        validity.not_before <= validity.not_after,
        "CRL nextUpdate {} is before thisUpdate {}",
        validity.not_after,
        validity.not_before
    );
    let (_, issuer_cert) =
        X509Certificate::from_der(&issuer.der).expect("a generated certificate parses");
    let tbs = der::crl_tbs(&der::CrlFields {
        issuer_name: issuer_cert.subject().as_raw(),
        issuer_key_id: &issuer.key_id,
        this_update: to_datetime(validity.not_before),
        next_update: to_datetime(validity.not_after),
        revoked_serials: &revoked,
    });
    let signature = issuer.key.sign_der(&tbs);
    der::sequence(&[tbs, der::ecdsa_with_sha256(), der::bit_string(&signature)])
}

/// Intel's subject and issuer names: CN, O, L, ST as UTF8String and C as PrintableString.
fn intel_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Intel Corporation");
    name.push(DnType::LocalityName, "Santa Clara");
    name.push(DnType::StateOrProvinceName, "CA");
    name.push(
        DnType::CountryName,
        DnValue::PrintableString("US".try_into().expect("\"US\" is a valid PrintableString")),
    );
    name
}

/// Generates a random 160-bit serial number, which encodes as 20 or 21 bytes like Intel's.
fn random_serial() -> Vec<u8> {
    let mut serial = vec![0u8; 20];
    SystemRandom::new()
        .fill(&mut serial)
        .expect("the system random generator failed");
    serial
}

pub(super) fn to_datetime(unix_seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .expect("validity times must be within the range of the time crate")
}

/// PEM-encodes one certificate with 64-character lines and LF line ends, as Intel's PCS does.
pub(super) fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
