"""The entity types a redaction plan can name, and what it can do with them.

PII names follow Presidio's, so plans and findings read the same in both; secret
types are egressguard's own. `pii` and `secrets` name whole groups in a plan; a named
type overrides its group.
"""

from __future__ import annotations

PII = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS",
    "PERSON", "LOCATION", "US_PASSPORT", "US_DRIVER_LICENSE", "US_BANK_NUMBER",
    "UK_NHS", "CRYPTO", "URL", "DATE_TIME",
)
SECRETS = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_OAUTH_TOKEN", "AWS_ACCESS_KEY",
    "GITHUB_TOKEN", "SLACK_TOKEN", "GOOGLE_API_KEY", "STRIPE_SECRET_KEY", "PRIVATE_KEY",
    "JWT", "GENERIC_SECRET",
    # other vendors' keys and common developer tokens with a distinctive prefix
    "GROQ_API_KEY", "OPENROUTER_API_KEY", "XAI_API_KEY", "DEEPSEEK_API_KEY",
    "TOGETHER_API_KEY", "HUGGINGFACE_TOKEN", "GITLAB_TOKEN",
)
GROUPS = {"pii": PII, "secrets": SECRETS}
NER = frozenset({"PERSON", "LOCATION"})  # need the NLP model; everything else is patterns

# mask: <EMAIL_ADDRESS>; pseudonymize: <PERSON_1>, restored in the answer;
# block: refuse the request (naming types, never values); log: let it through, count it
ACTIONS = ("mask", "pseudonymize", "block", "log")


def expand(plan: dict[str, str]) -> dict[str, str]:
    """Entity type -> action, groups spread out; a named type beats its group."""
    out: dict[str, str] = {}
    for name, action in plan.items():
        for entity in GROUPS.get(name, ()):
            out.setdefault(entity, action)
    out.update({k: v for k, v in plan.items() if k not in GROUPS})
    return out


def answer_plan(plan: dict[str, str]) -> dict[str, str]:
    """What a rule's expanded plan does to secrets in the vendor's *answer*: a type
    the plan logs is logged; one it masks, pseudonymizes or blocks is masked (an
    answer cannot be refused halfway, and a pseudonym would stand for nothing the
    agent sent). PII types are left out: the answer is about the agent's own data."""
    secrets = frozenset(SECRETS)
    return {e: "log" if a == "log" else "mask" for e, a in plan.items() if e in secrets}
