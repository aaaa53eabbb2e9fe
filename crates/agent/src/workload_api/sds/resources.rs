//! Pure functions that turn a cache snapshot and the caller's selectors into Envoy `Secret`
//! resources, with the resource names of SPIRE's agent `sds` block.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::spiffe_cert_validator_config::TrustDomain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tonic::Status;
use twid_config::SdsConfig;

use super::super::caller::Identity;
use super::super::{no_identity, responses};
use crate::cache::{CachedEntry, Snapshot};

/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret`, the only type SDS serves.
pub(crate) const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Extension name of Envoy's SPIFFE certificate validator.
const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";

/// The resources for one request or update.
#[derive(Debug, PartialEq)]
pub(crate) enum Resources {
    /// Every requested resource, in a stable order.
    Ready(Vec<Any>),
    /// A requested resource is an SVID that the server has not signed yet.
    Pending,
}

/// Builds the secrets named in `names` for the caller; empty `names` means every SVID of the
/// caller by SPIFFE ID, the default bundle, the all-bundles resource (SPIFFE validator only)
/// and every federated bundle by trust domain ID, as SPIRE does.
///
/// # Errors
/// PermissionDenied when no entry matches the caller; InvalidArgument for a name that is no
/// resource of this caller, and for the all-bundles name when the SPIFFE validator is disabled.
pub(crate) fn build(
    snapshot: &Snapshot,
    caller: &Identity,
    names: &[String],
    config: &SdsConfig,
) -> Result<Resources, Status> {
    let entries = responses::identities(snapshot, &caller.selectors);
    if entries.is_empty() {
        return Err(no_identity(caller));
    }
    let all = names.is_empty();
    let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let spiffe_validator = !config.disable_spiffe_cert_validation;
    let bundles = caller_bundles(snapshot, &entries);
    let mut secrets = Vec::new();
    let mut found: BTreeSet<&str> = BTreeSet::new();

    if all || wanted.contains(config.default_bundle_name.as_str()) {
        let local = &bundles[0];
        secrets.push(validation_secret(
            &config.default_bundle_name,
            std::slice::from_ref(local),
            spiffe_validator,
        ));
        found.insert(&config.default_bundle_name);
    }
    let all_bundles = config.default_all_bundles_name.as_str();
    if wanted.contains(all_bundles) && !spiffe_validator {
        return Err(Status::invalid_argument(format!(
            "SDS resource {all_bundles:?} is not served while disable_spiffe_cert_validation is \
             set, because trusted_ca would pool trust domains; request each trust domain's \
             bundle by name"
        )));
    }
    if (all && spiffe_validator) || wanted.contains(all_bundles) {
        secrets.push(validation_secret(all_bundles, &bundles, true));
        found.insert(all_bundles);
    }
    for bundle in &bundles {
        let id = format!("spiffe://{}", bundle.name);
        for name in [id.as_str(), bundle.name.as_str()] {
            if let Some(requested) = wanted.get(name) {
                secrets.push(validation_secret(
                    requested,
                    std::slice::from_ref(bundle),
                    spiffe_validator,
                ));
                found.insert(requested);
            }
        }
        if all && bundle.name != bundles[0].name {
            secrets.push(validation_secret(
                &id,
                std::slice::from_ref(bundle),
                spiffe_validator,
            ));
        }
    }

    let mut pending = false;
    for (index, cached) in entries.iter().enumerate() {
        let id = cached.entry.spiffe_id.as_str();
        let as_default = index == 0 && wanted.contains(config.default_svid_name.as_str());
        let by_id = all || wanted.contains(id);
        if !as_default && !by_id {
            continue;
        }
        let Some(svid) = &cached.svid else {
            pending = true;
            continue;
        };
        if by_id {
            secrets.push(tls_secret(id, cached, svid.key_pkcs8.as_slice()));
            found.insert(id);
        }
        if as_default {
            secrets.push(tls_secret(
                &config.default_svid_name,
                cached,
                svid.key_pkcs8.as_slice(),
            ));
            found.insert(&config.default_svid_name);
        }
    }
    if pending {
        return Ok(Resources::Pending);
    }
    let missing: Vec<&str> = wanted.difference(&found).copied().collect();
    if !missing.is_empty() {
        return Err(Status::invalid_argument(format!(
            "no SDS resource named {missing:?} for this caller: request {:?}, {:?}, {:?}, one of \
             the caller's SPIFFE IDs, or a trust domain whose bundle the caller receives",
            config.default_svid_name, config.default_bundle_name, config.default_all_bundles_name
        )));
    }
    Ok(Resources::Ready(secrets.iter().map(to_any).collect()))
}

/// The CA certificates of one trust domain, as Envoy receives them.
#[derive(Debug)]
struct NamedBundle {
    /// Trust domain name, without `spiffe://`.
    name: String,
    pem: Vec<u8>,
}

/// Returns the local bundle first, then the federated bundles the caller's entries federate
/// with, ordered by trust domain.
fn caller_bundles(snapshot: &Snapshot, entries: &[&CachedEntry]) -> Vec<NamedBundle> {
    let local = snapshot
        .trust_domain_id
        .strip_prefix("spiffe://")
        .unwrap_or(&snapshot.trust_domain_id);
    let mut bundles = vec![NamedBundle {
        name: local.to_owned(),
        pem: pem_certificates(&snapshot.x509_authorities),
    }];
    for (id, bundle) in snapshot.federated_for(entries) {
        let name = id.strip_prefix("spiffe://").unwrap_or(&id).to_owned();
        bundles.push(NamedBundle {
            name,
            pem: pem_certificates(&bundle.x509_authorities),
        });
    }
    bundles
}

/// Builds a validation context secret: Envoy's SPIFFE validator with one trust domain entry
/// per bundle, or `trusted_ca` with the single bundle.
///
/// Limit: the format follows the configuration only, not the Envoy version in the request's
/// node, so an Envoy build without the SPIFFE validator extension needs
/// `disable_spiffe_cert_validation = true`.
fn validation_secret(name: &str, bundles: &[NamedBundle], spiffe_validator: bool) -> Secret {
    let context = if spiffe_validator {
        let config = SpiffeCertValidatorConfig {
            trust_domains: bundles
                .iter()
                .map(|bundle| TrustDomain {
                    name: bundle.name.clone(),
                    trust_bundle: Some(inline(bundle.pem.clone())),
                    ..TrustDomain::default()
                })
                .collect(),
            trust_bundles: None,
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR_NAME.to_owned(),
                typed_config: Some(Any {
                    type_url: SpiffeCertValidatorConfig::type_url(),
                    value: config.encode_to_vec(),
                }),
            }),
            ..CertificateValidationContext::default()
        }
    } else {
        let pem = bundles.iter().flat_map(|b| b.pem.iter().copied()).collect();
        CertificateValidationContext {
            trusted_ca: Some(inline(pem)),
            ..CertificateValidationContext::default()
        }
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

/// Builds a TLS certificate secret: the SVID chain and its PKCS#8 key, both PEM.
fn tls_secret(name: &str, cached: &CachedEntry, key_pkcs8: &[u8]) -> Secret {
    let chain = cached
        .svid
        .as_ref()
        .map(|svid| pem_certificates(&svid.chain))
        .unwrap_or_default();
    let certificate = TlsCertificate {
        certificate_chain: Some(inline(chain)),
        private_key: Some(inline(pem_block("PRIVATE KEY", key_pkcs8).into_bytes())),
        ..TlsCertificate::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(certificate)),
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..DataSource::default()
    }
}

fn to_any(secret: &Secret) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: secret.encode_to_vec(),
    }
}

fn pem_certificates(certificates: &[Vec<u8>]) -> Vec<u8> {
    certificates
        .iter()
        .flat_map(|der| pem_block("CERTIFICATE", der).into_bytes())
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
