"""Per-tool policy: CEL rules in order, the first match decides, failures deny, lists show
what may be used."""

from __future__ import annotations

import orjson
import pytest

from proxy.auth.policy import Policy, compile_rules
from proxy.auth.principal import Principal
from proxy.auth.settings import AuthSettings, IssuerSettings, PolicyRule, SettingsError
from proxy.metrics import Metrics

ISSUER = (IssuerSettings("https://idp.example"),)


def policy(*rules: tuple[str, str, str], default: str = "allow") -> tuple[Policy, Metrics]:
    metrics = Metrics()
    auth = AuthSettings(ISSUER, policy=tuple(PolicyRule(*r) for r in rules), policy_default=default)
    return Policy(auth, metrics), metrics


def alice(**claims: object) -> Principal:
    return Principal("https://idp.example", "alice", "cli", frozenset({"mcp:read"}), dict(claims))


def test_first_matching_rule_decides_and_the_default_covers_the_rest() -> None:
    p, metrics = policy(
        ("readers-read", "allow", '"mcp:read" in principal.scopes && request.name == "read"'),
        ("no-writes", "deny", 'request.name.startsWith("write")'),
        default="deny",
    )
    me = alice()
    assert p.decide(me, "tools/call", "files", "read") == (True, "readers-read")
    assert p.decide(me, "tools/call", "files", "write_file") == (False, "no-writes")
    assert p.decide(me, "tools/call", "files", "list") == (False, "default")
    assert metrics.policy_decisions.values == {
        ("readers-read", "allow"): 1.0,
        ("no-writes", "deny"): 1.0,
        ("default", "deny"): 1.0,
    }


def test_claims_backend_and_uri_are_seen() -> None:
    p, _ = policy(
        ("admins", "allow", '"admin" in principal.claims.groups'),
        ("public-docs", "allow", 'request.backend == "docs" && request.uri.startsWith("docs://")'),
        default="deny",
    )
    assert p.decide(alice(groups=["admin"]), "tools/call", "any", "x").allowed
    assert not p.decide(alice(groups=["eng"]), "tools/call", "any", "x").allowed
    assert p.decide(alice(groups=[]), "resources/read", "docs", uri="docs://a").allowed
    assert not p.decide(alice(groups=[]), "resources/read", "files", uri="docs://a").allowed


def test_a_rule_that_fails_at_run_time_denies_naming_itself() -> None:
    p, _ = policy(("needs-team", "allow", 'principal.claims.team == "red"'))
    assert p.decide(alice(), "tools/call", "b", "x") == (False, "needs-team")


def test_argument_rules_read_the_arguments_and_are_not_remembered() -> None:
    p, _ = policy(
        (
            "public-only",
            "deny",
            'request.name == "read" && !request.arguments.path.startsWith("/srv/public/")',
        ),
    )

    def call(path: str) -> bytes:
        return orjson.dumps({"params": {"name": "read", "arguments": {"path": path}}})

    me = alice()
    assert p.decide(me, "tools/call", "f", "read", body=call("/srv/public/a")).allowed
    assert not p.decide(me, "tools/call", "f", "read", body=call("/etc/passwd")).allowed
    assert p.decide(me, "tools/call", "f", "read", body=call("/srv/public/b")).allowed
    assert not me.memo.get(("tools/call", "f", "read", ""))


def test_decisions_without_arguments_are_remembered_per_principal() -> None:
    p, metrics = policy(("deny-x", "deny", 'request.name == "x"'))
    me = alice()
    for _ in range(3):
        assert not p.decide(me, "tools/call", "b", "x").allowed
    assert (("tools/call", "b", "x", "")) in me.memo
    assert metrics.policy_decisions.values == {("deny-x", "deny"): 3.0}
    other = alice()
    assert not other.memo
    assert not p.decide(other, "tools/call", "b", "x").allowed


def test_lists_show_what_may_be_used_with_some_arguments() -> None:
    p, _ = policy(
        ("no-delete", "deny", 'request.name == "delete"'),
        (
            "read-public",
            "allow",
            'request.name == "read" && request.arguments.path.startsWith("/srv/public")',
        ),
        ("deny-big", "deny", 'request.name == "write" && request.arguments.size > 10'),
        ("only-known", "allow", 'request.name in ["write", "list"]'),
        default="deny",
    )
    items = [{"name": n} for n in ("delete", "read", "write", "list", "secret")]
    shown = p.filter(alice(), "tools/list", items, lambda _name: "files")
    assert [i["name"] for i in shown] == ["read", "write", "list"]


def test_resource_lists_are_filtered_by_uri() -> None:
    p, _ = policy(("no-private", "deny", 'request.uri.startsWith("file:///private")'))
    items = [{"uri": "file:///private/key"}, {"uri": "file:///public/a"}, {"name": "no uri"}]
    shown = p.filter(alice(), "resources/list", items, lambda _uri: "files")
    assert shown == [{"uri": "file:///public/a"}]


def test_without_rules_and_a_default_of_allow_nothing_is_filtered() -> None:
    p, _ = policy()
    assert not p.active
    items = [{"name": "a"}]
    assert p.filter(alice(), "tools/list", items, lambda _n: "b") is items


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (("broken", "allow", "request.name =="), "rule 'broken' does not compile"),
        (("strange", "allow", "user.name == 'x'"), "rule 'strange' names user"),
        (("odd", "permit", "true"), "'permit' is not allow or deny"),
    ],
)
def test_a_rule_that_does_not_compile_is_named(rule: tuple[str, str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as caught:
        compile_rules([PolicyRule("fine", "allow", "true"), PolicyRule(*rule)])
    assert caught.value.where.startswith("auth.policy[1].")
