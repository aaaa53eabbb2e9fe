//! Appraisal policy: which verified claims a relying party accepts.
//!
//! A [`Verified`] only shows that the evidence is genuine. [`Policy::check`] decides whether the
//! platform it describes is acceptable: no debug mode, a known measurement, a TCB level that is
//! recent enough, fresh collateral and evidence. The configuration crate fills one policy per
//! node attestor; `Policy::default()` is the policy of `twid attest verify`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::claims::{Claims, SnpTcb};
use crate::{Reason, TcbStatus, Verified, VerifyError};

/// Limits on verified claims. Each list that is empty allows any value, except
/// [`Policy::allowed_ak_sha256`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Accept evidence from debug-mode enclaves, TDs, SEV-SNP guests and Nitro enclaves.
    /// Default false, because a debug TEE lets the host read its memory.
    pub allow_debug: bool,
    /// Allowed values of the main measurement: MRENCLAVE (SGX), MRTD (TDX), MEASUREMENT
    /// (SEV-SNP) or PCR0 (Nitro). Empty allows any. TPM evidence is matched with
    /// [`Policy::pcrs`] instead.
    pub allowed_measurements: Vec<Vec<u8>>,
    /// Allowed MRSIGNER values (SGX). Empty allows any.
    pub allowed_signers: Vec<[u8; 32]>,
    /// Minimum ISV SVN of the enclave (SGX).
    pub min_isv_svn: Option<u16>,
    /// TCB statuses to accept, for kinds that report one (SGX, TDX).
    pub allowed_tcb_statuses: Vec<TcbStatus>,
    /// Maximum age of the collateral: `now - Verified::collateral_issued_at`.
    pub max_collateral_age: Option<Duration>,
    /// Minimum SEV-SNP TCB. Every component of the reported, committed and launch TCB must
    /// be at least the component here; the FMC component is compared only when both sides
    /// carry one. The current TCB is never compared, because the host may roll it back.
    pub min_snp_tcb: Option<SnpTcb>,
    /// Allowed SEV-SNP chip IDs (64 bytes each). Empty allows any. A report with an all-zero
    /// chip ID (VLEK-signed or masked) never matches a non-empty list.
    pub allowed_chip_ids: Vec<Vec<u8>>,
    /// PCR values the evidence must contain, by index (TPM and Nitro).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// SHA-256 of the DER SubjectPublicKeyInfo of each enrolled TPM attestation key. Empty
    /// rejects all TPM evidence, because any software TPM can sign a quote with an
    /// unenrolled key.
    pub allowed_ak_sha256: Vec<[u8; 32]>,
    /// Maximum age of the evidence's own timestamp (the Nitro document timestamp, or for IAS
    /// the report timestamp that the verifier puts in `collateral_issued_at`). The server also
    /// caps every SVID issued on evidence of any kind at the attestation time plus this age.
    pub max_evidence_age: Option<Duration>,
}

/// The TCB statuses that [`Policy::default`] accepts: the platform has the latest TCB, and at
/// most needs software hardening or a configuration change that the verifier cannot see.
pub const DEFAULT_TCB_STATUSES: [TcbStatus; 4] = [
    TcbStatus::UpToDate,
    TcbStatus::SWHardeningNeeded,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::ConfigurationAndSWHardeningNeeded,
];

/// How far (in seconds) an evidence timestamp may lie in the future before it is rejected,
/// to allow for clock differences between the attester's platform and the verifier.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_debug: false,
            allowed_measurements: Vec::new(),
            allowed_signers: Vec::new(),
            min_isv_svn: None,
            allowed_tcb_statuses: DEFAULT_TCB_STATUSES.to_vec(),
            max_collateral_age: None,
            min_snp_tcb: None,
            allowed_chip_ids: Vec::new(),
            pcrs: BTreeMap::new(),
            allowed_ak_sha256: Vec::new(),
            max_evidence_age: None,
        }
    }
}

impl Policy {
    /// Checks verified claims against this policy at `now` (Unix seconds).
    ///
    /// # Errors
    /// Returns the first rule the claims break: [`Reason::Debug`] for debug mode,
    /// [`Reason::TcbLevel`] for a TCB status or SEV-SNP TCB below the minimum,
    /// [`Reason::Expired`] for collateral older than `max_collateral_age`,
    /// [`Reason::Freshness`] for evidence older than `max_evidence_age`, and
    /// [`Reason::Policy`] for every other value outside its list or bound. The message names
    /// the value and the rule.
    pub fn check(&self, verified: &Verified, now: i64) -> Result<(), VerifyError> {
        self.check_debug(verified)?;
        self.check_tcb_status(verified)?;
        self.check_collateral_age(verified, now)?;
        match &verified.claims {
            Claims::Sgx(claims) => {
                self.check_measurement("MRENCLAVE", &claims.mr_enclave)?;
                self.check_signer(&claims.mr_signer)?;
                self.check_isv_svn(claims.isv_svn)?;
                if verified.kind == crate::Kind::SgxIas {
                    self.check_evidence_age(
                        "IAS report timestamp",
                        verified.collateral_issued_at,
                        now,
                    )?;
                }
            }
            Claims::Tdx(claims) => self.check_measurement("MRTD", &claims.mr_td)?,
            Claims::Snp(claims) => {
                self.check_measurement("SEV-SNP MEASUREMENT", &claims.measurement)?;
                self.check_chip_id(&claims.chip_id)?;
                if let Some(minimum) = &self.min_snp_tcb {
                    check_snp_tcb("reported_tcb", &claims.reported_tcb, minimum)?;
                    check_snp_tcb("committed_tcb", &claims.committed_tcb, minimum)?;
                    check_snp_tcb("launch_tcb", &claims.launch_tcb, minimum)?;
                }
            }
            Claims::Nitro(claims) => {
                let pcr0 = claims.pcrs.get(&0).map(Vec::as_slice).unwrap_or_default();
                self.check_measurement("PCR0", pcr0)?;
                self.check_pcrs(&claims.pcrs)?;
                let seconds = i64::try_from(claims.timestamp_ms / 1000).unwrap_or(i64::MAX);
                self.check_evidence_age("Nitro document timestamp", Some(seconds), now)?;
            }
            Claims::Tpm(claims) => {
                self.check_pcrs(&claims.pcrs)?;
                self.check_ak(&claims.ak_sha256)?;
            }
        }
        Ok(())
    }

    fn check_debug(&self, verified: &Verified) -> Result<(), VerifyError> {
        if verified.debug() && !self.allow_debug {
            return Err(VerifyError::new(
                Reason::Debug,
                format!(
                    "{} evidence comes from a debug-mode TEE, whose memory the host can read; \
                     the policy has allow_debug = false",
                    verified.kind
                ),
            ));
        }
        Ok(())
    }

    fn check_tcb_status(&self, verified: &Verified) -> Result<(), VerifyError> {
        let Some(status) = verified.tcb_status else {
            return Ok(());
        };
        if self.allowed_tcb_statuses.contains(&status) {
            return Ok(());
        }
        let allowed: Vec<&str> = self
            .allowed_tcb_statuses
            .iter()
            .map(|status| status.as_str())
            .collect();
        let advisories = if verified.advisory_ids.is_empty() {
            String::new()
        } else {
            format!(" (advisories {})", verified.advisory_ids.join(", "))
        };
        Err(VerifyError::new(
            Reason::TcbLevel,
            format!(
                "TCB status {status}{advisories} is not in allowed_tcb_statuses [{}]; update \
                 the platform's microcode and firmware or extend the policy",
                allowed.join(", ")
            ),
        ))
    }

    fn check_collateral_age(&self, verified: &Verified, now: i64) -> Result<(), VerifyError> {
        // IAS evidence stores its report timestamp in collateral_issued_at, which
        // max_evidence_age covers.
        if verified.kind == crate::Kind::SgxIas {
            return Ok(());
        }
        let (Some(max_age), Some(issued_at)) =
            (self.max_collateral_age, verified.collateral_issued_at)
        else {
            return Ok(());
        };
        let age = now.saturating_sub(issued_at);
        if age > seconds(max_age) {
            return Err(VerifyError::expired(format!(
                "collateral issued at {} is {age}s old at {}, over max_collateral_age {}s; \
                 refresh the collateral",
                crate::utc_text(issued_at),
                crate::utc_text(now),
                seconds(max_age)
            )));
        }
        Ok(())
    }

    fn check_evidence_age(
        &self,
        what: &str,
        timestamp: Option<i64>,
        now: i64,
    ) -> Result<(), VerifyError> {
        let Some(max_age) = self.max_evidence_age else {
            return Ok(());
        };
        let Some(timestamp) = timestamp else {
            return Err(VerifyError::new(
                Reason::Freshness,
                format!("the evidence has no {what}, but the policy sets max_evidence_age"),
            ));
        };
        if timestamp > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
            return Err(VerifyError::new(
                Reason::Freshness,
                format!(
                    "{what} {} is more than {MAX_CLOCK_SKEW_SECONDS}s after now {}",
                    crate::utc_text(timestamp),
                    crate::utc_text(now)
                ),
            ));
        }
        let age = now.saturating_sub(timestamp);
        if age > seconds(max_age) {
            return Err(VerifyError::new(
                Reason::Freshness,
                format!(
                    "{what} {} is {age}s old at {}, over max_evidence_age {}s",
                    crate::utc_text(timestamp),
                    crate::utc_text(now),
                    seconds(max_age)
                ),
            ));
        }
        Ok(())
    }

    fn check_measurement(&self, name: &str, value: &[u8]) -> Result<(), VerifyError> {
        if self.allowed_measurements.is_empty()
            || self
                .allowed_measurements
                .iter()
                .any(|allowed| allowed == value)
        {
            return Ok(());
        }
        Err(VerifyError::policy(format!(
            "{name} {} is not in allowed_measurements ({} values); add it to the policy if \
             this image is trusted",
            hex::encode(value),
            self.allowed_measurements.len()
        )))
    }

    fn check_signer(&self, mr_signer: &[u8; 32]) -> Result<(), VerifyError> {
        if self.allowed_signers.is_empty() || self.allowed_signers.contains(mr_signer) {
            return Ok(());
        }
        Err(VerifyError::policy(format!(
            "MRSIGNER {} is not in allowed_signers ({} values)",
            hex::encode(mr_signer),
            self.allowed_signers.len()
        )))
    }

    fn check_isv_svn(&self, isv_svn: u16) -> Result<(), VerifyError> {
        match self.min_isv_svn {
            Some(minimum) if isv_svn < minimum => Err(VerifyError::policy(format!(
                "ISV SVN {isv_svn} is below min_isv_svn {minimum}"
            ))),
            _ => Ok(()),
        }
    }

    fn check_chip_id(&self, chip_id: &[u8]) -> Result<(), VerifyError> {
        if self.allowed_chip_ids.is_empty()
            || self
                .allowed_chip_ids
                .iter()
                .any(|allowed| allowed == chip_id)
        {
            return Ok(());
        }
        Err(VerifyError::policy(format!(
            "chip ID {} is not in allowed_chip_ids ({} values)",
            hex::encode(chip_id),
            self.allowed_chip_ids.len()
        )))
    }

    fn check_pcrs(&self, actual: &BTreeMap<u8, Vec<u8>>) -> Result<(), VerifyError> {
        for (index, expected) in &self.pcrs {
            match actual.get(index) {
                Some(value) if value == expected => {}
                Some(value) => {
                    return Err(VerifyError::policy(format!(
                        "PCR {index} is {} but the policy requires {}",
                        hex::encode(value),
                        hex::encode(expected)
                    )));
                }
                None => {
                    return Err(VerifyError::policy(format!(
                        "the evidence does not cover PCR {index}, which the policy requires to \
                         be {}",
                        hex::encode(expected)
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_ak(&self, ak_sha256: &[u8; 32]) -> Result<(), VerifyError> {
        if self.allowed_ak_sha256.contains(ak_sha256) {
            return Ok(());
        }
        Err(VerifyError::policy(format!(
            "TPM attestation key with SHA-256 {} is not enrolled in allowed_ak_sha256 ({} \
             values); add the key's SPKI SHA-256 to enroll this TPM",
            hex::encode(ak_sha256),
            self.allowed_ak_sha256.len()
        )))
    }
}

fn check_snp_tcb(field: &str, actual: &SnpTcb, minimum: &SnpTcb) -> Result<(), VerifyError> {
    let mut components = vec![
        ("bootloader", actual.bootloader, minimum.bootloader),
        ("tee", actual.tee, minimum.tee),
        ("snp", actual.snp, minimum.snp),
        ("microcode", actual.microcode, minimum.microcode),
    ];
    if let (Some(actual_fmc), Some(minimum_fmc)) = (actual.fmc, minimum.fmc) {
        components.push(("fmc", actual_fmc, minimum_fmc));
    }
    for (name, value, bound) in components {
        if value < bound {
            return Err(VerifyError::new(
                Reason::TcbLevel,
                format!(
                    "SEV-SNP {field}.{name} is {value}, below the minimum {bound} of min_tcb; \
                     update the host firmware"
                ),
            ));
        }
    }
    Ok(())
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use crate::claims::{NitroClaims, SgxClaims, SnpClaims, SnpSigningKey, TdxClaims, TpmClaims};

    const NOW: i64 = 1_760_000_000;

    fn verified(kind: Kind, claims: Claims, tcb_status: Option<TcbStatus>) -> Verified {
        Verified {
            kind,
            claims,
            tcb_status,
            advisory_ids: Vec::new(),
            collateral_issued_at: None,
            valid_until: None,
            evidence_sha256: [0; 32],
        }
    }

    fn sgx(debug: bool) -> Verified {
        let claims = SgxClaims {
            mr_enclave: [1; 32],
            mr_signer: [2; 32],
            isv_prod_id: 0,
            isv_svn: 3,
            attributes: [0; 16],
            cpu_svn: [0; 16],
            report_data: [0; 64],
            debug,
            platform: None,
        };
        verified(
            Kind::SgxDcap,
            Claims::Sgx(claims),
            Some(TcbStatus::UpToDate),
        )
    }

    fn tdx() -> Verified {
        let claims = TdxClaims {
            tee_tcb_svn: [0; 16],
            mr_seam: [0; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: [0; 8],
            xfam: [0; 8],
            mr_td: [7; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr: [[0; 48]; 4],
            report_data: [0; 64],
            tee_tcb_svn2: None,
            mr_service_td: None,
            debug: false,
            platform: None,
        };
        verified(Kind::Tdx, Claims::Tdx(claims), Some(TcbStatus::UpToDate))
    }

    fn tcb(level: u8) -> SnpTcb {
        SnpTcb {
            bootloader: level,
            tee: level,
            snp: level,
            microcode: level,
            fmc: None,
        }
    }

    fn snp() -> SnpClaims {
        SnpClaims {
            version: 2,
            guest_svn: 0,
            policy: 0x30000,
            debug: false,
            vmpl: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            measurement: [9; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            report_data: [0; 64],
            chip_id: [5; 64],
            report_id: [0; 32],
            reported_tcb: tcb(10),
            committed_tcb: tcb(10),
            launch_tcb: tcb(10),
            current_tcb: tcb(10),
            signing_key: SnpSigningKey::Vcek,
            product: "Milan".to_owned(),
        }
    }

    fn nitro(timestamp: i64) -> Verified {
        let claims = NitroClaims {
            module_id: "i-0".to_owned(),
            digest: "SHA384".to_owned(),
            timestamp_ms: u64::try_from(timestamp).expect("positive") * 1000,
            pcrs: BTreeMap::from([(0, vec![4; 48]), (8, vec![6; 48])]),
            public_key: None,
            user_data: None,
            nonce: None,
            debug: false,
        };
        verified(Kind::Nitro, Claims::Nitro(claims), None)
    }

    fn tpm() -> Verified {
        let claims = TpmClaims {
            pcr_bank: "sha256".to_owned(),
            pcrs: BTreeMap::from([(7, vec![3; 32])]),
            extra_data: vec![0; 64],
            pcr_digest: vec![0; 32],
            clock: 0,
            reset_count: 0,
            restart_count: 0,
            safe: true,
            firmware_version: 0,
            ak_sha256: [8; 32],
            replayed_pcrs: Vec::new(),
        };
        verified(Kind::Tpm, Claims::Tpm(claims), None)
    }

    fn reason(result: Result<(), VerifyError>) -> Reason {
        result.expect_err("policy should reject").reason
    }

    #[test]
    fn default_accepts_release_sgx() {
        assert_eq!(Policy::default().check(&sgx(false), NOW), Ok(()));
    }

    #[test]
    fn debug_rejected_unless_allowed() {
        let error = Policy::default().check(&sgx(true), NOW).expect_err("debug");
        assert_eq!(error.reason, Reason::Debug);
        assert!(error.message.contains("allow_debug"), "{error}");
        let policy = Policy {
            allow_debug: true,
            ..Policy::default()
        };
        assert_eq!(policy.check(&sgx(true), NOW), Ok(()));
    }

    #[test]
    fn default_tcb_statuses() {
        for status in TcbStatus::ALL {
            let mut evidence = sgx(false);
            evidence.tcb_status = Some(status);
            let result = Policy::default().check(&evidence, NOW);
            if DEFAULT_TCB_STATUSES.contains(&status) {
                assert_eq!(result, Ok(()), "{status}");
            } else {
                assert_eq!(reason(result), Reason::TcbLevel, "{status}");
            }
        }
    }

    #[test]
    fn tcb_status_message_names_advisories() {
        let mut evidence = sgx(false);
        evidence.tcb_status = Some(TcbStatus::OutOfDate);
        evidence.advisory_ids = vec!["INTEL-SA-00615".to_owned()];
        let error = Policy::default().check(&evidence, NOW).expect_err("status");
        assert!(error.message.contains("OutOfDate"), "{error}");
        assert!(error.message.contains("INTEL-SA-00615"), "{error}");
    }

    #[test]
    fn measurement_lists_per_kind() {
        let mut policy = Policy {
            allowed_measurements: vec![vec![1; 32]],
            ..Policy::default()
        };
        assert_eq!(policy.check(&sgx(false), NOW), Ok(()));
        let error = policy.check(&tdx(), NOW).expect_err("MRTD");
        assert_eq!(error.reason, Reason::Policy);
        assert!(error.message.contains(&hex::encode([7u8; 48])), "{error}");
        assert!(error.message.contains("MRTD"), "{error}");
        policy.allowed_measurements.push(vec![7; 48]);
        assert_eq!(policy.check(&tdx(), NOW), Ok(()));
        let snp_evidence = verified(Kind::Snp, Claims::Snp(snp()), None);
        assert_eq!(reason(policy.check(&snp_evidence, NOW)), Reason::Policy);
        assert_eq!(reason(policy.check(&nitro(NOW), NOW)), Reason::Policy);
        policy.allowed_measurements.push(vec![4; 48]);
        assert_eq!(policy.check(&nitro(NOW), NOW), Ok(()));
    }

    #[test]
    fn signer_and_isv_svn() {
        let policy = Policy {
            allowed_signers: vec![[9; 32]],
            ..Policy::default()
        };
        let error = policy.check(&sgx(false), NOW).expect_err("signer");
        assert_eq!(error.reason, Reason::Policy);
        assert!(error.message.contains("MRSIGNER"), "{error}");
        let policy = Policy {
            allowed_signers: vec![[2; 32]],
            min_isv_svn: Some(3),
            ..Policy::default()
        };
        assert_eq!(policy.check(&sgx(false), NOW), Ok(()));
        let policy = Policy {
            min_isv_svn: Some(4),
            ..Policy::default()
        };
        let error = policy.check(&sgx(false), NOW).expect_err("svn");
        assert_eq!(error.reason, Reason::Policy);
        assert!(error.message.contains("ISV SVN 3"), "{error}");
    }

    #[test]
    fn collateral_age_boundary() {
        let policy = Policy {
            max_collateral_age: Some(Duration::from_secs(100)),
            ..Policy::default()
        };
        let mut evidence = sgx(false);
        evidence.collateral_issued_at = Some(NOW - 100);
        assert_eq!(policy.check(&evidence, NOW), Ok(()));
        evidence.collateral_issued_at = Some(NOW - 101);
        let error = policy.check(&evidence, NOW).expect_err("old collateral");
        assert_eq!(error.reason, Reason::Expired);
        assert!(error.message.contains("101s old"), "{error}");
    }

    #[test]
    fn snp_minimum_tcb_components() {
        let policy = Policy {
            min_snp_tcb: Some(tcb(10)),
            ..Policy::default()
        };
        let evidence = verified(Kind::Snp, Claims::Snp(snp()), None);
        assert_eq!(policy.check(&evidence, NOW), Ok(()));
        for field in ["reported_tcb", "committed_tcb", "launch_tcb"] {
            let mut claims = snp();
            let low = SnpTcb {
                microcode: 9,
                ..tcb(10)
            };
            match field {
                "reported_tcb" => claims.reported_tcb = low,
                "committed_tcb" => claims.committed_tcb = low,
                _ => claims.launch_tcb = low,
            }
            let evidence = verified(Kind::Snp, Claims::Snp(claims), None);
            let error = policy.check(&evidence, NOW).expect_err(field);
            assert_eq!(error.reason, Reason::TcbLevel, "{field}");
            assert!(
                error.message.contains(&format!("{field}.microcode is 9")),
                "{error}"
            );
        }
        let mut claims = snp();
        claims.current_tcb = tcb(0);
        let evidence = verified(Kind::Snp, Claims::Snp(claims), None);
        assert_eq!(
            policy.check(&evidence, NOW),
            Ok(()),
            "current_tcb is ignored"
        );
    }

    #[test]
    fn snp_chip_id_list() {
        let evidence = verified(Kind::Snp, Claims::Snp(snp()), None);
        let policy = Policy {
            allowed_chip_ids: vec![vec![5; 64]],
            ..Policy::default()
        };
        assert_eq!(policy.check(&evidence, NOW), Ok(()));
        let mut claims = snp();
        claims.chip_id = [0; 64];
        let masked = verified(Kind::Snp, Claims::Snp(claims), None);
        assert_eq!(reason(policy.check(&masked, NOW)), Reason::Policy);
    }

    #[test]
    fn nitro_pcrs_and_age() {
        let policy = Policy {
            pcrs: BTreeMap::from([(8, vec![6; 48])]),
            max_evidence_age: Some(Duration::from_secs(60)),
            ..Policy::default()
        };
        assert_eq!(policy.check(&nitro(NOW - 60), NOW), Ok(()));
        let error = policy.check(&nitro(NOW - 61), NOW).expect_err("old");
        assert_eq!(error.reason, Reason::Freshness);
        let error = policy
            .check(&nitro(NOW + MAX_CLOCK_SKEW_SECONDS + 1), NOW)
            .expect_err("future");
        assert_eq!(error.reason, Reason::Freshness);
        let policy = Policy {
            pcrs: BTreeMap::from([(8, vec![0; 48])]),
            ..Policy::default()
        };
        let error = policy.check(&nitro(NOW), NOW).expect_err("pcr8");
        assert_eq!(error.reason, Reason::Policy);
        assert!(error.message.contains("PCR 8"), "{error}");
        let policy = Policy {
            pcrs: BTreeMap::from([(3, vec![0; 48])]),
            ..Policy::default()
        };
        let error = policy.check(&nitro(NOW), NOW).expect_err("pcr3");
        assert!(error.message.contains("does not cover PCR 3"), "{error}");
    }

    #[test]
    fn tpm_needs_enrolled_ak() {
        let error = Policy::default().check(&tpm(), NOW).expect_err("no AK");
        assert_eq!(error.reason, Reason::Policy);
        assert!(error.message.contains(&hex::encode([8u8; 32])), "{error}");
        let policy = Policy {
            allowed_ak_sha256: vec![[8; 32]],
            pcrs: BTreeMap::from([(7, vec![3; 32])]),
            ..Policy::default()
        };
        assert_eq!(policy.check(&tpm(), NOW), Ok(()));
        let policy = Policy {
            allowed_ak_sha256: vec![[8; 32]],
            pcrs: BTreeMap::from([(7, vec![4; 32])]),
            ..Policy::default()
        };
        assert_eq!(reason(policy.check(&tpm(), NOW)), Reason::Policy);
    }
}
