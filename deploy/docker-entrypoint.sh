#!/bin/sh
# egressguard's container entrypoint.
#
# egressguard reads its Vault credentials and the Redis URL from the environment. A
# container platform often hands secrets over as files instead (a shared volume,
# Docker secrets), so for each NAME below, NAME_FILE names a file whose content becomes
# NAME. Then `egressguard` replaces this shell (exec: it is the process that gets
# SIGTERM). Arguments that start with a flag go to `egressguard run`.
set -eu

for name in VAULT_TOKEN VAULT_ROLE_ID VAULT_SECRET_ID EGRESSGUARD_LIMITS_STORE; do
    eval "file=\${${name}_FILE:-}"
    [ -n "$file" ] || continue
    eval "given=\${${name}:-}"
    if [ -n "$given" ]; then
        echo "egressguard-entrypoint: both $name and ${name}_FILE are set; set one" >&2
        exit 2
    fi
    if [ ! -r "$file" ]; then
        echo "egressguard-entrypoint: ${name}_FILE=$file cannot be read" >&2
        exit 2
    fi
    value=$(cat "$file")
    if [ -z "$value" ]; then
        echo "egressguard-entrypoint: ${name}_FILE=$file is empty" >&2
        exit 2
    fi
    export "$name=$value"
    unset "${name}_FILE"
done
unset file given value

if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- run "$@"
fi
exec egressguard "$@"
