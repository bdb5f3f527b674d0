# The Vault / OpenBao policy of egressguard proxies: read the keys under
# secret/egressguard/ (KV version 2) and nothing else. Vendor keys live at
# secret/egressguard/vendors/{vendor} (field api_key) unless the proxy's policy file
# says otherwise (`secrets:`); a `--signing-key vault:secret/egressguard/...` reference
# is covered too. Writing keys is for people (`egressguard secrets put`), with their own
# token, never for the proxy.
path "secret/data/egressguard/*" {
  capabilities = ["read"]
}
