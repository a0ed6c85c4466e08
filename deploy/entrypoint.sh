#!/bin/sh
# Secrets arrive as files (compose or swarm secrets, a mounted volume) or in the environment,
# never in the image. For each NAME below, NAME_FILE names a file whose content becomes NAME;
# NAME_FILE is then removed from the environment (the server refuses unknown RECOGNIZER_*).
set -eu
for name in RECOGNIZER_API_KEYS RECOGNIZER_TEMPLATE_KEY RECOGNIZER_TEMPLATE_KEY_NEW \
            RECOGNIZER_DATABASE_URL; do
  file_var="${name}_FILE"
  eval "file=\${$file_var:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "entrypoint: $file_var=$file is not readable" >&2
      exit 2
    fi
    eval "export $name=\"\$(cat \"\$file\")\""
    unset "$file_var"
  fi
done
exec recognizer "$@"
