# Sourced by .ci/run: start a throwaway PostgreSQL server so the registry tests also run on
# PostgreSQL (TANDEM_TEST_POSTGRES), and stop it when the run ends.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
PGBIN=$(pg_bin)
if [ -z "$PGBIN" ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  PGBIN=$(pg_bin)
fi
PGDATA=$(mktemp -d /tmp/tandem-pg.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-k $PGDATA -p 54329 -c listen_addresses=''" start >/dev/null
stop_postgres() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null; rm -rf "$PGDATA"; }
trap stop_postgres EXIT
export TANDEM_TEST_POSTGRES="postgresql+psycopg://postgres@/postgres?host=$PGDATA&port=54329"
