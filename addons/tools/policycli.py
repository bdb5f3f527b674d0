"""`egressguard policy lint | test | explain`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from egressguard.core import policy, policytest
from egressguard.core.yamlsource import ConfigError


def lint(path: Path, strict: bool) -> int:
    """Print every problem; 1 on errors (or on warnings with `strict`), else 0."""
    try:
        loaded = policy.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        errors = len(exc.problems)
        print(f"{path}: {errors} error{'s' * (errors != 1)}; the policy cannot be loaded",
              file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        print(warning)
    warned = len(loaded.warnings)
    verdict = f"{len(loaded.rules)} rules, {len(loaded.agents)} agents, {len(loaded.teams)} teams"
    print(f"{path}: OK ({verdict})" + (f", {warned} warning{'s' * (warned != 1)}"
                                       if warned else ""), file=sys.stderr)
    return 1 if strict and warned else 0


def test(target: Path) -> int:
    files = policytest.find_test_files(target)
    if not files:
        print(f"egressguard: no policy tests (*.test.yaml) in {target}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    outcomes: list[policytest.Outcome] = []
    broken = 0
    for file in files:
        try:
            for outcome in policytest.run_file(file):
                outcomes.append(outcome)
                print(f"{outcome.file}::{outcome.name} "
                      f"{'FAILED' if outcome.failures else 'PASSED'}")
        except (ConfigError, OSError) as exc:
            broken += 1
            print(f"{file} ERROR\n  {exc}")
    failed = [o for o in outcomes if o.failures]
    if failed:
        print("\n=== failures ===")
        for o in failed:
            print(f"{o.file}::{o.name}")
            print("\n".join(f"    {line}" for line in o.failures))
    line = policytest.summary(outcomes, time.perf_counter() - started)
    if broken:
        line += f", {broken} file{'s' * (broken != 1)} could not be run"
    print(f"=== {line} ===")
    return 1 if failed or broken else 0


def explain(path: Path, request: dict[str, Any]) -> int:
    try:
        loaded = policy.load(path)
        ask = policytest.ask_from(request)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"egressguard: {exc}", file=sys.stderr)
        return 2
    print(policytest.explain(loaded, ask))
    return 0 if loaded.decide(ask).allowed else 1


def request_from_file(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a request description is a mapping, e.g. {agent: a, vendor: openai}")
    return data
