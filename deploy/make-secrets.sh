#!/bin/sh
# Write deploy/secrets/ (or the folder given as the argument): random API keys (admin, verifier, gate), a template key and the
# database password, and the database URL that uses it. Existing files are kept: the
# template key opens the stored templates, so it must never be replaced by accident.
set -eu
dir="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
mkdir -p "$dir"
rand() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }
write() { [ -e "$dir/$1" ] || { umask 022; printf '%s\n' "$2" > "$dir/$1"; echo "wrote $dir/$1"; }; }
write api_keys "admin:$(rand),verifier:$(rand),gate:$(rand)"
write template_key "$(head -c 32 /dev/urandom | base64)"
write db_password "$(rand)"
write database_url "postgresql://recognizer:$(cat "$dir/db_password")@127.0.0.1:55471/recognizer"
