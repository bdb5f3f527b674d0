"""Policy reloads in the pipeline: atomic swap, last good policy kept, every reload audited."""

from __future__ import annotations

import hashlib

from egressguard.pipeline import flowstate


def reload(pipeline, text: str | None = None) -> bool:
    if text is not None:
        pipeline.files["policy"].write_text(text)
    return pipeline.tctx.master.event_loop.run_until_complete(
        pipeline.policyloader.reload("test"))


def test_a_valid_change_is_swapped_in_and_audited(pipeline) -> None:
    before = pipeline.policyloader.policy
    text = "version: 1\npassthrough: [example.org]\nrules:\n  - name: only-rule\n"
    assert reload(pipeline, text) is True
    after = pipeline.policyloader.policy
    assert after is not before and after.passthrough == ("example.org",)
    [record] = pipeline.records()
    assert {k: record[k] for k in ("kind", "decision", "reason", "policy", "path")} == {
        "kind": "policy", "decision": "allow", "reason": "policy_loaded",
        "policy": hashlib.sha256(text.encode()).hexdigest(),
        "path": str(pipeline.files["policy"])}
    token = pipeline.token()
    flow = pipeline.send("api.openai.com", headers=[("Authorization", f"Bearer {token}")])
    assert pipeline.records()[-1]["rule"] == "only-rule"
    assert flow.metadata[flowstate.POLICY] is after


def test_an_unchanged_file_is_not_a_reload(pipeline) -> None:
    before = pipeline.policyloader.policy
    assert reload(pipeline) is True
    assert pipeline.policyloader.policy is before and pipeline.records() == []


def test_an_invalid_file_keeps_the_last_good_policy_and_says_why(pipeline, caplog) -> None:
    before = pipeline.policyloader.policy
    bad = "version: 1\nrulez: []\nrules:\n  - name: a\n    name: b\n"
    assert reload(pipeline, bad) is False
    assert pipeline.policyloader.policy is before
    [record] = pipeline.records()
    assert (record["kind"], record["decision"], record["reason"]) == (
        "policy", "deny", "policy_invalid")
    assert record["policy"] == hashlib.sha256(bad.encode()).hexdigest()
    path = pipeline.files["policy"]
    assert record["message"] == (
        f"{path}:2:1: unknown key 'rulez' in the policy; did you mean 'rules'? (allowed: "
        "version, agents, teams, rules, passthrough, secrets, prices, on_limits_unavailable, "
        "detectors)\n"
        f"{path}:5:5: duplicate key 'name' (first defined on line 4)")
    [logged] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "NOT reloaded" in logged.getMessage()
    assert f"last good policy (sha256 {before.digest[:12]}) stays in force" in \
        logged.getMessage()
    assert f"{path}:2:1: unknown key 'rulez'" in logged.getMessage()


def test_a_flow_keeps_the_policy_it_started_with(pipeline) -> None:
    token = pipeline.token()
    tunnel = pipeline.tunnel("api.openai.com")
    flow = pipeline.request(tunnel, headers=[("Authorization", f"Bearer {token}")],
                            body={"model": "gpt-4o"})
    pipeline.run(flow, ["requestheaders"])
    started_with = flow.metadata[flowstate.POLICY]
    assert reload(pipeline, "version: 1\n") is True  # now: deny everything
    pipeline.run(flow, ["request", "responseheaders", "response"])
    assert flow.response.status_code == 200
    assert flow.metadata[flowstate.POLICY] is started_with
    assert pipeline.records()[-1]["policy"] == started_with.digest
