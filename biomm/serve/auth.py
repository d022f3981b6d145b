"""Bearer tokens -> roles. Tokens come from a YAML/JSON file ({token: role}) or BIOMM_TOKENS="tok:role,...";
never from code. A missing or wrong token is a bare 401; a role too weak for the route is 403."""
from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Callable

import yaml
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

ROLES = ("reader", "writer")
RANK = {"reader": 0, "writer": 1}
ENV = "BIOMM_TOKENS"
MIN_TOKEN_LENGTH = 8


class TokenConfigError(ValueError):
    """A token file or variable that cannot be used (the message never repeats a token)."""


def _check(pairs: dict[str, str], where: str) -> dict[str, str]:
    out = {}
    for i, (token, role) in enumerate(pairs.items(), 1):
        token, role = str(token).strip(), str(role).strip()
        if role not in ROLES:
            raise TokenConfigError(f"{where}: entry {i} has role '{role}'; roles are {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise TokenConfigError(f"{where}: entry {i} is not a usable token "
                                   f"(at least {MIN_TOKEN_LENGTH} characters, no spaces)")
        out[token] = role
    return out


def parse_env(value: str) -> dict[str, str]:
    """The token table of a BIOMM_TOKENS value ("token:role,token2:role")."""
    pairs = {}
    for i, item in enumerate(filter(None, (s.strip() for s in value.split(","))), 1):
        token, sep, role = item.rpartition(":")
        if not sep:
            raise TokenConfigError(f"{ENV}: entry {i} is not token:role")
        pairs[token] = role
    return _check(pairs, ENV)


def load_tokens(path: str | Path | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The token table from `path` (YAML or JSON mapping) and/or the BIOMM_TOKENS variable; at least one token."""
    env = os.environ if env is None else env
    tokens: dict[str, str] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TokenConfigError(f"token file not found: {p}")
        try:
            data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        except (ValueError, yaml.YAMLError) as exc:
            raise TokenConfigError(f"token file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}") from exc
        if isinstance(data, dict) and isinstance(data.get("tokens"), dict):
            data = data["tokens"]
        if not isinstance(data, dict):
            raise TokenConfigError(f"token file {p} must map token -> role")
        tokens.update(_check(data, str(p)))
    if env.get(ENV):
        tokens.update(parse_env(env[ENV]))
    if not tokens:
        raise TokenConfigError(f"no tokens configured: pass --tokens FILE or set {ENV}=\"token:reader,token2:writer\"")
    return tokens


class Authenticator:
    """Resolves `Authorization: Bearer <token>` to a role, comparing in constant time."""

    def __init__(self, tokens: dict[str, str]):
        self._tokens = [(t.encode(), r) for t, r in tokens.items()]

    def role(self, request: Request) -> str | None:
        """The role of the request's bearer token, or None without a valid one."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        given_b, found = given.strip().encode(), None
        for token, role in self._tokens:  # no early exit: timing does not tell which token matched
            if hmac.compare_digest(token, given_b):
                found = role
        return found


BEARER = HTTPBearer(auto_error=False, description="A token from the server's token file or BIOMM_TOKENS")
UNAUTHORIZED = HTTPException(401, detail="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def require(role: str) -> Callable[[Request], str]:
    """A FastAPI dependency: 401 without a valid token, 403 when the token's role ranks below `role`."""

    def dependency(request: Request, _: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> str:
        got = request.app.state.auth.role(request)
        if got is None:
            raise UNAUTHORIZED
        if RANK[got] < RANK[role]:
            raise HTTPException(403, detail=f"this needs the '{role}' role")
        request.state.role = got
        return got

    dependency.__name__ = f"require_{role}"
    return dependency
