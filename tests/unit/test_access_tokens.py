"""Access tokens: stored as hashes, found by the presented token, roles, the token file,
and `churnguard token new`."""

from __future__ import annotations

import argparse
import hashlib
import stat
from pathlib import Path

import orjson
import pytest

from churnguard.access_tokens import (
    AccessToken,
    TokenRegistry,
    add_token_command,
    configured_tokens,
    load_token_file,
    new_token,
    run_token_command,
)
from churnguard.errors import UserError


def test_a_new_token_is_random_and_only_its_hash_is_stored() -> None:
    token, stored = new_token("shop", ["ingest"])
    other, _ = new_token("shop", ["ingest"])
    assert token != other
    assert token.startswith("cg_")
    assert len(token) > 40
    assert stored.sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored.line()
    assert orjson.loads(stored.line()) == {"name": "shop", "sha256": stored.sha256,
                                           "roles": ["ingest"]}


def test_the_registry_finds_a_token_by_its_bearer_header() -> None:
    shop_token, shop = new_token("shop", ["ingest"])
    crm_token, crm = new_token("crm", ["viewer"])
    registry = TokenRegistry([shop, crm])
    assert registry.from_header(f"Bearer {shop_token}") == shop
    assert registry.from_header(f"bearer  {crm_token} ") == crm
    for header in (None, "", shop_token, f"Basic {shop_token}", f"Bearer {shop_token}x",
                   "Bearer ", "Bearer " + "x" * 10_000):
        assert registry.from_header(header) is None


def test_roles_hold_what_they_imply() -> None:
    roles = ("viewer", "agent", "admin", "ingest")
    held = {role: new_token(role, [role])[1] for role in roles}
    assert {name: [role for role in roles if token.allows(role)]
            for name, token in held.items()} == {
        "viewer": ["viewer"], "agent": ["viewer", "agent"],
        "admin": ["viewer", "agent", "admin", "ingest"], "ingest": ["ingest"]}
    _, both = new_token("both", ["viewer", "ingest"])
    assert [both.allows(r) for r in roles] == [True, False, False, True]


def test_a_token_may_be_scoped_to_one_account_manager() -> None:
    _, alice = new_token("alice", ["agent"], account_manager="am-alice")
    assert orjson.loads(alice.line())["account_manager"] == "am-alice"
    assert AccessToken.model_validate_json(alice.line()) == alice
    _, everyone = new_token("bob", ["agent"])
    assert "account_manager" not in orjson.loads(everyone.line())
    with pytest.raises(UserError, match="--account-manager must be"):
        new_token("eve", ["agent"], account_manager="am\nx")


def test_a_first_release_token_line_with_scopes_is_read() -> None:
    line = '{"name": "shop", "sha256": "' + "a" * 64 + '", "scopes": ["ingest"]}'
    assert AccessToken.model_validate_json(line).roles == ("ingest",)


def test_names_are_unique_and_well_formed() -> None:
    _, one = new_token("shop", ["ingest"])
    _, two = new_token("shop", ["viewer"])
    with pytest.raises(UserError, match="the name shop is used more than once"):
        TokenRegistry([one, two])
    with pytest.raises(UserError, match="token name 'a shop' must be"):
        new_token("a shop", ["ingest"])


def test_the_token_file_is_json_lines_with_comments(tmp_path: Path) -> None:
    _, shop = new_token("shop", ["ingest"])
    _, crm = new_token("crm", ["viewer", "ingest"])
    path = tmp_path / "tokens.jsonl"
    path.write_text(f"# the shop's backend\n{shop.line()}\n\n{crm.line()}\n", encoding="utf-8")
    assert load_token_file(path) == [shop, crm]
    _, listed = new_token("listed", ["admin"])
    assert configured_tokens([listed], path).tokens == (listed, shop, crm)
    assert len(configured_tokens([], None)) == 0


@pytest.mark.parametrize(("line", "message"), [
    ('{"name": "shop", "sha256": "abc", "roles": ["ingest"]}',
     "tokens.jsonl:2: sha256: String should match pattern"),
    ('{"name": "shop", "sha256": "' + "a" * 64 + '", "roles": ["read"]}',
     "tokens.jsonl:2: roles.0: Input should be 'viewer', 'agent', 'admin' or 'ingest'"),
    ('{"name": "shop", "sha256": "' + "a" * 64 + '", "roles": []}',
     "tokens.jsonl:2: roles: Tuple should have at least 1 item"),
    ("cg_the-token-itself", "tokens.jsonl:2: line: Invalid JSON"),
])
def test_a_bad_token_file_line_is_one_clear_error(tmp_path: Path, line: str,
                                                  message: str) -> None:
    path = tmp_path / "tokens.jsonl"
    path.write_text(f"# tokens\n{line}\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_token_file(path)
    assert str(error.value).startswith(f"{path.parent}/{message}")
    assert "cg_the-token-itself" not in str(error.value)  # a pasted token is not echoed


def test_a_missing_token_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.jsonl: cannot read the token file "
                                        r"\(No such file or directory\)"):
        load_token_file(tmp_path / "missing.jsonl")


def _token_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_token_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["token", *argv])


def test_token_new_prints_the_token_then_its_stored_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_token_command(_token_args("new", "alice", "--role", "agent", "--role",
                                         "viewer", "--role", "agent",
                                         "--account-manager", "am-alice")) == 0
    out = capsys.readouterr()
    token, line = out.out.splitlines()
    stored = AccessToken.model_validate_json(line)
    assert (stored.name, stored.roles, stored.account_manager) == (
        "alice", ("agent", "viewer"), "am-alice")
    assert TokenRegistry([stored]).find(token) == stored
    assert "shown only now" in out.err


def test_token_new_appends_to_a_private_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "tokens.jsonl"
    run_token_command(_token_args("new", "shop", "--role", "ingest", "--file", str(path)))
    run_token_command(_token_args("new", "crm", "--role", "viewer", "--file", str(path)))
    tokens = capsys.readouterr().out.splitlines()[::2]  # each command: token, stored line
    found = [configured_tokens([], path).find(token) for token in tokens]
    assert [token.name if token else None for token in found] == ["shop", "crm"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(UserError, match="a token named 'shop' exists already"):
        run_token_command(_token_args("new", "shop", "--role", "ingest", "--file", str(path)))
