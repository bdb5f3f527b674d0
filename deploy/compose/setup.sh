#!/bin/sh
# One-shot set-up of deploy/compose.yaml, run in the egressguard image as its own
# user before the proxies start; safe to run again (nothing existing is replaced).
#
#   - the interception CA in the `certs` volume, shared by both replicas;
#   - the token key in the `state` volume (made by the first `token issue`);
#   - the example agent's token, and the CA certificate agents trust, in the
#     `agent-share` volume, which the agent mounts read-only (it never sees the CA key
#     or the token key).
set -eu
umask 077

certs=${EGRESSGUARD_CERTS:-/var/lib/egressguard/certs}
state=${EGRESSGUARD_STATE:-/var/lib/egressguard/state}
share=${EGRESSGUARD_SHARE:-/var/lib/egressguard/share}

egressguard ca init --certs "$certs" >/dev/null
cp "$certs/egressguard-ca.pem" "$certs/egressguard-ca-bundle.pem" "$share/"
if [ ! -s "$share/token" ]; then
    egressguard token issue --state "$state" --agent example-agent --team examples \
        --ttl 30d > "$share/token.new"
    mv "$share/token.new" "$share/token"
fi
echo "setup.sh: CA in $certs, the example agent's token and trust files in $share"
