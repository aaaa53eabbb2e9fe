//! Node attestation with hardware evidence: the configured attestors, their trust anchors and
//! collateral, and the verification of one envelope against a challenge.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use twid_config::EvidenceAttestorConfig;
use twid_evidence::claims::Claims;
use twid_evidence::result::AttestationResult;
use twid_evidence::verify::VerifyInputs;
use twid_evidence::{Envelope, Kind, Reason, TrustAnchors, Verified, VerifyError, dcap};

use crate::{ServerError, collateral_fetch};

/// One configured evidence attestor, with its roots and certificates read from disk.
#[derive(Debug)]
pub(crate) struct EvidenceAttestor {
    pub(crate) config: EvidenceAttestorConfig,
    anchors: TrustAnchors,
    /// The SEV-SNP ASK or ASVK and ARK from `vek_chain_path`.
    extra_certificates: Vec<Vec<u8>>,
}

/// The evidence attestors by name.
#[derive(Debug, Default)]
pub(crate) struct EvidenceAttestors(HashMap<String, Arc<EvidenceAttestor>>);

impl EvidenceAttestors {
    /// Reads the trust roots and certificate files of every configured attestor.
    pub(crate) fn load(configs: &[EvidenceAttestorConfig]) -> Result<Self, ServerError> {
        let mut attestors = HashMap::new();
        for config in configs {
            let anchors = if config.trusted_roots.is_empty() {
                TrustAnchors::production(config.kind)
            } else {
                let mut anchors = TrustAnchors::new();
                for path in &config.trusted_roots {
                    for der in read_pem_certificates(&config.name, "trusted_roots", path)? {
                        anchors.add_certificate(&der);
                    }
                }
                anchors
            };
            if let Some(dir) = &config.collateral_dir
                && !dir.is_dir()
            {
                return Err(ServerError::EvidenceFile {
                    attestor: config.name.clone(),
                    key: "collateral_dir",
                    path: dir.clone(),
                    reason: "it is not a readable folder; create it and fill it with the PCS \
                             collateral of every FMSPC your agents run on"
                        .to_owned(),
                });
            }
            if config.kind == Kind::Tpm && config.policy.allowed_ak_sha256.is_empty() {
                tracing::warn!(
                    attestor = %config.name,
                    "allowed_ak_sha256 is empty, so every TPM agent will be rejected until its \
                     attestation key is enrolled"
                );
            }
            let extra_certificates = match &config.vek_chain_path {
                Some(path) => read_pem_certificates(&config.name, "vek_chain_path", path)?,
                None => Vec::new(),
            };
            tracing::info!(
                attestor = %config.name,
                custom_roots = !config.trusted_roots.is_empty(),
                "evidence node attestor enabled"
            );
            attestors.insert(
                config.name.clone(),
                Arc::new(EvidenceAttestor {
                    config: config.clone(),
                    anchors,
                    extra_certificates,
                }),
            );
        }
        Ok(Self(attestors))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<EvidenceAttestor>> {
        self.0.get(name)
    }

    /// Returns the attestor for evidence of `kind`, preferring the one named like the kind
    /// when several are configured.
    pub(crate) fn for_kind(&self, kind: Kind) -> Option<&Arc<EvidenceAttestor>> {
        self.get(twid_config::attestor_name(kind)).or_else(|| {
            let mut matching: Vec<_> = self
                .0
                .iter()
                .filter(|(_, attestor)| attestor.config.kind == kind)
                .collect();
            matching.sort_by(|a, b| a.0.cmp(b.0));
            matching.first().map(|(_, attestor)| *attestor)
        })
    }

    /// Returns the configured attestor names, sorted, for error messages.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Reads every PEM `CERTIFICATE` block of `path`; an attestor setting without one is an error.
fn read_pem_certificates(
    attestor: &str,
    key: &'static str,
    path: &Path,
) -> Result<Vec<Vec<u8>>, ServerError> {
    let invalid = |reason: String| ServerError::EvidenceFile {
        attestor: attestor.to_owned(),
        key,
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| invalid(error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .map(|cert| cert.map(|cert| cert.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("invalid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid("it contains no PEM CERTIFICATE block".to_owned()));
    }
    Ok(certificates)
}

impl EvidenceAttestor {
    /// Verifies an envelope at `now`: its signatures and chains, that it binds `nonce` and
    /// the CSR key, and `policy`, the attestor's policy that `PolicyStore::applied` returned.
    /// Blocking: reads collateral files and verifies signatures.
    pub(crate) fn verify(
        &self,
        envelope_json: &[u8],
        nonce: &[u8],
        public_key_spki_der: &[u8],
        policy: &twid_evidence::policy::Policy,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let mut envelope = Envelope::from_json(envelope_json)?;
        if envelope.kind != self.config.kind {
            return Err(VerifyError::policy(format!(
                "node attestor {} accepts {} evidence, but the agent sent {} evidence",
                self.config.name, self.config.kind, envelope.kind
            )));
        }
        let inputs = self.inputs(&mut envelope, now)?;
        let verified = twid_evidence::verify::verify_envelope(&envelope, &inputs, now)?;
        twid_evidence::binding::check(&verified, nonce, public_key_spki_der)?;
        policy.check(&verified, now)?;
        Ok(verified)
    }

    /// Appraises an envelope for a relying party: verification and policy like
    /// [`EvidenceAttestor::verify`], with the binding checked only when the caller gives a
    /// nonce and key. Failures, including evidence of another kind than the attestor's,
    /// become a contraindicated result, not an error.
    pub(crate) fn appraise(
        &self,
        envelope_json: &[u8],
        binding: Option<(&[u8], &[u8])>,
        applied: &crate::policy::AppliedPolicy,
        now: i64,
    ) -> AttestationResult {
        let verified = Envelope::from_json(envelope_json).and_then(|mut envelope| {
            // The roots and the policy belong to one kind, so evidence of another kind must
            // not be appraised with them.
            if envelope.kind != self.config.kind {
                return Err(VerifyError::policy(format!(
                    "node attestor {} accepts {} evidence, but the envelope contains {} evidence",
                    self.config.name, self.config.kind, envelope.kind
                )));
            }
            let inputs = self.inputs(&mut envelope, now)?;
            twid_evidence::verify::verify_envelope(&envelope, &inputs, now)
        });
        let verified = match verified {
            Ok(verified) => verified,
            Err(error) => {
                return AttestationResult {
                    verified: None,
                    error: Some(error),
                    policy_version: applied.version,
                    binding_checked: false,
                };
            }
        };
        let checked = binding
            .map_or(Ok(()), |(nonce, key)| {
                twid_evidence::binding::check(&verified, nonce, key)
            })
            .and_then(|()| applied.policy.check(&verified, now));
        AttestationResult {
            verified: Some(verified),
            error: checked.err(),
            policy_version: applied.version,
            binding_checked: binding.is_some(),
        }
    }

    /// Builds the verification inputs. With `collateral_dir` set, DCAP collateral always comes
    /// from there and collateral sent with the quote is dropped: an attester could otherwise
    /// keep sending an older, still unexpired TCB info or CRL from before a TCB recovery or
    /// a revocation. With `pcs_url` or `kds_url` set, missing or expired documents are fetched
    /// first, which blocks for up to 10 seconds per request.
    fn inputs(&self, envelope: &mut Envelope, now: i64) -> Result<VerifyInputs, VerifyError> {
        let mut inputs = VerifyInputs {
            anchors: self.anchors.clone(),
            dcap_collateral: None,
            extra_certificates: self.extra_certificates.clone(),
        };
        if matches!(envelope.kind, Kind::SgxDcap | Kind::Tdx)
            && let Some(dir) = &self.config.collateral_dir
        {
            if envelope.collateral.take().is_some() {
                tracing::debug!(
                    attestor = %self.config.name,
                    "ignoring the collateral sent with the quote; collateral_dir is set"
                );
            }
            inputs.dcap_collateral = Some(self.dcap_collateral(dir, envelope, now)?);
        }
        if envelope.kind == Kind::Snp
            && envelope.certificates.is_empty()
            && let (Some(kds_url), Some(dir)) = (&self.config.kds_url, &self.config.collateral_dir)
        {
            let vcek = collateral_fetch::vcek(
                kds_url,
                dir,
                &envelope.evidence,
                &self.extra_certificates,
                &self.anchors,
                now,
            )?;
            envelope.certificates.push(vcek);
        }
        Ok(inputs)
    }

    /// Reads the collateral for a quote from the cache, and fetches it from `pcs_url` when it
    /// is set and the cache has no usable, unexpired entry.
    fn dcap_collateral(
        &self,
        dir: &Path,
        envelope: &Envelope,
        now: i64,
    ) -> Result<dcap::Collateral, VerifyError> {
        let cached = load_collateral(dir, &envelope.evidence);
        let Some(pcs_url) = &self.config.pcs_url else {
            return cached;
        };
        match cached {
            Ok(collateral) if !collateral_fetch::is_expired(&collateral, now) => {
                return Ok(collateral);
            }
            Ok(_) => tracing::info!(
                attestor = %self.config.name,
                "cached DCAP collateral has passed its nextUpdate; fetching it again"
            ),
            Err(error) => tracing::info!(
                attestor = %self.config.name,
                reason = %error.message,
                "no usable cached DCAP collateral; fetching it"
            ),
        }
        // NOTE: failed fetches are not rate-limited. While the service is unreachable, every
        // quote of an uncached FMSPC sends up to four requests of up to 10 seconds each.
        collateral_fetch::fetch_dcap_collateral(
            pcs_url,
            dir,
            &envelope.evidence,
            envelope.kind,
            &self.anchors,
            now,
        )
    }
}

/// Reads the DCAP collateral for a quote's FMSPC from the cache folder: `<FMSPC>/` (upper-case
/// hex) with the PCS files, or else `<fmspc>.json` in dcap-qvl's layout.
fn load_collateral(dir: &Path, quote: &[u8]) -> Result<dcap::Collateral, VerifyError> {
    let fmspc = dcap::quote_fmspc(quote)?;
    let folder = dir.join(hex::encode_upper(fmspc));
    if folder.is_dir() {
        return load_pcs_folder(&folder);
    }
    let json = dir.join(format!("{}.json", hex::encode(fmspc)));
    match std::fs::read(&json) {
        Ok(bytes) => dcap::Collateral::from_dcap_qvl_json(&bytes).map_err(|error| {
            VerifyError::new(
                error.reason,
                format!("{}: {}", json.display(), error.message),
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "no DCAP collateral for FMSPC {} in collateral_dir: neither {} nor {} exists; \
                 fetch the PCS collateral for this FMSPC or set pcs_url",
                hex::encode_upper(fmspc),
                folder.display(),
                json.display()
            ),
        )),
        Err(error) => Err(VerifyError::new(
            Reason::Collateral,
            format!("failed to read {}: {error}", json.display()),
        )),
    }
}

/// Reads the PCS files of one FMSPC folder.
fn load_pcs_folder(folder: &Path) -> Result<dcap::Collateral, VerifyError> {
    let names = dcap::PCS_FILE_NAMES;
    let read = |name: &str| -> Result<Vec<u8>, VerifyError> {
        let path = folder.join(name);
        std::fs::read(&path).map_err(|error| {
            VerifyError::new(
                Reason::Collateral,
                format!(
                    "failed to read DCAP collateral file {}: {error}",
                    path.display()
                ),
            )
        })
    };
    let tcb_info = read(names.tcb_info)?;
    let qe_identity = read(names.qe_identity)?;
    let tcb_info_issuer_chain = read(names.tcb_info_issuer_chain)?;
    let qe_identity_issuer_chain = match read(names.qe_identity_issuer_chain) {
        Ok(bytes) => Some(bytes),
        Err(_) if !folder.join(names.qe_identity_issuer_chain).exists() => None,
        Err(error) => return Err(error),
    };
    let pck_crl = read(names.pck_crl)?;
    let pck_crl_issuer_chain = read(names.pck_crl_issuer_chain)?;
    let root_ca_crl = read(names.root_ca_crl)?;
    dcap::Collateral::from_pcs_files(&dcap::PcsFiles {
        tcb_info: &tcb_info,
        qe_identity: &qe_identity,
        tcb_info_issuer_chain: &tcb_info_issuer_chain,
        qe_identity_issuer_chain: qe_identity_issuer_chain.as_deref(),
        pck_crl: &pck_crl,
        pck_crl_issuer_chain: &pck_crl_issuer_chain,
        root_ca_crl: &root_ca_crl,
    })
    .map_err(|error| {
        VerifyError::new(
            error.reason,
            format!("{}: {}", folder.display(), error.message),
        )
    })
}

/// Returns the last path segment of an evidence-attested agent ID. It names one instance
/// where the evidence has a per-instance value: the SEV-SNP REPORT_ID (assigned per guest at
/// launch), the Nitro module ID (one per enclave) and the TPM AK digest (one per TPM). SGX and
/// TDX evidence has no such value, so enclaves and guests of one measurement share an ID.
pub(crate) fn stable_id(verified: &Verified) -> String {
    match &verified.claims {
        Claims::Sgx(claims) => hex::encode(claims.mr_enclave),
        Claims::Tdx(claims) => hex::encode(claims.mr_td),
        Claims::Snp(claims) if claims.report_id.iter().any(|byte| *byte != 0) => {
            hex::encode(claims.report_id)
        }
        // Reports with an all-zero REPORT_ID, such as hand-built test reports, keep the chip
        // ID or measurement that named SEV-SNP agents before.
        Claims::Snp(claims) if claims.chip_id.iter().any(|byte| *byte != 0) => {
            hex::encode(claims.chip_id)
        }
        Claims::Snp(claims) => hex::encode(claims.measurement),
        Claims::Nitro(claims) => nitro_path_segment(&claims.module_id),
        Claims::Tpm(claims) => hex::encode(claims.ak_sha256),
    }
}

/// Longest Nitro module ID used verbatim in an agent ID; AWS module IDs (`i-<instance>-enc<id>`)
/// are about 40 characters.
const MAX_MODULE_ID_LEN: usize = 128;

/// Returns the module ID when it is safe as a URI path segment, else its SHA-256 in hex.
fn nitro_path_segment(module_id: &str) -> String {
    let safe = !module_id.is_empty()
        && module_id.len() <= MAX_MODULE_ID_LEN
        && module_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if safe {
        return module_id.to_owned();
    }
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        module_id.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use twid_evidence::claims::{NitroClaims, SnpClaims, SnpSigningKey, SnpTcb};

    use super::*;

    fn verified(claims: Claims, kind: Kind) -> Verified {
        Verified {
            kind,
            claims,
            tcb_status: None,
            advisory_ids: Vec::new(),
            collateral_issued_at: None,
            valid_until: None,
            evidence_sha256: [0; 32],
        }
    }

    fn snp(chip_id: [u8; 64], report_id: [u8; 32]) -> Verified {
        let tcb = SnpTcb {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
        };
        let claims = SnpClaims {
            version: 3,
            guest_svn: 0,
            policy: 0x30000,
            debug: false,
            vmpl: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            measurement: [0xab; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            report_data: [0; 64],
            chip_id,
            report_id,
            reported_tcb: tcb,
            committed_tcb: tcb,
            launch_tcb: tcb,
            current_tcb: tcb,
            signing_key: SnpSigningKey::Vlek,
            product: "Genoa".to_owned(),
        };
        verified(Claims::Snp(claims), Kind::Snp)
    }

    fn nitro(module_id: &str) -> Verified {
        let nitro = NitroClaims {
            module_id: module_id.to_owned(),
            digest: "SHA384".to_owned(),
            timestamp_ms: 0,
            pcrs: BTreeMap::from([(0, vec![0x0e; 48])]),
            public_key: None,
            user_data: None,
            nonce: None,
            debug: false,
        };
        verified(Claims::Nitro(nitro), Kind::Nitro)
    }

    #[test]
    fn stable_id_per_kind() {
        assert_eq!(stable_id(&snp([0x01; 64], [0; 32])), "01".repeat(64));
        assert_eq!(stable_id(&snp([0; 64], [0; 32])), "ab".repeat(48));
        assert_eq!(
            stable_id(&nitro("i-0123456789abcdef0-enc0123456789abcdef0")),
            "i-0123456789abcdef0-enc0123456789abcdef0"
        );
    }

    #[test]
    fn snp_stable_id_uses_report_id() {
        let chip = [0x01; 64];
        let first = stable_id(&snp(chip, [0x0a; 32]));
        let second = stable_id(&snp(chip, [0x0b; 32]));
        assert_eq!(first, "0a".repeat(32));
        assert_eq!(second, "0b".repeat(32));
    }

    #[test]
    fn nitro_unsafe_module_id_hashed() {
        let sha256_hex = |text: &str| {
            hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                text.as_bytes(),
            ))
        };
        let long = "a".repeat(MAX_MODULE_ID_LEN + 1);
        for module_id in [
            "",
            "i-0/../enc0",
            "i-0 enc0",
            "i-0%2fenc0",
            "i-é",
            long.as_str(),
        ] {
            let id = stable_id(&nitro(module_id));
            assert_eq!(id, sha256_hex(module_id), "module ID {module_id:?}");
        }
        let longest = "a".repeat(MAX_MODULE_ID_LEN);
        assert_eq!(stable_id(&nitro(&longest)), longest);
    }

    #[test]
    fn root_file_errors_name_key_and_path() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let error = read_pem_certificates("snp", "trusted_roots", &missing).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("NodeAttestor \"snp\""), "{message}");
        assert!(message.contains("trusted_roots"), "{message}");
        assert!(message.contains("missing.pem"), "{message}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        let error = read_pem_certificates("snp", "vek_chain_path", &empty).expect_err("empty");
        assert!(
            error.to_string().contains("no PEM CERTIFICATE block"),
            "{error}"
        );
    }

    #[test]
    fn collateral_dir_needs_a_quote() {
        let dir = tempfile::tempdir().expect("dir");
        let error = load_collateral(dir.path(), b"not a quote").expect_err("quote");
        assert_eq!(error.reason, Reason::Malformed);
    }
}
