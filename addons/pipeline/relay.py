"""Retries, key pools, vendor failover and the response cache, for the rules that ask.

mitmproxy forwards a request once, and a response it has started to receive is the
one the agent gets. To try again before the agent has seen a byte, a relayed request
goes from mitmproxy to a loopback HTTP server inside this process (the relay) instead
of to the vendor; the relay makes the attempts (another key of the pool, a pause, the
fallback vendor with the request translated), and answers mitmproxy with the first
answer worth giving, streamed as it arrives. Everything after the relay (answer
scrubbing, pseudonyms restored, usage, the audit record) sees that answer as if the
vendor had sent it. Cached answers are served by the relay the same way.

The real key never crosses the loopback hop: the relay holds the request as Inject
prepared it, and mitmproxy sends only a one-time ticket. Rules without retry,
fallback, cache or a pool of several keys are not relayed and pay nothing for this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import orjson
from mitmproxy import ctx, exceptions, http

from egressguard.backends import cache as answers
from egressguard.backends.vault import SecretStore
from egressguard.core import bodies, cachekey, credentials, logs, translate
from egressguard.core.errors import EgressError, UpstreamFailed, vendor_error_body
from egressguard.core.keypool import KeyPools, retry_after_seconds
from egressguard.core.resilience import (
    KEY_REFUSED_STATUS,
    RETRYABLE_STATUS,
    Fallback,
    Resilience,
)
from egressguard.core.rules import Rule
from egressguard.core.secret import Secret, SecretLocation
from egressguard.core.vendors import Vendor, catalogue
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)
TICKET_HEADER = "x-egressguard-relay"
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                  "te", "trailer", "upgrade", "proxy-connection"})
_NOT_RESENT = _HOP | {"host"}  # httpx writes these itself
_FRESH_HEADERS = {"anthropic": [("anthropic-version", "2023-06-01")]}
_READ = 65536
TICKET_TTL = 60.0  # seconds a ticket waits for mitmproxy to bring its request


@dataclass(slots=True)
class Target:
    """One place an attempt can go: the rule's own vendor, or a fallback."""

    vendor: Vendor
    host: str
    path: str  # with the query
    family: str  # translate family of what is sent
    model: str | None
    fallback: Fallback | None = None


@dataclass(slots=True)
class Ticket:
    flow: http.HTTPFlow
    rule: Rule
    plan: Resilience
    family: str  # the agent's API family (translate.FAMILIES, or "other")
    primary: Target
    headers: list[tuple[str, str]]  # the prepared request's, without credentials
    body: bytes  # as prepared (redacted, clamped, routed), content-encoding as sent
    body_json: Any  # the decoded body, for translation and cache keys (None: not JSON)
    secret: Secret | None  # the key Inject chose (None: every pooled key rests)
    key: str | None  # which of the pool's keys that is (None: no pool)
    pool: dict[str, SecretLocation]  # the pool's keys: resolved path -> location
    cache_key: str | None = None
    semantic: tuple[str, str] | None = None  # (scope, text) to index on a good answer
    hit: answers.CachedAnswer | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Answer:
    """What the relay gives mitmproxy: status, headers, and the body as it comes."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    close: Any = None  # coroutine function releasing the vendor's response


def family_of(flow: http.HTTPFlow) -> str:
    info = flow.metadata[flowstate.REQUEST]
    endpoint = info.endpoint
    if endpoint == "chat" and endpoint.api in ("openai", "azure_openai") \
            and info.path.endswith("/chat/completions"):
        return "openai_chat"
    if endpoint == "messages" and endpoint.api == "anthropic" and info.path == "/v1/messages":
        return "anthropic_messages"
    return "other"


def _cache_family(family: str, flow: http.HTTPFlow) -> str:
    endpoint = flow.metadata[flowstate.REQUEST].endpoint
    if family != "other":
        return family
    if endpoint == "embeddings" and endpoint.api in ("openai", "azure_openai"):
        return "openai_embeddings"
    if endpoint == "responses" and endpoint.api == "openai":
        return "openai_responses"
    return "other"


class Breaker:
    """Per rule: after FAILURES requests in a row found the rule's vendor failing, its
    fallback goes first for COOL_DOWN seconds; then one request tries the vendor again
    (half-open), and one more failure opens it again at once."""

    FAILURES = 3
    COOL_DOWN = 10.0

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def open_until(self, rule: str) -> float | None:
        """Seconds the breaker stays open, or None if it is closed (or half-open)."""
        left = self._until.get(rule, 0.0) - time.monotonic()
        return left if left > 0 else None

    def failed(self, rule: str) -> None:
        failures = self._failures[rule] = self._failures.get(rule, 0) + 1
        if failures >= self.FAILURES:
            if self.open_until(rule) is None:
                log.warning("rule %s: its vendor failed %d requests in a row; its fallback "
                            "goes first for %.0fs", rule, failures, self.COOL_DOWN)
            self._until[rule] = time.monotonic() + self.COOL_DOWN

    def succeeded(self, rule: str) -> None:
        self._failures.pop(rule, None)
        self._until.pop(rule, None)


class Relay:
    def __init__(self, store: SecretStore | None = None) -> None:
        self.store = store  # taken from Inject when running, if not given
        self.tickets: dict[str, Ticket] = {}
        self.address: tuple[str, int] | None = None
        self.answers: answers.AnswerStore = answers.MemoryStore()
        self.index: answers.SemanticIndex | None = None  # built on first semantic rule
        self._no_embedder = False
        self.breaker = Breaker()
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._storing: set[asyncio.Task[None]] = set()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_cache_store", str, "",
                          "Where cached answers live: empty for this process only, or "
                          "redis://HOST:PORT/DB to share them between replicas.")
        loader.add_option("egressguard_cache_entries", int, 10_000,
                          "Answers the in-process cache holds at most.")

    def configure(self, updated: set[str]) -> None:
        if {"egressguard_cache_store", "egressguard_cache_entries"} & updated:
            url = ctx.options.egressguard_cache_store
            old = self.answers
            try:
                self.answers = answers.RedisStore(url) if url else \
                    answers.MemoryStore(max_entries=ctx.options.egressguard_cache_entries)
            except ValueError as exc:  # the message names the server, never its password
                raise exceptions.OptionsError(f"egressguard_cache_store: {exc}") from None
            with suppress(RuntimeError):
                asyncio.get_running_loop().create_task(old.close())
        if "ssl_verify_upstream_trusted_ca" in updated or "ssl_insecure" in updated:
            self._client = None  # rebuilt with the new trust on next use

    def running(self) -> None:
        # The socket is bound here, synchronously: a `running` hook that awaits would let
        # other addons' start-up tasks log (a Vault that is down, say) inside mitmproxy's
        # start-up error check, which then exits. Connections wait in the backlog until
        # the server below accepts them, one loop iteration later.
        sock = socket.create_server(("127.0.0.1", 0))
        self.address = sock.getsockname()[:2]
        task = asyncio.ensure_future(asyncio.start_server(self._serve, sock=sock))
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Future[asyncio.Server]) -> None:
        if task.cancelled() or task.exception() is not None:
            log.error("the relay could not start: %s", task.exception())
            self.address = None  # rules that would be relayed go straight out instead
            return
        self._server = task.result()

    def done(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._serving):
            task.cancel()
        if self.index is not None:
            self.index.close()
        with suppress(RuntimeError):  # no loop left at shutdown: the process is ending
            loop = asyncio.get_running_loop()
            if self._client is not None:
                loop.create_task(self._client.aclose())
            loop.create_task(self.answers.close())
        self._client = None

    # -- the hook: take the flow over ---------------------------------------------------
    @flowstate.fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow) or self.address is None:
            return
        decision = flow.metadata[flowstate.DECISION]
        rule: Rule | None = decision.rule
        if rule is None or not rule.resilience.relayed or "upgrade" in flow.request.headers:
            return  # a WebSocket (Realtime) session is not an exchange to retry or replay
        dest = flow.metadata[flowstate.DESTINATION]
        family = family_of(flow)
        encoding = flow.request.headers.get("content-encoding", "")
        raw = flow.request.raw_content or b""
        try:  # the body as it leaves (Redact and Enforce rewrote the bytes, not
            # VendorRequest's parse): a fallback must get the redacted text
            body_json = orjson.loads(bodies.decode(raw, encoding)) if raw else None
        except ValueError:  # a multipart upload, say: relayed as it is, never translated
            body_json = None
        vendor: Vendor = dest.vendor
        ticket = Ticket(
            flow=flow, rule=rule, plan=rule.resilience, family=family,
            primary=Target(vendor, dest.host, flow.request.path, family,
                           flow.metadata[flowstate.REQUEST].model),
            headers=credentials.strip(flow.request.headers.items(multi=True), vendor),
            body=raw, body_json=body_json, secret=flow.metadata.get(flowstate.SECRET),
            key=flow.metadata.get(flowstate.POOL_PICK), pool=flow.metadata.get(flowstate.POOL, {}))
        if rule.resilience.cache is not None and isinstance(body_json, dict):
            await self._look_up(ticket, flow, _cache_family(family, flow), body_json)
        flow.metadata[flowstate.ATTEMPTS] = ticket.attempts
        token = secrets.token_urlsafe(24)
        self._expire_tickets()
        self.tickets[token] = ticket
        # what mitmproxy sends the relay: no credential, only the ticket
        flow.request.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in ticket.headers] + [(TICKET_HEADER.encode(), token.encode())])
        flow.metadata[flowstate.RELAY] = self.address

    async def _look_up(self, ticket: Ticket, flow: http.HTTPFlow, family: str,
                       body: dict[str, Any]) -> None:
        plan = ticket.plan.cache
        assert plan is not None
        if (why := cachekey.uncacheable(body, family)) is not None:
            flow.metadata[flowstate.CACHE] = {"status": "bypass", "why": why}
            return
        decision = flow.metadata[flowstate.DECISION]
        dest = flow.metadata[flowstate.DESTINATION]
        path = flow.metadata[flowstate.REQUEST].path
        ticket.cache_key = cachekey.exact_key(decision.team, dest.vendor.name, path, body,
                                              family)
        if plan.exact_ttl is not None and (hit := await self.answers.get(ticket.cache_key)):
            ticket.hit = hit
            flow.metadata[flowstate.CACHE] = {"status": "hit", "kind": "exact"}
            return
        if plan.semantic_ttl is not None:
            parts = cachekey.semantic_parts(decision.team, dest.vendor.name, path, body, family)
            if parts is not None:
                ticket.semantic = parts
                index = await self._semantic()
                found = await index.find(*parts, plan.threshold) if index else None
                if found is not None and (hit := await self.answers.get(found[0])):
                    ticket.hit = hit
                    flow.metadata[flowstate.CACHE] = {"status": "hit", "kind": "semantic",
                                                      "similarity": round(found[1], 4)}
                    return
        flow.metadata[flowstate.CACHE] = {"status": "miss"}

    async def _semantic(self) -> answers.SemanticIndex | None:
        """The semantic index; None (exact matching only, said once in the log) when the
        embedding model cannot be loaded."""
        if self.index is None and not self._no_embedder:
            from egressguard.backends import embedder  # numpy and the model: on demand
            try:
                index = answers.SemanticIndex(embedder.Embedder())
                await index.warm()  # loads the weights, in the index's worker thread
            except embedder.EmbedderUnavailable as exc:
                log.error("the semantic cache is off, exact matches only: %s", exc)
                self._no_embedder = True
                return None
            if self.index is None:
                self.index = index
            else:  # another request got there first
                index.close()
        return self.index

    def _expire_tickets(self) -> None:
        """Tickets whose request never came (the agent left first) do not pile up."""
        if len(self.tickets) < 256:
            return
        old = time.monotonic() - TICKET_TTL
        for token in [t for t, ticket in self.tickets.items() if ticket.created < old]:
            del self.tickets[token]

    # -- the loopback server ------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(conn, reader, writer):
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._serving.discard(task)
            writer.close()

    async def _serve_one(self, conn: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
        request = await _next_event(conn, reader)
        if not isinstance(request, h11.Request):
            return False
        while isinstance(await _next_event(conn, reader), h11.Data):
            pass  # the body is the ticket's; what mitmproxy sends is a copy
        token = dict(request.headers).get(TICKET_HEADER.encode(), b"").decode()
        ticket = self.tickets.pop(token, None)
        if ticket is None:
            await _write(conn, writer, h11.Response(status_code=403, headers=[
                ("content-length", "0")]), h11.EndOfMessage())
            return False
        token_ctx = logs.REQUEST_ID.set(flowstate.begin(ticket.flow))
        try:
            answer = await self.answer(ticket)
            await _write(conn, writer, h11.Response(status_code=answer.status,
                                                    headers=answer.headers))
            try:
                async for chunk in answer.body:
                    if chunk:
                        await _write(conn, writer, h11.Data(data=chunk))
            finally:
                if answer.close is not None:
                    await answer.close()
            await _write(conn, writer, h11.EndOfMessage())
        finally:
            logs.REQUEST_ID.reset(token_ctx)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    # -- attempts -------------------------------------------------------------------------
    async def answer(self, t: Ticket) -> Answer:
        """The first answer worth giving: a cached one, the vendor's, or the fallback's
        translated back; when all fail, the rule's own vendor's last failure.

        While the rule's vendor keeps failing (a circuit breaker per rule, see
        `Breaker`), requests go to the fallback first and spend no retries on it."""
        if t.hit is not None:
            return _replay(t.hit)
        deadline = time.monotonic() + t.plan.budget().within
        fallback_first = bool(t.plan.fallback) and (
            until := self.breaker.open_until(t.rule.name)) is not None
        if fallback_first:
            t.attempts.append(_attempt_record(t.primary, None, None, (
                f"not sent first: {t.primary.vendor.name} failed the last requests under "
                f"this rule; the fallback goes first for {until:.0f}s more"), 0.0))
            if (answered := await self._fail_overs(t, deadline)) is not None:
                return answered
        outcome = await self._primary(t, deadline)
        if isinstance(outcome, Answer):
            return outcome
        failure, failed_why, vendor_failed = outcome
        if vendor_failed:
            self.breaker.failed(t.rule.name)
        if not fallback_first:
            if (answered := await self._fail_overs(t, deadline)) is not None:
                return answered
        return self._give_up(t, failure, failed_why)

    async def _fail_overs(self, t: Ticket, deadline: float) -> Answer | None:
        for fallback in t.plan.fallback:
            if time.monotonic() >= deadline:
                break
            answered = await self._fail_over(t, fallback)
            if answered is not None:
                return answered
        return None

    async def _primary(self, t: Ticket, deadline: float
                       ) -> Answer | tuple[tuple[int, list[tuple[str, str]], bytes] | None,
                                           str, bool]:
        """The rule's own vendor, with its retries and keys: the answer, or (the last
        failure, why, whether the vendor failed rather than refused the request)."""
        budget = t.plan.budget()
        failure: tuple[int, list[tuple[str, str]], bytes] | None = None
        failed_why = "no attempt was made"
        tried: list[str] = []  # pool keys this request has used
        retry_after: float | None = None
        secret, key = t.secret, t.key
        for attempt in range(1, budget.attempts + 1):
            if attempt > 1:
                if t.pool:
                    picked = await self._next_key(t, tried)
                    if picked is None:
                        break  # every pooled key rests or is out: on to the fallback
                    key, secret = picked
                # a key not tried yet goes at once; the same key waits its turn
                pause = 0.0 if key is not None and key not in tried else \
                    budget.pause(attempt, retry_after)
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
            if secret is None:
                break
            if key is not None:
                tried.append(key)
            outcome = await self._attempt(t, t.primary, secret, t.body, t.headers)
            if isinstance(outcome, Answer):
                self.breaker.succeeded(t.rule.name)
                return self._deliver(t, t.primary, secret, outcome)
            status, headers, body, why = outcome
            failed_why = why
            if status:
                failure = (status, headers, body)
                retry_after = retry_after_seconds(_header(headers, "retry-after"))
                if status == 429 and key is not None:
                    self.pools.limited(key, retry_after)
                elif status in KEY_REFUSED_STATUS and key is not None:
                    self.pools.refused(key, status)
                elif status not in RETRYABLE_STATUS:
                    return failure, why, False  # the vendor's answer to this request
            if time.monotonic() >= deadline:
                break
        return failure, failed_why, True

    async def _next_key(self, t: Ticket, tried: list[str]) -> tuple[str, Secret] | None:
        """(pool key, its secret): one this request has not used if any is usable."""
        pool = t.plan.pool
        assert pool is not None
        path = self.pools.pick(t.rule.name, list(t.pool), pool.pick, exclude=tried) \
            or self.pools.pick(t.rule.name, list(t.pool), pool.pick)
        if path is None:
            return None
        try:
            return path, await self._store().get(t.primary.vendor, t.pool[path])
        except EgressError as err:
            log.warning("key pool: %s", err.message)
            return None

    async def _fail_over(self, t: Ticket, fallback: Fallback) -> Answer | None:
        vendor = catalogue().by_name(fallback.vendor)
        assert vendor is not None  # the policy checked the name
        target = _fallback_target(t, vendor, fallback)
        if target.family != t.family and (t.family == "other" or target.family == "other"):
            t.attempts.append(_attempt_record(target, None, None, "not failed over: "
                              f"{t.family} requests cannot be sent to {vendor.name}", 0.0))
            return None
        try:
            body = translate.request(t.body_json, t.family, target.family, fallback.model) \
                if isinstance(t.body_json, dict) else None
        except translate.Untranslatable as exc:
            t.attempts.append(_attempt_record(target, None, None,
                                              f"not failed over: {exc}", 0.0))
            return None
        if body is None:
            return None
        decision = t.flow.metadata[flowstate.DECISION]
        policy = t.flow.metadata[flowstate.POLICY]
        where = policy.secrets.location_for(vendor.name, decision.agent, decision.team,
                                            fallback.secret)
        try:
            secret = await self._store().get(vendor, where)
        except EgressError as err:
            t.attempts.append(_attempt_record(target, None, None, err.message, 0.0))
            return None
        headers = [("content-type", "application/json"), ("accept", _header(
            t.headers, "accept") or "application/json"), *_FRESH_HEADERS.get(vendor.api, [])]
        outcome = await self._attempt(t, target, secret, orjson.dumps(body), headers)
        if not isinstance(outcome, Answer):
            return None
        if outcome.status >= 400:  # the fallback refused: in its shape, not the agent's
            await outcome.close()
            return None
        return self._deliver(t, target, secret, outcome)

    async def _attempt(self, t: Ticket, target: Target, secret: Secret, body: bytes,
                       headers: list[tuple[str, str]]
                       ) -> Answer | tuple[int, list[tuple[str, str]], bytes, str]:
        """Send once: the answer if it is to be given, else (status, headers, body, why)
        of the failure (status 0: no answer at all)."""
        sent = credentials.inject([h for h in headers if h[0].lower() not in _NOT_RESENT],
                                  target.vendor, secret, target.host)
        if t.cache_key is not None:  # cached bytes must be readable: ask for them plain
            sent = [(k, v) for k, v in sent if k.lower() != "accept-encoding"]
            sent.append(("accept-encoding", "identity"))
        started = time.perf_counter()
        try:
            address = await self._address(t, target)
            request = self._http().build_request(
                t.flow.request.method, _url(address, target.path),
                headers=[*sent, ("host", target.host)], content=body,
                extensions={"sni_hostname": target.host})
            response = await self._http().send(request, stream=True)
        except (httpx.HTTPError, OSError, EgressError) as exc:
            why = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
            t.attempts.append(_attempt_record(target, secret, 0, why, started))
            return 0, [], b"", why
        status = response.status_code
        t.attempts.append(_attempt_record(target, secret, status, None, started))
        if status < 400 or not (status in RETRYABLE_STATUS or status in KEY_REFUSED_STATUS):
            return Answer(status, list(response.headers.multi_items()), response.aiter_raw(),
                          response.aclose)
        try:
            data = await response.aread()
        except httpx.HTTPError:
            data = b""
        finally:
            await response.aclose()
        return status, list(response.headers.multi_items()), data, f"{target.vendor.name} " \
            f"answered {status}"

    def _deliver(self, t: Ticket, target: Target, secret: Secret, answer: Answer) -> Answer:
        """The answer on its way to mitmproxy: translated back if a fallback gave it,
        remembered by the cache if it may be."""
        flow = t.flow
        primary_secret = flow.metadata.get(flowstate.SECRET)
        if primary_secret is not None and primary_secret is not secret:
            flow.metadata.setdefault(flowstate.OTHER_SECRETS, []).append(primary_secret)
        flow.metadata[flowstate.SECRET] = secret
        headers = [(k, v) for k, v in answer.headers if k.lower() not in _HOP]
        if target.fallback is not None:
            flow.metadata[flowstate.SERVED_BY] = {"vendor": target.vendor.name,
                                                  "model": target.model}
            answer = _translated(t, target, answer, headers)
            headers = answer.headers
        body = answer.body
        # a fallback's answer is cached too: it is in the shape the agent asked for
        if t.cache_key is not None and answer.status == 200 \
                and not _header(headers, "content-encoding"):
            body = self._remember(t, body, headers)
        return Answer(answer.status, headers, body, answer.close)

    async def _remember(self, t: Ticket, body: AsyncIterator[bytes],
                        headers: list[tuple[str, str]]) -> AsyncIterator[bytes]:
        """Pass the body on as it comes, and store it once it has all come."""
        kept, size = [], 0
        async for chunk in body:
            yield chunk
            size += len(chunk)
            if size <= answers.MAX_ANSWER_BYTES:
                kept.append(chunk)
        if size > answers.MAX_ANSWER_BYTES:
            return
        plan = t.plan.cache
        assert plan is not None
        cached = answers.CachedAnswer(200, _header(headers, "content-type") or
                                      "application/json", b"".join(kept), t.primary.model,
                                      None, time.time())
        ttl = max(plan.exact_ttl or 0.0, plan.semantic_ttl or 0.0)
        task = asyncio.ensure_future(self._store_answer(t, cached, ttl))
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def _store_answer(self, t: Ticket, cached: answers.CachedAnswer, ttl: float) -> None:
        assert t.cache_key is not None and t.plan.cache is not None
        index = await self._semantic() if t.semantic is not None else None
        if index is not None and t.plan.cache.semantic_ttl is not None:
            # indexed first: once the answer can be read, similar questions find it too
            await index.add(*t.semantic, t.cache_key, t.plan.cache.semantic_ttl)
        await self.answers.put(t.cache_key, cached, ttl)

    def _give_up(self, t: Ticket, failure: tuple[int, list[tuple[str, str]], bytes] | None,
                 why: str) -> Answer:
        """Every attempt failed: the rule's own vendor's last failure, as it answered
        (the agent's SDK understands it); no answer at all: a 502 in its shape."""
        if failure is not None:
            status, headers, body = failure
            kept = [(k, v) for k, v in headers if k.lower() not in _HOP]
            return Answer(status, kept, _once(body))
        err = UpstreamFailed(f"{t.primary.vendor.name} could not be reached after "
                             f"{len(t.attempts)} attempt(s): {why}", reason="upstream_failed")
        body = vendor_error_body(err, t.primary.vendor.error_shape)
        return Answer(502, [("content-type", "application/json")], _once(body))

    # -- plumbing ---------------------------------------------------------------------------
    async def _address(self, t: Ticket, target: Target) -> tuple[str, int]:
        """Where an attempt connects: the tunnel's checked address for the rule's own
        vendor, the operator's map or a checked resolution for a fallback's."""
        if target is t.primary:
            route = t.flow.metadata[flowstate.DESTINATION].route
            assert route is not None
            return route
        upstream = ctx.master.addons.get("upstreammap")
        if (mapped := upstream.route(target.host)) is not None:
            return mapped
        return await upstream.checked_address(flowstate.Destination(target.host, 443,
                                                                    target.vendor))

    @property
    def pools(self) -> KeyPools:
        """Inject's: it picks each request's first key, the relay the next ones."""
        return ctx.master.addons.get("inject").pools

    def _store(self) -> SecretStore:
        if self.store is None:
            self.store = ctx.master.addons.get("inject").store
        assert self.store is not None
        return self.store

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=_trust(), trust_env=False, http2=False, follow_redirects=False,
                timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))
        return self._client


def _trust() -> ssl.SSLContext | bool:
    if getattr(ctx.options, "ssl_insecure", False):
        return False
    ca = getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None)
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def _fallback_target(t: Ticket, vendor: Vendor, fallback: Fallback) -> Target:
    if vendor.api == "azure_openai":
        deployment = fallback.deployment or fallback.model
        path = f"/openai/deployments/{deployment}/chat/completions?api-version=" \
               f"{fallback.api_version}"
        family = "openai_chat" if t.family == "openai_chat" else "other"
    elif vendor.api == "anthropic":
        path, family = "/v1/messages", "anthropic_messages"
    elif vendor.api == "openai":
        path, family = "/v1/chat/completions", "openai_chat"
    else:
        path, family = t.primary.path, "other"
    return Target(vendor, fallback.host or vendor.hosts[0], path, family, fallback.model,
                  fallback)


def _translated(t: Ticket, target: Target, answer: Answer,
                headers: list[tuple[str, str]]) -> Answer:
    content_type = _header(headers, "content-type") or ""
    keep = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-encoding")]
    model = target.model or ""
    if target.family == t.family:  # Azure for OpenAI: the same shape
        return Answer(answer.status, headers, answer.body, answer.close)
    if content_type.startswith("text/event-stream"):
        include_usage = isinstance(t.body_json, dict) and isinstance(
            t.body_json.get("stream_options"), dict) and \
            bool(t.body_json["stream_options"].get("include_usage"))
        stream = translate.StreamTranslator(t.family, target.family, model, include_usage)
        return Answer(answer.status, [*keep, ("content-type", "text/event-stream")],
                      _through(answer.body, stream, _decoder(headers)), answer.close)
    return Answer(answer.status, [*keep, ("content-type", "application/json")],
                  _whole(answer.body, t, target, _decoder(headers)), answer.close)


def _decoder(headers: list[tuple[str, str]]) -> bodies.StreamDecoder | None:
    encoding = (_header(headers, "content-encoding") or "").strip().lower()
    return bodies.StreamDecoder(encoding, bodies.MAX_ANSWER) \
        if encoding not in ("", "identity") else None


async def _through(raw: AsyncIterator[bytes], stream: translate.StreamTranslator,
                   decoder: bodies.StreamDecoder | None) -> AsyncIterator[bytes]:
    async for chunk in raw:
        yield stream.feed(decoder.feed(chunk) if decoder else chunk)
    yield stream.close()


async def _whole(raw: AsyncIterator[bytes], t: Ticket, target: Target,
                 decoder: bodies.StreamDecoder | None) -> AsyncIterator[bytes]:
    data = b"".join([decoder.feed(c) if decoder else c async for c in raw])
    try:
        answer = translate.response(orjson.loads(data), t.family, target.family,
                                    target.model or "")
    except ValueError:
        yield data
        return
    yield orjson.dumps(answer)


def _replay(hit: answers.CachedAnswer) -> Answer:
    return Answer(hit.status, [("content-type", hit.content_type),
                               ("x-egressguard-cache", "hit")], _once(hit.body))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _attempt_record(target: Target, secret: Secret | None, status: int | None,
                    error: str | None, started: float) -> dict[str, Any]:
    return {"vendor": target.vendor.name, "model": target.model,
            "key": secret.ref.path if secret is not None else None, "status": status,
            "error": error,
            "ms": round((time.perf_counter() - started) * 1000, 3) if started else 0.0}


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _url(address: tuple[str, int], path: str) -> str:
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"https://{host}:{address[1]}{path}"


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        data = await reader.read(_READ)
        conn.receive_data(data)
        if not data:
            return conn.next_event()
    return event


async def _write(conn: h11.Connection, writer: asyncio.StreamWriter, *events: Any) -> None:
    for event in events:
        if (data := conn.send(event)):
            writer.write(data)
    await writer.drain()

