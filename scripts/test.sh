#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the pinned Python peers into .venv,
# makes sure a PostgreSQL server accepts connections on 127.0.0.1:5432 (starting a throwaway
# cluster when none does), then builds once and runs every Rust test, which drive the Python peers.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '==> %s\n' "$*"; }

setup_python() {
  local stamp=.venv/.requirements.sha256
  local want
  want=$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing Python test peers into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r tests/python/requirements.txt
  echo "$want" > "$stamp"
}

postgres_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
}

# The read-only replica tests start their own primary and standby clusters with initdb,
# pg_ctl and pg_basebackup, so the server programs are needed even beside a running server.
install_postgres_programs() {
  if ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1; then
    return
  fi
  log "installing Debian's postgresql package for its server programs"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

setup_postgres() {
  install_postgres_programs
  if postgres_answers; then
    return
  fi
  log "no PostgreSQL on 127.0.0.1:5432; starting a throwaway cluster"
  local bin
  bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  local data="$root/.pgtest"
  rm -rf "$data" && mkdir -p "$data"
  local run_as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$data"
    run_as=(runuser -u postgres --)
  fi
  "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  "${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/log" \
    -o "-c listen_addresses=127.0.0.1 -c port=5432 -k /tmp" -w start >/dev/null
}

# nginx is the unmodified TLS server that the twid helper test feeds with SVID files. The test
# starts its own nginx on 127.0.0.1 with its own configuration; on a host with systemd the
# package also starts the distribution's nginx service, which the test does not use.
setup_nginx() {
  if [ -x /usr/sbin/nginx ]; then
    return
  fi
  log "installing nginx for the helper test"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }; then
    log "could not install nginx (this needs root); the nginx test will skip"
  fi
}

# swtpm and tpm2-tools give the TPM tests a real software TPM on loopback ports that the tests
# pick; nothing touches a hardware TPM.
setup_swtpm() {
  if command -v swtpm >/dev/null && command -v tpm2_quote >/dev/null; then
    return
  fi
  log "installing swtpm and tpm2-tools for the TPM tests"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swtpm swtpm-tools tpm2-tools >/dev/null; }; then
    log "could not install swtpm and tpm2-tools (this needs root); the TPM tests will skip"
  fi
}

# Prints "<package directory><tab><executable>" for each test binary of the workspace build that
# starts a server or opens a server datastore: the e2e tests and the twid-server tests. They run
# straight from that build, because `cargo test -p` resolves features for fewer packages and
# would rebuild much of the dependency tree.
server_test_binaries() {
  cargo test --workspace --locked --no-run --message-format=json | python3 -c '
import json, os, sys
server_targets = {
    ("crates/cli", "e2e"),
    ("crates/server", "twid_server"),
    ("crates/server", "agent_renewal"),
    ("crates/server", "oidc"),
}
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") != "compiler-artifact" or not message.get("executable"):
        continue
    if not message["profile"]["test"]:
        continue
    package_dir = os.path.dirname(message["manifest_path"])
    key = (os.path.relpath(package_dir, sys.argv[1]), message["target"]["name"])
    if key in server_targets:
        print(package_dir, message["executable"], sep="\t")
' "$root"
}

# Runs the server test binaries with TWID_TEST_DATASTORE=postgres, each in its package
# directory as cargo test would.
run_server_tests_on_postgres() {
  local binaries
  binaries=$(server_test_binaries)
  [ "$(printf '%s\n' "$binaries" | grep -c .)" = 4 ] || {
    log "expected 4 server test binaries, found: $binaries"
    return 1
  }
  local dir exe
  # The list comes in on descriptor 3, so that nothing the tests start can read it from stdin.
  while IFS=$'\t' read -r dir exe <&3; do
    log "running $(basename "$exe") on PostgreSQL"
    (cd "$dir" && TWID_TEST_DATASTORE=postgres "$exe")
  done 3<<< "$binaries"
}

setup_python
setup_postgres
setup_nginx
setup_swtpm
log "building"
cargo build --workspace --all-targets --locked
log "running tests"
cargo test --workspace --locked
log "running server tests again on PostgreSQL"
time run_server_tests_on_postgres
