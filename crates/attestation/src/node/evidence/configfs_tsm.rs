//! A collector for the Linux configfs-tsm report interface, which TDX and SEV-SNP guests
//! expose under `/sys/kernel/config/tsm/report` (kernel 6.7 and later).
//!
//! One collection creates a report entry (a folder) and writes the 64 bytes of report data to
//! `inblob`. It then reads `provider` (`tdx_guest` or `sev_guest`), `outblob` (the TDX quote or
//! the SEV-SNP report) and, when present, `auxblob` (the SEV-SNP certificate table). Last it
//! removes the entry. The `generation` file counts writes to the entry; a change between writing
//! `inblob` and reading `outblob` means another writer interfered, and the collection fails.

use std::path::{Path, PathBuf};

use twid_evidence::{Envelope, Kind};

use super::{CollectError, Collector};

/// Upper bound on `outblob` and `auxblob`. It is far above a TDX quote with its PCK chain or an
/// SEV-SNP certificate table, which take a few KiB each (an estimate from the certificate sizes).
const MAX_BLOB_BYTES: u64 = 1 << 20;

/// SEV-SNP certificate table GUIDs, in the order the envelope lists certificates: the VCEK or
/// VLEK first, then ASK and ARK. The table stores each GUID's bytes in the order its text form
/// writes them, as libuuid's `uuid_parse` produces them.
const SNP_CERT_GUIDS: [[u8; 16]; 4] = [
    // VCEK 63da758d-e664-4564-adc5-f4b93be8accd
    [
        0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ],
    // VLEK a8074bc2-a25a-483e-aae6-39c045a0b8a1
    [
        0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8,
        0xa1,
    ],
    // ASK 4ab7b379-bbac-4fe4-a02f-05aef327c782
    [
        0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7,
        0x82,
    ],
    // ARK c0b406a4-a803-4952-9743-3fb6014cd0ae
    [
        0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0,
        0xae,
    ],
];

/// Collects TDX quotes or SEV-SNP reports through configfs-tsm.
#[derive(Debug, Clone)]
pub struct ConfigfsTsmCollector {
    kind: Kind,
    tsm_path: PathBuf,
}

impl ConfigfsTsmCollector {
    /// Creates a collector for `kind` (TDX or SEV-SNP) that uses the report folder `tsm_path`.
    pub fn new(kind: Kind, tsm_path: impl Into<PathBuf>) -> Self {
        Self {
            kind,
            tsm_path: tsm_path.into(),
        }
    }

    fn failed(&self, reason: String) -> CollectError {
        CollectError::Failed {
            interface: format!("configfs-tsm at {}", self.tsm_path.display()),
            reason,
        }
    }

    /// Runs one request in the report entry `entry`, which exists.
    fn request(&self, entry: &Path, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        let generation_before = read_generation(entry);
        std::fs::write(entry.join("inblob"), report_data)
            .map_err(|error| self.failed(format!("writing inblob failed: {error}")))?;
        let provider = read_small(&entry.join("provider"), 64)
            .map_err(|error| self.failed(format!("reading provider failed: {error}")))?;
        let provider = String::from_utf8_lossy(&provider).trim().to_owned();
        let kind = match provider.as_str() {
            "tdx_guest" => Kind::Tdx,
            "sev_guest" => Kind::Snp,
            other => {
                return Err(self.failed(format!(
                    "unknown provider {other:?}; expected tdx_guest or sev_guest"
                )));
            }
        };
        if kind != self.kind {
            return Err(self.failed(format!(
                "the provider is {provider}, which produces {kind} evidence, but the node \
                 attestor expects {}",
                self.kind
            )));
        }
        let outblob = read_small(&entry.join("outblob"), MAX_BLOB_BYTES)
            .map_err(|error| self.failed(format!("reading outblob failed: {error}")))?;
        if outblob.is_empty() {
            return Err(self.failed("outblob is empty".to_owned()));
        }
        let auxblob = match read_small(&entry.join("auxblob"), MAX_BLOB_BYTES) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(self.failed(format!("reading auxblob failed: {error}"))),
        };
        let generation_after = read_generation(entry);
        if let (Some(before), Some(after)) = (generation_before, generation_after)
            && after != before.saturating_add(1)
        {
            return Err(self.failed(format!(
                "the report entry's generation moved from {before} to {after}, so another \
                 process wrote to it; retry"
            )));
        }
        let mut envelope = Envelope::new(kind, outblob);
        if kind == Kind::Snp && !auxblob.is_empty() {
            envelope.certificates = snp_certificates(&auxblob);
        }
        Ok(envelope)
    }
}

impl Collector for ConfigfsTsmCollector {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        if !self.tsm_path.is_dir() {
            return Err(CollectError::Unavailable {
                interface: format!("configfs-tsm at {}", self.tsm_path.display()),
                reason: "the folder does not exist; the kernel needs CONFIG_TSM_REPORTS and \
                         configfs mounted at /sys/kernel/config"
                    .to_owned(),
            });
        }
        let entry = self
            .tsm_path
            .join(format!("twid-{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir(&entry).map_err(|error| {
            self.failed(format!("creating {} failed: {error}", entry.display()))
        })?;
        let result = self.request(&entry, report_data);
        // In configfs, rmdir removes the entry together with its attribute files.
        if let Err(error) = std::fs::remove_dir(&entry) {
            tracing::debug!(%error, entry = %entry.display(), "removing the report entry failed");
        }
        result
    }
}

fn unique_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::from(elapsed.subsec_nanos()))
        .unwrap_or_default()
}

fn read_generation(entry: &Path) -> Option<u64> {
    let bytes = read_small(&entry.join("generation"), 32).ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// Reads a file of at most `limit` bytes; a longer file is an error.
fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// Extracts the DER certificates of an SEV-SNP certificate table: entries of GUID (16 bytes),
/// offset and length (little-endian u32, relative to the table start), ended by an all-zero
/// entry. Known GUIDs come first in VCEK, VLEK, ASK, ARK order; unknown ones follow.
/// Entries that point outside the table are skipped.
pub(crate) fn snp_certificates(table: &[u8]) -> Vec<Vec<u8>> {
    let mut found: Vec<(usize, Vec<u8>)> = Vec::new();
    for entry in table.chunks_exact(24) {
        let (guid_bytes, rest) = entry.split_at(16);
        if entry.iter().all(|byte| *byte == 0) {
            break;
        }
        let (offset_bytes, length_bytes) = rest.split_at(4);
        let offset = u32::from_le_bytes(offset_bytes.try_into().unwrap_or_default());
        let length = u32::from_le_bytes(length_bytes.try_into().unwrap_or_default());
        let (Ok(offset), Ok(length)) = (usize::try_from(offset), usize::try_from(length)) else {
            continue;
        };
        let Some(der) = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
        else {
            continue;
        };
        if der.is_empty() {
            continue;
        }
        let rank = SNP_CERT_GUIDS
            .iter()
            .position(|known| known == guid_bytes)
            .unwrap_or(SNP_CERT_GUIDS.len());
        found.push((rank, der.to_vec()));
    }
    found.sort_by_key(|(rank, _)| *rank);
    found.into_iter().map(|(_, der)| der).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates a report entry holding what the kernel would produce. A plain folder cannot
    /// create attribute files on mkdir as configfs does, so tests run the request step on an
    /// entry filled in advance.
    fn filled_entry(dir: &Path, provider: &str, outblob: &[u8], auxblob: Option<&[u8]>) -> PathBuf {
        let entry = dir.join("entry");
        std::fs::create_dir(&entry).expect("entry");
        std::fs::write(entry.join("provider"), format!("{provider}\n")).expect("provider");
        std::fs::write(entry.join("outblob"), outblob).expect("outblob");
        if let Some(auxblob) = auxblob {
            std::fs::write(entry.join("auxblob"), auxblob).expect("auxblob");
        }
        entry
    }

    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * 24;
        let mut head = Vec::new();
        let mut body = Vec::new();
        for (guid, der) in entries {
            head.extend_from_slice(guid);
            let offset = u32::try_from(header + body.len()).expect("offset");
            head.extend_from_slice(&offset.to_le_bytes());
            head.extend_from_slice(&u32::try_from(der.len()).expect("len").to_le_bytes());
            body.extend_from_slice(der);
        }
        head.extend_from_slice(&[0; 24]);
        head.extend_from_slice(&body);
        head
    }

    #[test]
    fn tsm_reads_tdx_quote() {
        let dir = tempfile::tempdir().expect("dir");
        let entry = filled_entry(dir.path(), "tdx_guest", b"quote", None);
        let collector = ConfigfsTsmCollector::new(Kind::Tdx, dir.path());
        let envelope = collector.request(&entry, &[7; 64]).expect("collect");
        assert_eq!(envelope.kind, Kind::Tdx);
        assert_eq!(envelope.evidence, b"quote");
        assert!(envelope.certificates.is_empty());
        let inblob = std::fs::read(entry.join("inblob")).expect("inblob");
        assert_eq!(inblob, vec![7; 64]);
    }

    #[test]
    fn tsm_orders_snp_certificates() {
        let dir = tempfile::tempdir().expect("dir");
        let [vcek, _, ask, ark] = SNP_CERT_GUIDS;
        let auxblob = table(&[(ark, b"ark"), (vcek, b"vcek"), (ask, b"ask")]);
        let entry = filled_entry(dir.path(), "sev_guest", b"report", Some(&auxblob));
        let collector = ConfigfsTsmCollector::new(Kind::Snp, dir.path());
        let envelope = collector.request(&entry, &[1; 64]).expect("collect");
        assert_eq!(envelope.kind, Kind::Snp);
        assert_eq!(envelope.evidence, b"report");
        assert_eq!(
            envelope.certificates,
            vec![b"vcek".to_vec(), b"ask".to_vec(), b"ark".to_vec()]
        );
    }

    #[test]
    fn tsm_rejects_other_provider() {
        let dir = tempfile::tempdir().expect("dir");
        let entry = filled_entry(dir.path(), "sev_guest", b"report", None);
        let collector = ConfigfsTsmCollector::new(Kind::Tdx, dir.path());
        let error = collector.request(&entry, &[0; 64]).expect_err("provider");
        assert!(error.to_string().contains("expects tdx"), "{error}");
    }

    #[test]
    fn tsm_detects_interfering_writer() {
        let dir = tempfile::tempdir().expect("dir");
        let entry = filled_entry(dir.path(), "tdx_guest", b"quote", None);
        // A plain file keeps its value, so the collector reads the same generation before and
        // after its own write to inblob. A real entry shows that only when its write was lost.
        std::fs::write(entry.join("generation"), "4\n").expect("generation");
        let collector = ConfigfsTsmCollector::new(Kind::Tdx, dir.path());
        let error = collector.request(&entry, &[0; 64]).expect_err("generation");
        assert!(error.to_string().contains("generation"), "{error}");
    }

    #[test]
    fn tsm_missing_folder_is_unavailable() {
        let collector = ConfigfsTsmCollector::new(Kind::Tdx, "/nonexistent/tsm/report");
        let error = collector.collect(&[0; 64]).expect_err("missing");
        assert!(matches!(error, CollectError::Unavailable { .. }), "{error}");
    }

    #[test]
    fn snp_table_skips_bad_entries() {
        let mut bad = table(&[(SNP_CERT_GUIDS[0], b"vcek")]);
        // Point the entry far outside the table.
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(snp_certificates(&bad).is_empty());
        assert!(snp_certificates(&[]).is_empty());
        assert!(snp_certificates(&[1; 23]).is_empty());
    }
}
