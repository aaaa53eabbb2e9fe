//! Typed claims: what a verifier found in evidence that passed every cryptographic check.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of evidence, named as on the command line and in node attestor configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    SgxDcap,
    Tdx,
    SgxIas,
    Snp,
    Nitro,
    Tpm,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::SgxDcap,
        Kind::Tdx,
        Kind::SgxIas,
        Kind::Snp,
        Kind::Nitro,
        Kind::Tpm,
    ];

    /// Returns the name that `twid attest verify --kind` and evidence envelopes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SgxDcap => "sgx-dcap",
            Kind::Tdx => "tdx",
            Kind::SgxIas => "sgx-ias",
            Kind::Snp => "snp",
            Kind::Nitro => "nitro",
            Kind::Tpm => "tpm",
        }
    }

    /// Returns the selector type. Both SGX kinds share `sgx`, so one entry matches an enclave
    /// however it attested.
    pub fn selector_type(self) -> &'static str {
        match self {
            Kind::SgxDcap | Kind::SgxIas => "sgx",
            Kind::Tdx => "tdx",
            Kind::Snp => "snp",
            Kind::Nitro => "nitro",
            Kind::Tpm => "tpm",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// Parses a kind name. The node attestor spellings `sgx_dcap` and `sgx_ias` are accepted
    /// too, so a name copied from a configuration file or an agent ID works.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s || kind.as_str().replace('-', "_") == s)
            .ok_or_else(|| {
                format!("unknown evidence kind {s:?}; expected one of sgx-dcap, tdx, sgx-ias, snp, nitro, tpm")
            })
    }
}

/// A TCB status as Intel's PCS reports it. The status of the IAS `isvEnclaveQuoteStatus` maps
/// onto the same names (`OK` becomes `UpToDate`, `GROUP_OUT_OF_DATE` becomes `OutOfDate`, and so
/// on); SEV-SNP, Nitro and TPM evidence carries no TCB status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    Revoked,
}

impl TcbStatus {
    pub const ALL: [TcbStatus; 7] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TcbStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown TCB status {s:?}"))
    }
}

/// Evidence that passed every signature, chain, revocation and validity check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub kind: Kind,
    pub claims: Claims,
    /// The TCB status, for kinds that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb_status: Option<TcbStatus>,
    /// Intel security advisory IDs that apply to the TCB level, for example `INTEL-SA-00615`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advisory_ids: Vec<String>,
    /// The earliest issue time (Unix seconds) of the collateral used: TCB info, QE identity and
    /// CRLs. `None` when the kind takes no dated collateral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral_issued_at: Option<i64>,
    /// The earliest time (Unix seconds) at which a certificate, CRL or collateral document used
    /// in the verification stops being valid. Credentials issued on this evidence must not
    /// outlive it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<i64>,
    /// SHA-256 of the evidence bytes as received.
    #[serde(serialize_with = "hex_serialize")]
    pub evidence_sha256: [u8; 32],
}

impl Verified {
    /// Returns the bytes (64, or fewer for TPM and Nitro) that the attester bound into the
    /// evidence: report data for SGX, TDX and SEV-SNP, `user_data` for Nitro, `extraData` for
    /// TPM.
    pub fn bound_data(&self) -> Option<&[u8]> {
        match &self.claims {
            Claims::Sgx(c) => Some(&c.report_data),
            Claims::Tdx(c) => Some(&c.report_data),
            Claims::Snp(c) => Some(&c.report_data),
            Claims::Nitro(c) => c.user_data.as_deref(),
            Claims::Tpm(c) => Some(&c.extra_data),
        }
    }

    /// Returns whether the claims show a TEE in debug mode, which lets the host read its memory.
    pub fn debug(&self) -> bool {
        match &self.claims {
            Claims::Sgx(c) => c.debug,
            Claims::Tdx(c) => c.debug,
            Claims::Snp(c) => c.debug,
            Claims::Nitro(c) => c.debug,
            Claims::Tpm(_) => false,
        }
    }

    /// Node or workload selectors as `(type, value)` pairs, for example
    /// `("tdx", "mrtd:<hex>")`. Hex is lowercase.
    pub fn selectors(&self) -> Vec<(String, String)> {
        let ty = self.kind.selector_type();
        let mut values: Vec<String> = Vec::new();
        match &self.claims {
            Claims::Sgx(c) => {
                values.push(format!("mrenclave:{}", hex::encode(c.mr_enclave)));
                values.push(format!("mrsigner:{}", hex::encode(c.mr_signer)));
                values.push(format!("isv_prod_id:{}", c.isv_prod_id));
                values.push(format!("isv_svn:{}", c.isv_svn));
            }
            Claims::Tdx(c) => {
                values.push(format!("mrtd:{}", hex::encode(c.mr_td)));
                for (index, rtmr) in c.rtmr.iter().enumerate() {
                    values.push(format!("rtmr{index}:{}", hex::encode(rtmr)));
                }
                values.push(format!("mrconfigid:{}", hex::encode(c.mr_config_id)));
            }
            Claims::Snp(c) => {
                values.push(format!("measurement:{}", hex::encode(c.measurement)));
                values.push(format!("host_data:{}", hex::encode(c.host_data)));
                if c.chip_id.iter().any(|b| *b != 0) {
                    values.push(format!("chip_id:{}", hex::encode(c.chip_id)));
                }
                values.push(format!("guest_svn:{}", c.guest_svn));
            }
            Claims::Nitro(c) => {
                for (index, pcr) in &c.pcrs {
                    if matches!(index, 0 | 1 | 2 | 3 | 4 | 8) {
                        values.push(format!("pcr{index}:{}", hex::encode(pcr)));
                    }
                }
            }
            Claims::Tpm(c) => {
                for (index, value) in &c.pcrs {
                    values.push(format!("pcr:{index}:{}", hex::encode(value)));
                }
                values.push(format!("ak:{}", hex::encode(c.ak_sha256)));
            }
        }
        if let Some(status) = self.tcb_status {
            values.push(format!("tcb_status:{status}"));
        }
        values
            .into_iter()
            .map(|value| (ty.to_owned(), value))
            .collect()
    }
}

/// The claims of one evidence kind.
// A verifier builds one per attestation and callers match on it, so boxing the large TDX and
// SEV-SNP variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Claims {
    Sgx(SgxClaims),
    Tdx(TdxClaims),
    Snp(SnpClaims),
    Nitro(NitroClaims),
    Tpm(TpmClaims),
}

/// An SGX enclave report body, from a DCAP quote or an IAS report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SgxClaims {
    #[serde(serialize_with = "hex_serialize")]
    pub mr_enclave: [u8; 32],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    #[serde(serialize_with = "hex_serialize")]
    pub attributes: [u8; 16],
    #[serde(serialize_with = "hex_serialize")]
    pub cpu_svn: [u8; 16],
    #[serde(serialize_with = "hex_serialize")]
    pub report_data: [u8; 64],
    /// ATTRIBUTES bit 1 (DEBUG).
    pub debug: bool,
    /// Platform facts from the PCK certificate, for DCAP quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PckPlatform>,
}

/// Platform facts from the PCK certificate of the platform that produced a DCAP quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PckPlatform {
    #[serde(serialize_with = "hex_serialize")]
    pub fmspc: [u8; 6],
    #[serde(serialize_with = "hex_serialize")]
    pub pce_id: [u8; 2],
    pub pce_svn: u16,
    pub cpu_svn_components: [u8; 16],
    /// The platform provisioning ID, unique per platform.
    #[serde(serialize_with = "hex_serialize")]
    pub ppid: [u8; 16],
    /// The QE's ISV SVN from the QE report.
    pub qe_isv_svn: u16,
}

/// A TDX TD report body from a v4 or v5 quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdxClaims {
    #[serde(serialize_with = "hex_serialize")]
    pub tee_tcb_svn: [u8; 16],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_seam: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_signer_seam: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub seam_attributes: [u8; 8],
    #[serde(serialize_with = "hex_serialize")]
    pub td_attributes: [u8; 8],
    #[serde(serialize_with = "hex_serialize")]
    pub xfam: [u8; 8],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_td: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_config_id: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_owner: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub mr_owner_config: [u8; 48],
    #[serde(serialize_with = "hex_list_serialize")]
    pub rtmr: [[u8; 48]; 4],
    #[serde(serialize_with = "hex_serialize")]
    pub report_data: [u8; 64],
    /// TEE_TCB_SVN2, in TD 1.5 bodies (quote v5, body type 3) only.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_option_serialize"
    )]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD, in TD 1.5 bodies only.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_option_serialize"
    )]
    pub mr_service_td: Option<[u8; 48]>,
    /// TD_ATTRIBUTES bit 0 (DEBUG).
    pub debug: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PckPlatform>,
}

/// The AMD key that signed an SEV-SNP report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnpSigningKey {
    Vcek,
    Vlek,
}

/// A platform TCB version as SEV-SNP reports and VCEK extensions carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// FMC SPL, on Turin and later only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

/// An SEV-SNP ATTESTATION_REPORT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnpClaims {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    /// Policy bit 19 (DEBUG).
    pub debug: bool,
    pub vmpl: u32,
    #[serde(serialize_with = "hex_serialize")]
    pub family_id: [u8; 16],
    #[serde(serialize_with = "hex_serialize")]
    pub image_id: [u8; 16],
    #[serde(serialize_with = "hex_serialize")]
    pub measurement: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub host_data: [u8; 32],
    #[serde(serialize_with = "hex_serialize")]
    pub id_key_digest: [u8; 48],
    #[serde(serialize_with = "hex_serialize")]
    pub report_data: [u8; 64],
    /// All zero when the report is signed with a VLEK or the chip ID is masked.
    #[serde(serialize_with = "hex_serialize")]
    pub chip_id: [u8; 64],
    /// REPORT_ID: a value the firmware assigns to the guest at launch, so guests that share a
    /// chip and an image still differ.
    #[serde(serialize_with = "hex_serialize")]
    pub report_id: [u8; 32],
    pub reported_tcb: SnpTcb,
    pub committed_tcb: SnpTcb,
    pub launch_tcb: SnpTcb,
    pub current_tcb: SnpTcb,
    pub signing_key: SnpSigningKey,
    /// The product line the chain verified under: `Milan`, `Genoa` or `Turin`.
    pub product: String,
}

/// An AWS Nitro Enclaves attestation document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NitroClaims {
    pub module_id: String,
    /// The PCR hash algorithm, `SHA384` on current Nitro hypervisors.
    pub digest: String,
    /// Milliseconds since the Unix epoch, as the Nitro hypervisor stamped the document.
    pub timestamp_ms: u64,
    #[serde(serialize_with = "hex_map_serialize")]
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_option_vec_serialize"
    )]
    pub public_key: Option<Vec<u8>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_option_vec_serialize"
    )]
    pub user_data: Option<Vec<u8>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_option_vec_serialize"
    )]
    pub nonce: Option<Vec<u8>>,
    /// PCR0 is all zero, which the Nitro hypervisor reports for enclaves started in debug mode.
    pub debug: bool,
}

/// A TPM 2.0 quote with the PCR values it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TpmClaims {
    /// The PCR bank of the quote, `sha1`, `sha256`, `sha384` or `sha512`.
    pub pcr_bank: String,
    #[serde(serialize_with = "hex_map_serialize")]
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    #[serde(serialize_with = "hex_serialize")]
    pub extra_data: Vec<u8>,
    #[serde(serialize_with = "hex_serialize")]
    pub pcr_digest: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    /// SHA-256 of the attestation key's DER SubjectPublicKeyInfo.
    #[serde(serialize_with = "hex_serialize")]
    pub ak_sha256: [u8; 32],
    /// PCR indexes whose values an event-log replay reproduced; empty without an event log.
    pub replayed_pcrs: Vec<u8>,
}

fn hex_serialize<S: serde::Serializer, T: AsRef<[u8]>>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(value.as_ref()))
}

fn hex_option_serialize<S: serde::Serializer, const N: usize>(
    value: &Option<[u8; N]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => serializer.serialize_str(&hex::encode(bytes)),
        None => serializer.serialize_none(),
    }
}

fn hex_option_vec_serialize<S: serde::Serializer>(
    value: &Option<Vec<u8>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => serializer.serialize_str(&hex::encode(bytes)),
        None => serializer.serialize_none(),
    }
}

fn hex_list_serialize<S: serde::Serializer, const N: usize>(
    value: &[[u8; 48]; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(value.iter().map(hex::encode))
}

fn hex_map_serialize<S: serde::Serializer>(
    value: &BTreeMap<u8, Vec<u8>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        value
            .iter()
            .map(|(index, bytes)| (index.to_string(), hex::encode(bytes))),
    )
}
