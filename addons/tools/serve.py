"""`egressguard run`: mitmproxy with the egressguard pipeline, configured from flags."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import exceptions, options

from egressguard.core.keyfiles import KeyFileExposed
from egressguard.pipeline import guard
from egressguard.tools import ca
from egressguard.tools.master import ProxyMaster
from egressguard.tools.ship import Supervisor

log = logging.getLogger("egressguard")


@dataclass
class ServeConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    policy: Path = Path("policies/default.yaml")
    journal: Path = Path("var/journal")
    state: Path = Path("var")
    certs: Path = Path("certs")
    upstream_map: list[str] = field(default_factory=list)
    upstream_ca: Path | None = None
    secret_ttl: float = 60.0
    vault_timeout: float = 2.0
    limits_store: str = ""  # redis:// URL; empty: counters in this process
    cache_store: str = ""  # redis:// URL; empty: cached answers in this process
    policy_poll: float = 1.0  # seconds; 0: reload on SIGHUP only
    sinks: Path | None = None  # ship the journal to these sinks (a child process)
    node: str | None = None
    signing_key: str = ""  # checkpoint signing key: a file or vault:...; "" none
    metrics_listen: str = ""  # HOST:PORT of /metrics, /healthz, /readyz; "" off
    shutdown_grace: float = 30.0  # seconds in-flight requests get on SIGTERM/SIGINT
    otlp_endpoint: str = ""  # OTLP/HTTP traces URL ("env": the OTEL_* variable); "" off
    journal_options: dict[str, object] = field(default_factory=dict)
    # limits and timeouts (guard.limit_options), over guard.limit_options()'s defaults
    limit_options: dict[str, object] = field(default_factory=dict)
    banner: bool = True


class Banner:
    """Prints, once the proxy listens, the exact lines an agent needs."""

    def __init__(self, config: ServeConfig, ca_files: ca.CaFiles) -> None:
        self.config, self.ca_files = config, ca_files

    def running(self) -> None:
        if not self.config.banner:
            return
        c = self.config
        proxy = f"{c.listen_host}:{c.listen_port}"
        exe = Path(sys.argv[0]).resolve() if sys.argv[0].endswith("egressguard") else \
            "egressguard"
        print(f"""
egressguard is listening on http://{proxy}

Point an agent at it (copy these lines; AGENT is any name you choose):
  export EGRESSGUARD_TOKEN=$({exe} token issue --state {c.state.resolve()} --agent AGENT)
  export HTTPS_PROXY=http://AGENT:$EGRESSGUARD_TOKEN@{proxy}
  export OPENAI_API_KEY=$EGRESSGUARD_TOKEN ANTHROPIC_API_KEY=$EGRESSGUARD_TOKEN
  export SSL_CERT_FILE={self.ca_files.bundle.resolve()}
  export REQUESTS_CA_BUNDLE=$SSL_CERT_FILE NODE_EXTRA_CA_CERTS={self.ca_files.cert.resolve()}

Store a vendor key (read from stdin, never echoed):
  {exe} secrets put openai --state {c.state.resolve()} --policy {c.policy.resolve()}
Audit records: {exe} audit tail --journal {c.journal.resolve()}
""", flush=True)


def mitmproxy_options(config: ServeConfig, ca_files: ca.CaFiles) -> dict[str, object]:
    opts: dict[str, object] = {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "confdir": str(config.certs),
        # No upstream connection before the agent has been identified and a key found.
        "connection_strategy": "lazy",
        "egressguard_policy": str(config.policy),
        "egressguard_journal": str(config.journal),
        "egressguard_token_key": str(config.state / "token.key"),
        "egressguard_revoked": str(config.state / "revoked-tokens"),
        "egressguard_upstream_map": config.upstream_map,
        "egressguard_secret_ttl": config.secret_ttl,
        "egressguard_vault_timeout": config.vault_timeout,
        "egressguard_limits_store": config.limits_store,
        "egressguard_cache_store": config.cache_store,
        "egressguard_policy_poll": config.policy_poll,
        "egressguard_sinks": str(config.sinks or ""),
        "egressguard_node": config.node or "",
        "egressguard_signing_key": config.signing_key,
        "egressguard_metrics_listen": config.metrics_listen,
        "egressguard_shutdown_grace": config.shutdown_grace,
        "egressguard_otlp_endpoint": config.otlp_endpoint,
        **config.journal_options,
        **guard.limit_options(), **config.limit_options,
        # mitmproxy's own defences Guard relies on: header validation refuses request
        # smuggling; without rawtcp, bytes in a tunnel that are not HTTP never reach a
        # vendor unidentified and unaudited (they get a 400)
        "validate_inbound_headers": True, "rawtcp": False,
    }
    if config.upstream_ca is not None:
        bundle = ca.trust_bundle(config.state / "upstream-trust.pem", [config.upstream_ca])
        opts["ssl_verify_upstream_trusted_ca"] = str(bundle)
    return opts


async def serve(config: ServeConfig) -> int:
    import egressguard

    try:
        ca_files = ca.init(config.certs)
    except KeyFileExposed as exc:
        print(f"egressguard: {exc}", file=sys.stderr)
        return 2
    # No termlog: egressguard.core.logs (installed by `egressguard run`) writes every
    # line, mitmproxy's too, scrubbed of secrets. confdir from the start: with the
    # default, mitmproxy would make a second CA key in ~/.mitmproxy as it loads.
    master = ProxyMaster(options.Options(confdir=str(config.certs)))
    try:
        # Our options exist once the addons are loaded (their defaults are inert),
        # and setting them then runs each addon's configure with the real values.
        master.addons.add(*egressguard.addons, Banner(config, ca_files))
        master.options.update(**mitmproxy_options(config, ca_files))
    except exceptions.OptionsError as exc:
        print(f"egressguard: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    shipper = Supervisor(config.journal, config.sinks, config.node) if config.sinks else None
    if shipper is not None:
        shipper.start()
    try:
        await master.run()
    finally:
        if shipper is not None:  # after the journal's last record and checkpoint
            await shipper.stop()
    return int(getattr(master, "exit_code", 0) or 0)


def use_local_vault(state: Path, port: int = 8200) -> None:
    """Start (or reuse) the embedded OpenBao unless VAULT_ADDR points elsewhere."""
    if os.environ.get("VAULT_ADDR"):
        log.info("using Vault at %s", os.environ["VAULT_ADDR"])
        return
    from egressguard.tools.localvault import LocalVault

    creds = LocalVault(state / "openbao", port=port).ensure_running()
    os.environ["VAULT_ADDR"] = creds.addr
    os.environ["VAULT_TOKEN"] = creds.proxy_token
    print(f"egressguard: local OpenBao at {creds.addr} (state in {state / 'openbao'})",
          flush=True)
