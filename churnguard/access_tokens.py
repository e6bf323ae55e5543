"""Bearer tokens of churnguard's HTTP endpoints: the worker's (churnguard/http_access.py)
and the gateway's.

A token is stored only as the SHA-256 hex digest of its text, with a name (who or what the
token is for: logged, audited, the key of its rate limit) and its roles, and optionally the
account manager whose customers alone it sees. Tokens come from a setting (a JSON list)
and/or a token file of JSON lines in the same shape, one token per line:
    {"name": "alice", "sha256": "5f2c…", "roles": ["agent"], "account_manager": "am-alice"}
`churnguard token new NAME --role agent` makes a token and prints that line.

Roles (docs/security.md): `viewer` reads dashboards, KPIs, segments and status; `agent` also
reads a customer's 360 view (without personal fields); `admin` may do everything, personal
fields included; `ingest` posts events to the gateway and nothing else."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from churnguard.errors import UserError

Role = Literal["viewer", "agent", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("viewer", "agent", "admin", "ingest")
# What each role holds besides itself: an agent reads what a viewer reads; admin holds all.
IMPLIED: dict[Role, frozenset[Role]] = {
    "viewer": frozenset(), "agent": frozenset({"viewer"}), "ingest": frozenset(),
    "admin": frozenset(ROLES)}
# Recognisable in a leaked log or repository (secret scanners key on prefixes like it).
TOKEN_PREFIX = "cg_"
# Longer than any real token: a header beyond it is refused before it is hashed.
MAX_TOKEN_CHARS = 512
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class AccessToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOKEN_NAME_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # `scopes`: the key's name in the first gateway release's token files.
    roles: tuple[Role, ...] = Field(min_length=1,
                                    validation_alias=AliasChoices("roles", "scopes"))
    # The account manager whose customers alone this token sees (their 360 views, their
    # slice of the KPIs); None: every customer.
    account_manager: str | None = Field(None, min_length=1, max_length=200,
                                        pattern=r"^[^\x00-\x1f]+$")

    def allows(self, role: Role) -> bool:
        return any(role == held or role in IMPLIED[held] for held in self.roles)

    def line(self) -> str:
        """This token's line of a token file (and an item of the JSON list setting)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True)).decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, roles: Iterable[Role], *,
              account_manager: str | None = None) -> tuple[str, AccessToken]:
    """A fresh random token (256 bits) and what is stored of it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        stored = AccessToken(name=name, sha256=hash_token(token), roles=tuple(roles),
                             account_manager=account_manager)
    except ValidationError as exc:
        if any(error["loc"] == ("account_manager",) for error in exc.errors()):
            raise UserError("--account-manager must be an account manager's id as the "
                            "profile events carry it: 1–200 characters, no control "
                            "characters") from None
        raise UserError(
            f"token name {name!r} must be 1–64 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit") from None
    return token, stored


class TokenRegistry:
    """The configured tokens, looked up by a presented token's hash."""

    def __init__(self, tokens: Sequence[AccessToken]) -> None:
        names = [t.name for t in tokens]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(
                f"access tokens: the name {', '.join(repeated)} is used more than once; each "
                "token needs its own name (it keys the token's rate limit)")
        self.tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, presented: str) -> AccessToken | None:
        # Tokens are URL-safe base64: anything else (a header aiohttp decoded with
        # surrogate escapes included) is no token, not an error.
        if not presented or len(presented) > MAX_TOKEN_CHARS or not presented.isascii():
            return None
        digest = hash_token(presented).encode()
        found = None
        # Every stored hash is compared, in constant time each: how long it takes does not
        # tell which token (or which prefix of a hash) came close.
        for token in self.tokens:
            if hmac.compare_digest(digest, token.sha256.encode()):
                found = token
        return found

    def from_header(self, authorization: str | None) -> AccessToken | None:
        """The token of an `Authorization: Bearer …` header, if it is a configured one."""
        if not authorization:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.find(presented.strip())


def load_token_file(path: Path, setting: str = "the token file setting") -> list[AccessToken]:
    """JSON lines, one token each; blank lines and lines starting with `#` are skipped.
    `setting`: the setting that named the file (said when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UserError(f"{path}: cannot read the token file ({reason}); check "
                        f"{setting}") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            tokens.append(AccessToken.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise UserError(
                f"{path}:{number}: {where}: {first['msg']}; each line is one token as "
                "`churnguard token new` prints it, e.g. "
                '{"name": "shop", "sha256": "<64 hex digits>", "roles": ["ingest"]}'
            ) from None
    return tokens


def configured_tokens(listed: Sequence[AccessToken], token_file: Path | None, *,
                      setting: str = "the token file setting") -> TokenRegistry:
    return TokenRegistry(
        [*listed, *(load_token_file(token_file, setting) if token_file else [])])


# -- `churnguard token new NAME --role agent [--account-manager ID] [--file PATH]` ------------

def add_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="access tokens of the HTTP endpoints")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser(
        "new", help="make a token: prints it once (stdout, line 1) and the line that stores "
        "its hash (line 2)")
    new.add_argument("name", help="who or what the token is for, e.g. alice or shop (logged "
                     "and audited, keys its rate limit)")
    new.add_argument("--role", "--scope", action="append", choices=ROLES, required=True,
                     dest="roles", help="what it may do (repeatable): viewer (dashboards, "
                     "KPIs), agent (also customer 360 views), admin (everything), ingest "
                     "(the gateway)")
    new.add_argument("--account-manager", metavar="ID", help="the token sees only this "
                     "account manager's customers and their slice of the KPIs")
    new.add_argument("--file", type=Path, metavar="PATH",
                     help="also append the stored line to this token file (created 0600)")


def run_token_command(args: argparse.Namespace) -> int:
    # A repeated --role once.
    token, stored = new_token(args.name, dict.fromkeys(args.roles),
                              account_manager=args.account_manager)
    if args.file is not None:
        append_token_line(args.file, stored)
    print(token)
    print(stored.line())
    stored_where = (f"the second line, its hash, is appended to {args.file}" if args.file else
                    "add the second line, its hash, to the token file "
                    "(CHURNGUARD_WEB_TOKEN_FILE, CHURNGUARD_GATEWAY__TOKEN_FILE) or as an "
                    "item of CHURNGUARD_WEB_TOKENS, CHURNGUARD_GATEWAY__TOKENS")
    print(f"churnguard: the first line is the token, shown only now: give it to the client "
          f"(Authorization: Bearer …); {stored_where}", file=sys.stderr)
    return 0


def append_token_line(path: Path, stored: AccessToken) -> None:
    existing = load_token_file(path) if path.exists() else []
    if any(t.name == stored.name for t in existing):
        raise UserError(f"{path}: a token named {stored.name!r} exists already; choose another "
                        "name or remove its line first")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as file:
            file.write(stored.line() + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the token file ({exc.strerror})") from None
