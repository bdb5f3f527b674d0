"""OpenBao set up for egressguard proxies the way an operator's init script does it, with
the `bao` CLI and the root token: KV v2 at `secret/`, a policy that reads only the
egressguard keys, an AppRole role with that policy, and one SecretID per proxy (its
metadata names the proxy, and OpenBao copies it onto every token that SecretID logs
in for, so a test can tell which proxy holds which token). Proxies then get
VAULT_ROLE_ID + VAULT_SECRET_ID, never the root token.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from secret_registry import register

from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.localvault import bao_binary

ROLE = "egressguard"
POLICY = "egressguard-proxy"
KV_MOUNT = "secret"
POLICY_HCL = f"""\
# egressguard proxies read vendor keys under {KV_MOUNT}/egressguard/ and nothing else
path "{KV_MOUNT}/data/egressguard/*" {{
  capabilities = ["read"]
}}
"""
_AMBIENT = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
            "all_proxy", "VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR")


@dataclass(frozen=True)
class AppRole:
    vault: OpenBaoDev
    role_id: str

    def secret_id(self, node: str) -> str:
        """A new SecretID for the proxy `node` (registered for the secret sweep)."""
        out = bao(self.vault, "write", "-format=json", f"auth/approle/role/{ROLE}/secret-id",
                  f"metadata={json.dumps({'node': node})}")
        return register(json.loads(out)["data"]["secret_id"], "vault token")

    def env(self, node: str) -> dict[str, str]:
        """The Vault settings of proxy `node`: AppRole, with its own SecretID."""
        return {"VAULT_ROLE_ID": self.role_id, "VAULT_SECRET_ID": self.secret_id(node)}


def set_up(vault: OpenBaoDev) -> AppRole:
    """Enable KV v2 (if missing) and AppRole, write the policy and the role; the role's
    RoleID."""
    mounts = json.loads(bao(vault, "secrets", "list", "-format=json"))
    if f"{KV_MOUNT}/" not in mounts:  # a dev server has it already
        bao(vault, "secrets", "enable", f"-path={KV_MOUNT}", "kv-v2")
    bao(vault, "auth", "enable", "approle")
    bao(vault, "policy", "write", POLICY, "-", stdin=POLICY_HCL)
    bao(vault, "write", f"auth/approle/role/{ROLE}", f"token_policies={POLICY}",
        "token_ttl=1h", "token_max_ttl=4h", "secret_id_ttl=0")
    role_id = bao(vault, "read", "-field=role_id", f"auth/approle/role/{ROLE}/role-id")
    return AppRole(vault, role_id.strip())


def bao(vault: OpenBaoDev, *args: str, stdin: str | None = None) -> str:
    """Run `bao ARGS` as the root operator of `vault`; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    env |= {"BAO_ADDR": vault.addr, "BAO_TOKEN": vault.root_token}
    done = subprocess.run([str(bao_binary()), *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bao {' '.join(args[:2])} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return done.stdout
