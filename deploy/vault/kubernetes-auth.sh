#!/bin/sh
# Prepares Vault / OpenBao for egressguard on Kubernetes (deploy/k8s): the same
# policy as init.sh, and the Kubernetes auth method with the role `egressguard`, which
# the OpenBao Proxy sidecar in each egressguard pod logs in with (auto-auth method
# kubernetes, deploy/k8s/egressguard/configmap-openbao-proxy.yaml). Safe to run again.
#
# The role accepts only the service account egressguard in the namespace egressguard,
# and only tokens minted for the audience `openbao` (the pod's projected token; the
# proxy container itself has no service account token at all).
#
# Environment: BAO_ADDR (or VAULT_ADDR) and BAO_TOKEN (or VAULT_TOKEN); BAO (default
# bao); KUBERNETES_HOST: the cluster's API server as Vault reaches it (default
# https://kubernetes.default.svc, right when Vault runs in the same cluster: it then
# uses its own service account to review tokens); KUBERNETES_CA_CERT: a PEM file with
# the API server's CA, when Vault runs elsewhere.
set -eu

BAO=${BAO:-bao}
ROLE=egressguard
POLICY=egressguard-proxy
NAMESPACE=egressguard
SERVICE_ACCOUNT=egressguard
AUDIENCE=openbao
here=$(cd "$(dirname "$0")" && pwd)

if ! "$BAO" secrets list -format=json | grep -q '"secret/"'; then
    "$BAO" secrets enable -path=secret kv-v2
fi
if ! "$BAO" auth list -format=json | grep -q '"kubernetes/"'; then
    "$BAO" auth enable kubernetes
fi
if [ -n "${KUBERNETES_CA_CERT:-}" ]; then
    "$BAO" write auth/kubernetes/config \
        kubernetes_host="${KUBERNETES_HOST:-https://kubernetes.default.svc}" \
        kubernetes_ca_cert="@$KUBERNETES_CA_CERT"
else
    "$BAO" write auth/kubernetes/config \
        kubernetes_host="${KUBERNETES_HOST:-https://kubernetes.default.svc}"
fi
"$BAO" policy write "$POLICY" "$here/egressguard-policy.hcl"
"$BAO" write "auth/kubernetes/role/$ROLE" \
    bound_service_account_names="$SERVICE_ACCOUNT" \
    bound_service_account_namespaces="$NAMESPACE" \
    audience="$AUDIENCE" \
    token_policies="$POLICY" token_ttl=1h token_max_ttl=4h
echo "kubernetes-auth.sh: role $ROLE for $NAMESPACE/$SERVICE_ACCOUNT ready (policy $POLICY)"
