"""AgentConnections: how many connections one agent may hold open at once."""

from __future__ import annotations

import orjson
import pytest
from mitmproxy import exceptions

from egressguard.pipeline import flowstate

OPENAI = "api.openai.com"


@pytest.fixture
def capped(pipeline):
    pipeline.tctx.options.update(egressguard_max_agent_connections=2)
    return pipeline


def test_a_connection_past_the_cap_is_refused_at_connect_until_one_closes(capped):
    auth = capped.basic("agent-a", capped.token())
    first, second = capped.tunnel(OPENAI, proxy_auth=auth), capped.tunnel(OPENAI, proxy_auth=auth)
    assert first.response is None and second.response is None
    third = capped.tunnel(OPENAI, proxy_auth=auth)
    assert third.response.status_code == 429
    assert third.response.headers["retry-after"] == "1"
    error = orjson.loads(third.response.content)["error"]
    assert error["code"] == "too_many_connections"
    assert "already has 2 connections open" in error["message"]
    other = capped.tunnel(OPENAI, proxy_auth=capped.basic("agent-b", capped.token("agent-b")))
    assert other.response is None  # the cap is per agent
    capped.hook("client_disconnected", first.client_conn)
    assert capped.tunnel(OPENAI, proxy_auth=auth).response is None


def test_the_token_as_api_key_counts_the_connection_at_its_first_request(capped):
    headers = [("Authorization", "Bearer " + capped.token())]
    tunnels = [capped.tunnel(OPENAI) for _ in range(3)]
    flows = [capped.request(t, headers=headers, body={"model": "gpt-4o-mini"})
             for t in tunnels]
    for flow in flows:
        capped.run(flow)
    assert [f.response.status_code for f in flows] == [200, 200, 429]
    again = capped.request(tunnels[0], headers=headers, body={"model": "gpt-4o-mini"})
    capped.run(again)  # a counted connection carries on
    assert again.response.status_code == 200
    assert flows[2].metadata[flowstate.REFUSAL].reason == "too_many_connections"
    assert capped.agentconnections.open == {"agent-a": 2}


def test_zero_means_no_cap_and_negative_is_refused(pipeline):
    pipeline.tctx.options.update(egressguard_max_agent_connections=0)
    auth = pipeline.basic("agent-a", pipeline.token())
    assert all(pipeline.tunnel(OPENAI, proxy_auth=auth).response is None for _ in range(300))
    with pytest.raises(exceptions.OptionsError, match="0 or more"):
        pipeline.tctx.options.update(egressguard_max_agent_connections=-1)
