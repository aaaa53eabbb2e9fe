//! Trust anchors: the root certificates that evidence chains must end at.

use aws_lc_rs::digest::{SHA256, digest};

/// SHA-256 fingerprints (of the DER certificate) of the vendors' production roots. Evidence
/// chains that carry their root (DCAP quotes, Nitro `cabundle`, SEV-SNP chains) can be checked
/// against these without a root file.
pub mod production {
    /// Intel SGX Root CA, valid 2018-05-21 to 2049-12-31.
    pub const INTEL_SGX_ROOT_CA: &str =
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";
    /// Intel SGX Attestation Report Signing CA, the root of IAS report signatures.
    pub const INTEL_IAS_ROOT_CA: &str =
        "7b42e41ec43b91db834a065de4f98a13c44d695570e839cfa8921e584e40735d";
    /// AWS Nitro Enclaves Root-G1, as AWS publishes its fingerprint.
    pub const AWS_NITRO_ROOT_G1: &str =
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";
    /// AMD ARK-Milan.
    pub const AMD_ARK_MILAN: &str =
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd";
    /// AMD ARK-Genoa.
    pub const AMD_ARK_GENOA: &str =
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1";
    /// AMD ARK-Turin.
    pub const AMD_ARK_TURIN: &str =
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a";
}

/// A set of trusted roots, each pinned by the SHA-256 of its DER encoding. A chain is trusted
/// when its last certificate is self-signed (the verifier checks that signature) and its
/// fingerprint is in the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustAnchors {
    fingerprints: Vec<[u8; 32]>,
    /// Root certificates given in full, for chains that do not carry their root (IAS).
    certificates: Vec<Vec<u8>>,
}

impl TrustAnchors {
    /// Creates an empty set, which trusts nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the root with this DER encoding.
    pub fn add_certificate(&mut self, der: &[u8]) {
        let fingerprint = sha256(der);
        if !self.fingerprints.contains(&fingerprint) {
            self.fingerprints.push(fingerprint);
            self.certificates.push(der.to_vec());
        }
    }

    /// Trusts the root whose DER SHA-256 is `hex_fingerprint` (64 hex digits).
    pub fn add_fingerprint(&mut self, hex_fingerprint: &str) -> Result<(), String> {
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(hex_fingerprint, &mut fingerprint).map_err(|_| {
            format!("invalid root fingerprint {hex_fingerprint:?}: expected 64 hex digits")
        })?;
        if !self.fingerprints.contains(&fingerprint) {
            self.fingerprints.push(fingerprint);
        }
        Ok(())
    }

    /// Returns the vendors' production roots for evidence of `kind`.
    pub fn production(kind: crate::Kind) -> Self {
        use crate::Kind;
        let pins: &[&str] = match kind {
            Kind::SgxDcap | Kind::Tdx => &[production::INTEL_SGX_ROOT_CA],
            Kind::SgxIas => &[production::INTEL_IAS_ROOT_CA],
            Kind::Nitro => &[production::AWS_NITRO_ROOT_G1],
            Kind::Snp => &[
                production::AMD_ARK_MILAN,
                production::AMD_ARK_GENOA,
                production::AMD_ARK_TURIN,
            ],
            Kind::Tpm => &[],
        };
        let mut anchors = Self::new();
        for pin in pins {
            // The constants above are 64 hex digits, so this cannot fail.
            let _ = anchors.add_fingerprint(pin);
        }
        anchors
    }

    /// Returns whether the certificate with this DER encoding is a trusted root.
    pub fn contains(&self, der: &[u8]) -> bool {
        self.fingerprints.contains(&sha256(der))
    }

    /// Root certificates given in full.
    pub fn certificates(&self) -> impl Iterator<Item = &[u8]> {
        self.certificates.iter().map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}
