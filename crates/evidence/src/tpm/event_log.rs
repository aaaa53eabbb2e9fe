//! TCG PC Client event logs (TCG PC Client Platform Firmware Profile, section 10): the SHA-1
//! format of TCG_PCR_EVENT records and the crypto-agile format that starts with a
//! "Spec ID Event03" record. Log fields are little-endian.

use std::collections::BTreeMap;

use super::wire::{HashAlg, Reader};
use crate::VerifyError;

/// EV_NO_ACTION: informational events that were never extended into a PCR.
pub const EV_NO_ACTION: u32 = 0x0000_0003;

const SPEC_ID_EVENT03: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";
const SHA1_DIGEST_LEN: usize = 20;
/// A TPML_DIGEST_VALUES contains at most one digest per bank.
const MAX_DIGESTS: u32 = 16;
/// Highest PCR index a log event may name. PC Client TPMs have 24 PCRs.
const MAX_PCR_INDEX: u32 = 63;

/// The record layout of an event log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLogFormat {
    /// TCG_PCR_EVENT records with one SHA-1 digest each.
    Sha1,
    /// A Spec ID Event03 header followed by TCG_PCR_EVENT2 records.
    CryptoAgile,
}

/// One measured event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub pcr_index: u32,
    pub event_type: u32,
    /// Digests by TPM_ALG_ID, in log order. Digests of banks other than SHA-1/256/384/512
    /// are kept with their raw algorithm ID.
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// A parsed event log. In the crypto-agile format the Spec ID header is not in `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    pub format: EventLogFormat,
    /// `(TPM_ALG_ID, digest size)` pairs from the Spec ID header; `[(SHA-1, 20)]` for the
    /// SHA-1 format.
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<Event>,
}

/// Parses an event log in either format. Never panics, and allocates no more than the input
/// size for event data.
pub fn parse_event_log(bytes: &[u8]) -> Result<EventLog, VerifyError> {
    let mut reader = Reader::new(bytes, "event log");
    let first = read_sha1_event(&mut reader)?;
    let spec_id = first.event_type == EV_NO_ACTION
        && first.pcr_index == 0
        && first.data.starts_with(SPEC_ID_EVENT03);
    if !spec_id {
        let mut events = vec![first];
        while reader.remaining() > 0 {
            events.push(read_sha1_event(&mut reader)?);
        }
        return Ok(EventLog {
            format: EventLogFormat::Sha1,
            algorithms: vec![(HashAlg::Sha1.tpm_id(), SHA1_DIGEST_LEN as u16)],
            events,
        });
    }

    let algorithms = parse_spec_id(&first.data)?;
    let mut events = Vec::new();
    while reader.remaining() > 0 {
        events.push(read_agile_event(&mut reader, &algorithms)?);
    }
    Ok(EventLog {
        format: EventLogFormat::CryptoAgile,
        algorithms,
        events,
    })
}

fn read_pcr_index(reader: &mut Reader<'_>) -> Result<u32, VerifyError> {
    let index = reader.u32_le("pcrIndex")?;
    if index > MAX_PCR_INDEX {
        return Err(VerifyError::malformed(format!(
            "event log names PCR {index}; the maximum is {MAX_PCR_INDEX}"
        )));
    }
    Ok(index)
}

fn read_event_data(reader: &mut Reader<'_>) -> Result<Vec<u8>, VerifyError> {
    let size = reader.u32_le("eventSize")?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    Ok(reader.take(size, "event")?.to_vec())
}

fn read_sha1_event(reader: &mut Reader<'_>) -> Result<Event, VerifyError> {
    let pcr_index = read_pcr_index(reader)?;
    let event_type = reader.u32_le("eventType")?;
    let digest = reader.take(SHA1_DIGEST_LEN, "digest")?.to_vec();
    let data = read_event_data(reader)?;
    Ok(Event {
        pcr_index,
        event_type,
        digests: vec![(HashAlg::Sha1.tpm_id(), digest)],
        data,
    })
}

/// Reads the digest table of a TCG_EfiSpecIdEvent.
fn parse_spec_id(data: &[u8]) -> Result<Vec<(u16, u16)>, VerifyError> {
    let mut reader = Reader::new(data, "Spec ID event");
    reader.take(SPEC_ID_EVENT03.len(), "signature")?;
    reader.u32_le("platformClass")?;
    reader.take(4, "specVersion and uintnSize")?;
    let count = reader.u32_le("numberOfAlgorithms")?;
    if count == 0 || count > MAX_DIGESTS {
        return Err(VerifyError::malformed(format!(
            "Spec ID event lists {count} algorithms; expected 1 to {MAX_DIGESTS}"
        )));
    }
    let mut algorithms = Vec::new();
    for _ in 0..count {
        let id = reader.u16_le("algorithmId")?;
        let size = reader.u16_le("digestSize")?;
        if usize::from(size) > 64 {
            return Err(VerifyError::malformed(format!(
                "Spec ID event gives algorithm 0x{id:04x} a digest size of {size}; the maximum \
                 is 64"
            )));
        }
        if let Some(hash) = HashAlg::from_tpm_id(id)
            && hash.digest_len() != usize::from(size)
        {
            return Err(VerifyError::malformed(format!(
                "Spec ID event gives {} a digest size of {size}; expected {}",
                hash.name(),
                hash.digest_len()
            )));
        }
        algorithms.push((id, size));
    }
    let vendor_size = reader.u8("vendorInfoSize")?;
    reader.take(usize::from(vendor_size), "vendorInfo")?;
    Ok(algorithms)
}

fn read_agile_event(
    reader: &mut Reader<'_>,
    algorithms: &[(u16, u16)],
) -> Result<Event, VerifyError> {
    let pcr_index = read_pcr_index(reader)?;
    let event_type = reader.u32_le("eventType")?;
    let count = reader.u32_le("digests.count")?;
    if count > MAX_DIGESTS {
        return Err(VerifyError::malformed(format!(
            "event log event has {count} digests; the maximum is {MAX_DIGESTS}"
        )));
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let id = reader.u16_le("digests.hashAlg")?;
        let Some((_, size)) = algorithms.iter().find(|(known, _)| *known == id) else {
            return Err(VerifyError::malformed(format!(
                "event log digest algorithm 0x{id:04x} is not listed in the Spec ID event"
            )));
        };
        digests.push((
            id,
            reader.take(usize::from(*size), "digests.digest")?.to_vec(),
        ));
    }
    let data = read_event_data(reader)?;
    Ok(Event {
        pcr_index,
        event_type,
        digests,
        data,
    })
}

impl EventLog {
    /// Replays the log for `bank` and returns the PCR values it produces, for every PCR the log
    /// extends.
    ///
    /// PCRs start at zero, except that a StartupLocality EV_NO_ACTION event on PCR 0 sets
    /// PCR 0's last byte to the startup locality.
    /// NOTE: dynamic-launch PCRs (17 to 22) are replayed from zero like the others, which is
    /// wrong for logs that measure a dynamic launch.
    pub fn replay(&self, bank: HashAlg) -> Result<BTreeMap<u32, Vec<u8>>, VerifyError> {
        if !self.algorithms.iter().any(|(id, _)| *id == bank.tpm_id()) {
            return Err(VerifyError::new(
                crate::Reason::Collateral,
                format!(
                    "the event log has no {} digests, so it cannot be replayed against a {} \
                     quote",
                    bank.name(),
                    bank.name()
                ),
            ));
        }
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut locality = 0u8;
        for (position, event) in self.events.iter().enumerate() {
            if event.event_type == EV_NO_ACTION {
                if event.pcr_index == 0 && event.data.starts_with(STARTUP_LOCALITY) {
                    locality = event.data.get(STARTUP_LOCALITY.len()).copied().unwrap_or(0);
                }
                continue;
            }
            let Some((_, digest)) = event.digests.iter().find(|(id, _)| *id == bank.tpm_id())
            else {
                return Err(VerifyError::malformed(format!(
                    "event {position} of the event log (PCR {}) has no {} digest",
                    event.pcr_index,
                    bank.name()
                )));
            };
            let value = pcrs.entry(event.pcr_index).or_insert_with(|| {
                let mut initial = vec![0u8; bank.digest_len()];
                if event.pcr_index == 0
                    && let Some(last) = initial.last_mut()
                {
                    *last = locality;
                }
                initial
            });
            *value = bank.hash(&[value, digest]);
        }
        Ok(pcrs)
    }
}
