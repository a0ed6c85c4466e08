#!/bin/sh
# First start: a cluster owned by $POSTGRES_USER with the password from its file, and the
# database $POSTGRES_DB; then the command.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # UTF8, as the official image's initdb (en_US.utf8): this base has no locales, and initdb
  # would otherwise make an SQL_ASCII cluster, whose text psycopg returns as bytes.
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$@"
