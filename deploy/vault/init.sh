#!/bin/sh
# Prepares Vault / OpenBao for egressguard proxies that log in with AppRole, as
# deploy/compose.yaml's `vault-init` service runs it (any host with the `bao` or
# `vault` CLI and an admin token can run it too). Safe to run again.
#
#   1. KV version 2 at secret/ (a dev server has it already);
#   2. the policy egressguard-proxy from egressguard-policy.hcl beside this script:
#      read secret/data/egressguard/*, nothing else;
#   3. AppRole, and the role `egressguard` whose tokens carry only that policy;
#   4. the role's RoleID in $APPROLE_DIR/role_id and, for each proxy named in
#      $NODES, a SecretID of its own in $APPROLE_DIR/secret_id.NODE (its metadata names
#      the proxy, and Vault copies that onto every token it logs in for; one proxy's
#      SecretID can be destroyed alone); without NODES one $APPROLE_DIR/secret_id.
#      Files 0400, owned by $APPROLE_OWNER when set; the proxies read them as
#      VAULT_ROLE_ID_FILE and VAULT_SECRET_ID_FILE. A SecretID file is kept as long as
#      Vault still knows its SecretID (running proxies hold it), else replaced.
#
# Environment: BAO_ADDR (or VAULT_ADDR) and BAO_TOKEN (or VAULT_TOKEN): the server
# and an admin token; APPROLE_DIR (required); NODES (proxy names, space-separated,
# optional); APPROLE_OWNER (uid:gid, optional);
# BAO (the CLI to run; default bao); SECRET_ID_TTL (default 0: no expiry, as a
# long-running proxy logs in again whenever its token ends; shorten it where a
# deployment hands out fresh SecretIDs).
set -eu

BAO=${BAO:-bao}
ROLE=egressguard
POLICY=egressguard-proxy
here=$(cd "$(dirname "$0")" && pwd)
: "${APPROLE_DIR:?APPROLE_DIR names the folder the RoleID and SecretID are written to}"

# A server that is still starting: wait (bounded) until it answers unsealed.
tries=0
until "$BAO" status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "init.sh: Vault at ${BAO_ADDR:-${VAULT_ADDR:-?}} is not up and unsealed" >&2
        "$BAO" status >&2 || true
        exit 1
    fi
    sleep 1
done

if ! "$BAO" secrets list -format=json | grep -q '"secret/"'; then
    "$BAO" secrets enable -path=secret kv-v2
fi
if ! "$BAO" auth list -format=json | grep -q '"approle/"'; then
    "$BAO" auth enable approle
fi
"$BAO" policy write "$POLICY" "$here/egressguard-policy.hcl"
"$BAO" write "auth/approle/role/$ROLE" \
    token_policies="$POLICY" token_ttl=1h token_max_ttl=4h \
    secret_id_ttl="${SECRET_ID_TTL:-0}" secret_id_num_uses=0

umask 077
mkdir -p "$APPROLE_DIR"

# hand a file over whole: written aside, made private, then renamed into place
publish() {
    chmod 0400 "$APPROLE_DIR/$1.new"
    if [ -n "${APPROLE_OWNER:-}" ]; then
        chown "$APPROLE_OWNER" "$APPROLE_DIR/$1.new"
    fi
    mv -f "$APPROLE_DIR/$1.new" "$APPROLE_DIR/$1"
}

# a SecretID file whose SecretID the role still knows (the ID goes on stdin, not argv)
known() {
    [ -s "$APPROLE_DIR/$1" ] || return 1
    "$BAO" write -format=json "auth/approle/role/$ROLE/secret-id/lookup" secret_id=- \
        < "$APPROLE_DIR/$1" 2>/dev/null | grep -q '"secret_id_accessor"'
}

"$BAO" read -field=role_id "auth/approle/role/$ROLE/role-id" > "$APPROLE_DIR/role_id.new"
publish role_id
if [ -z "${NODES:-}" ] && ! known secret_id; then
    "$BAO" write -f -field=secret_id "auth/approle/role/$ROLE/secret-id" \
        > "$APPROLE_DIR/secret_id.new"
    publish secret_id
fi
for node in ${NODES:-}; do
    known "secret_id.$node" && continue
    "$BAO" write -field=secret_id "auth/approle/role/$ROLE/secret-id" \
        metadata="{\"node\": \"$node\"}" > "$APPROLE_DIR/secret_id.$node.new"
    publish "secret_id.$node"
done
echo "init.sh: AppRole $ROLE ready (policy $POLICY); its IDs are in $APPROLE_DIR"
