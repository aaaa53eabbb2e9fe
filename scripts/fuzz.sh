#!/usr/bin/env bash
# Fuzz the evidence parsers with cargo-fuzz (libFuzzer), seeding each corpus from the
# attestation fixtures.
#
#   scripts/fuzz.sh                 # every target for 600 s, two at a time
#   scripts/fuzz.sh snp_report 60   # one target for 60 s
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain RUSTC_BOOTSTRAP=1
# lets cargo-fuzz pass its instrumentation flags; the sanitizer is off because the parsers
# contain no unsafe code. Crashes land in crates/evidence/fuzz/artifacts/<target>/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz_dir="$root/crates/evidence/fuzz"
fixtures="${TWID_FIXTURES:-$root/../shared/fixtures}/attestation"
seconds="${2:-${FUZZ_SECONDS:-600}}"
jobs="${FUZZ_JOBS:-2}"
all_targets=(dcap_quote dcap_collateral ias_report snp_report nitro_document tpm_structures tpm_event_log evidence_envelope)
if [[ $# -ge 1 && "$1" != "all" ]]; then targets=("$1"); else targets=("${all_targets[@]}"); fi

if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz not found: install it with 'cargo install cargo-fuzz'" >&2
    exit 1
fi

seed() {
    local corpus="$fuzz_dir/corpus"
    if [[ ! -d "$fixtures" ]]; then
        echo "attestation fixtures not found at $fixtures; fuzzing from empty corpora"
        return
    fi
    python3 - "$fixtures" "$corpus" <<'PY'
import base64, json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def put(target, name, data):
    d = dst / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
for f in list(src.glob("sgx-dcap/*.bin")) + list(src.glob("tdx/*.bin")):
    put("dcap_quote", f.name, f.read_bytes())
put("dcap_quote", "near.bin", bytes.fromhex((src / "tdx/dcap-qvl_near_tdx_quote.hex").read_text().strip()))
for f in src.glob("*/*collateral.json"):
    put("dcap_collateral", f.name, f.read_bytes())
for f in src.glob("sgx-ias/*body.json"):
    put("ias_report", f.name, f.read_bytes())
for f in src.glob("sev-snp/*report.bin"):
    put("snp_report", f.name, f.read_bytes())
put("snp_report", "milan.bin", bytes.fromhex((src / "sev-snp/virtee_report_milan.hex").read_text().strip()))
for f in src.glob("sev-snp/*.pem"):
    put("snp_report", f.name, f.read_bytes())
for f in src.glob("nitro/*.cose"):
    put("nitro_document", f.name, f.read_bytes())
put("nitro_document", "ga.cose", base64.b64decode((src / "nitro/evervault_ga_valid_attestation_doc.b64").read_text().strip()))
go = json.loads((src / "tpm/go-attestation_windows_gcp_shielded_vm.json").read_text())
trustee = json.loads((src / "tpm/trustee_tpm_evidence.json").read_text())
put("tpm_structures", "go-attest", b"\x00" + base64.b64decode(go["Quote"]["Quote"]))
put("tpm_structures", "go-public", b"\x01" + base64.b64decode(go["AK"]["Public"]))
put("tpm_structures", "go-signature", b"\x02" + base64.b64decode(go["Quote"]["Signature"]))
put("tpm_structures", "trustee-attest", b"\x00" + base64.b64decode(trustee["tpm_quote"]["message"]))
put("tpm_structures", "trustee-signature", b"\x02" + base64.b64decode(trustee["tpm_quote"]["signature"]))
put("tpm_event_log", "go-log", base64.b64decode(go["Log"]["Raw"]))
for f in src.glob("tpm/*.json"):
    put("evidence_envelope", f.name, f.read_bytes())
PY
}

seed
cd "$fuzz_dir"
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    cargo fuzz build -s none "$target"
done
run() {
    local target="$1" status=0 runs
    mkdir -p "corpus/$target"
    cargo fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        > "$fuzz_dir/$target.log" 2>&1 || status=$?
    runs="$(grep -E '^stat::number_of_executed_units' "$fuzz_dir/$target.log" | awk '{print $2}' || true)"
    if (( status == 0 )); then
        echo "$target: ${runs:-?} runs in $seconds s, no crash"
    else
        echo "$target: failed with status $status; see $fuzz_dir/$target.log and artifacts/$target/" >&2
    fi
    return "$status"
}
failed=0
pids=()
for target in "${targets[@]}"; do
    run "$target" &
    pids+=($!)
    if (( ${#pids[@]} >= jobs )); then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
