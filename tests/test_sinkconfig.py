"""The sinks file (`egressguard.core.sinkconfig`): what a good file gives, and every
mistake reported at its file:line:column with what to write instead."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from egressguard.core.sinkconfig import Batch, Retry, load_sinks, parse_sinks
from egressguard.core.yamlsource import ConfigError

GOOD = """\
version: 1
sinks:
  - name: siem
    type: syslog
    address: siem.example.com:6514
    ca: /etc/egressguard/siem-ca.pem
    format: cef
    facility: local3
  - name: splunk
    type: splunk_hec
    url: https://splunk.example.com:8088
    token_env: SPLUNK_HEC_TOKEN
    index: ai_egress
    ack: true
    batch: {max_records: 200, max_bytes: 256KiB, max_wait: 200ms}
    retry: {initial: 1s, max: 2m}
  - name: elastic
    type: http
    url: https://es.example.com:9200/_bulk
    format: elastic_bulk
    mapping: ecs
    auth_file: /run/secrets/es-api-key
    headers: {X-Team: security}
    gzip: true
"""


def test_a_good_file() -> None:
    config = parse_sinks(GOOD, "sinks.yaml")
    assert config.names == ["siem", "splunk", "elastic"]
    siem, splunk, elastic = config.sinks
    assert (siem.type, siem.option("host"), siem.option("port"), siem.option("transport"),
            siem.option("format"), siem.option("facility")) == (
        "syslog", "siem.example.com", 6514, "tls", "cef", 19)
    assert splunk.option("token") == ("env", "SPLUNK_HEC_TOKEN")
    assert splunk.option("sourcetype") == "egressguard:audit" and splunk.option("ack") is True
    assert splunk.batch == Batch(200, 256 * 1024, 0.2)
    assert splunk.retry == Retry(1.0, 120.0)
    assert (elastic.mapping, elastic.option("format"), elastic.option("auth")) == (
        "ecs", "elastic_bulk", ("file", "/run/secrets/es-api-key"))
    assert elastic.option("headers") == {"X-Team": "security"}
    assert elastic.batch == Batch() and elastic.timeout == 10.0


def problems(body: str) -> list[str]:
    text = "version: 1\nsinks:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    with pytest.raises(ConfigError) as info:
        parse_sinks(text, "sinks.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("body, expected", [
    ("""\
     - name: siem
       type: syslog
       adress: siem:514
     """, ["sinks.yaml:3:5: sink 'siem' needs `address`: host:port of the syslog receiver",
           "sinks.yaml:5:5: unknown key 'adress' in sink 'siem' (syslog); did you mean "
           "'address'? (allowed: name, type, mapping, batch, timeout, retry, address, "
           "transport, ca, server_name, client_cert, client_key, format, facility, app_name, "
           "hostname)"]),
    ("""\
     - name: a
       type: kafka
     """, ["sinks.yaml:4:5: `type` is one of syslog, splunk_hec, http; found 'kafka'"]),
    ("""\
     - name: Bad Name
       type: http
       url: http://x/ndjson
     """, ["sinks.yaml:3:5: a sink needs a `name`: lower-case letters, digits, - and _ "
           "(it names the sink's cursor file); found 'Bad Name'"]),
    ("""\
     - {name: a, type: http, url: "http://x/"}
     - {name: a, type: http, url: "http://y/"}
     """, ["sinks.yaml:4:6: sink 'a' is defined twice: names must be unique (each has its "
           "own cursor)"]),
    ("""\
     - {name: s, type: splunk_hec, url: "https://s:8088"}
     """, ["sinks.yaml:3:5: sink 's': give exactly one of token_env (an environment "
           "variable) or token_file (a file holding it)"]),
    ("""\
     - {name: s, type: splunk_hec, url: "https://s:8088", token_env: T, token_file: /t}
     """, ["sinks.yaml:3:5: sink 's': give exactly one of token_env (an environment "
           "variable) or token_file (a file holding it)"]),
    ("""\
     - name: e
       type: http
       url: https://es/_bulk
       headers: {Authorization: "ApiKey abc"}
     """, ["sinks.yaml:6:15: sink 'e': a credential does not belong in this file: use "
           "auth_header with auth_env or auth_file"]),
    ("""\
     - {name: t, type: syslog, address: "s:514", transport: tcp, ca: /ca.pem}
     """, ["sinks.yaml:3:47: sink 't': TLS settings given with `transport: tcp`; use "
           "`transport: tls`"]),
    ("""\
     - {name: r, type: http, url: "ftp://x", retry: {initial: 10s, max: 1s}}
     """, ["sinks.yaml:3:27: sink 'r': `url` is an http(s) URL; found 'ftp://x'",
           "sinks.yaml:3:43: `retry.max` is the longest wait: at least `retry.initial`"]),
    ("""\
     - {name: b, type: http, url: "http://x", batch: {max_records: 0, max_wait: soon}}
     """, ["sinks.yaml:3:52: `max_records` is a whole number above 0, found 0",
           "sinks.yaml:3:68: a duration is seconds or a number with ms, s, m, h or d (e.g. "
           "1.5s, 10m), above 0; found 'soon'"]),
])
def test_every_mistake_is_placed_and_explained(body: str, expected: list[str]) -> None:
    assert problems(body) == expected


def test_the_version_is_required() -> None:
    with pytest.raises(ConfigError, match=r"sinks.yaml:1:1: `version: 1` is required"):
        parse_sinks("sinks: []\n", "sinks.yaml")


def test_load_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the sinks file"):
        load_sinks(tmp_path / "nope.yaml")


def test_the_shipped_example_parses() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "sinks.example.yaml"
    assert load_sinks(example).names == ["siem-syslog", "splunk", "elastic"]
