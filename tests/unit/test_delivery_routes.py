"""Routing of actions to endpoints (connectors/delivery/routes.py): which route an action
takes, and what a wrong routing file says (FILE:LINE:COL, the key path, what to fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from churnguard.errors import UserError
from connectors.delivery.routes import Route, Router, load_routes, shown_url


def _action(type_: str = "notification", **fields: Any) -> dict[str, Any]:
    return {"action_id": "a-1", "customer_id": "c-1", "type": type_, "rule_id": "r-1",
            "payload": {}, **fields}


def _load(tmp_path: Path, text: str) -> Router:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return load_routes(path)


def _problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


# --- which route an action takes -------------------------------------------------------


def test_the_first_matching_route_wins(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
routes:
  - match: {type: notification}
    url: https://first.example.com/
  - match: {type: notification}
    url: https://second.example.com/
  - url: https://catch-all.example.com/
""")
    assert router.source == str(tmp_path / "routes.yaml")
    route = router.route(_action("notification"))
    assert route is not None
    assert route.url == "https://first.example.com/"
    task = router.route(_action("task"))
    assert task is not None
    assert task.url == "https://catch-all.example.com/"


def test_template_matches_only_the_payload_template(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
routes:
  - match: {type: notification, template: winback_care}
    url: https://sms.example.com/
""")
    fits = router.route(_action(payload={"template": "winback_care", "channel": "sms"}))
    assert fits is not None
    assert fits.url == "https://sms.example.com/"
    # Another template, a top-level `template`, a payload that is not an object, no payload.
    assert router.route(_action(payload={"template": "winback_other"})) is None
    assert router.route(_action(template="winback_care", payload={})) is None
    assert router.route(_action(payload=["winback_care"])) is None
    no_payload = _action()
    del no_payload["payload"]
    assert router.route(no_payload) is None
    # The type must fit as well.
    assert router.route(_action("task", payload={"template": "winback_care"})) is None


def test_rule_id_match(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
routes:
  - match: {rule_id: vip-winback}
    url: https://vip.example.com/
""")
    assert router.route(_action("coupon", rule_id="vip-winback")) is not None
    assert router.route(_action("coupon", rule_id="other")) is None
    assert router.route(_action("coupon", rule_id=None)) is None


def test_skip_route_is_taken_without_url(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
routes:
  - match: {type: profile_update}
    skip: true
default: https://hooks.example.com/all
""")
    route = router.route(_action("profile_update"))
    assert route is not None
    assert route.skip
    assert route.url is None
    other = router.route(_action("task"))
    assert other is not None
    assert not other.skip


def test_default_is_appended_last(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
default: https://hooks.example.com/churnguard
routes:
  - match: {type: task}
    url: https://crm.example.com/api/tasks
    headers: {X-Tenant: shop-eu}
""")
    assert [route.url for route in router.routes] == [
        "https://crm.example.com/api/tasks", "https://hooks.example.com/churnguard"]
    task = router.route(_action("task"))
    assert task is not None
    assert task.headers == {"X-Tenant": "shop-eu"}
    coupon = router.route(_action("coupon"))
    assert coupon is not None
    assert coupon.url == "https://hooks.example.com/churnguard"
    assert coupon.headers == {}


def test_no_route_and_no_default_routes_nothing(tmp_path: Path) -> None:
    router = _load(tmp_path, """\
routes:
  - match: {type: task}
    url: https://crm.example.com/
""")
    assert router.route(_action("coupon")) is None


def test_to_url_sends_everything_to_one_endpoint() -> None:
    router = Router.to_url("https://hooks.example.com/churnguard")
    assert router.source == "--url"
    for type_ in ("notification", "task", "coupon", "profile_update"):
        route = router.route(_action(type_))
        assert route is not None
        assert route.url == "https://hooks.example.com/churnguard"
        assert not route.skip


# --- what a wrong routing file says ----------------------------------------------------


def test_unknown_key_in_match_has_position_and_did_you_mean(tmp_path: Path) -> None:
    message = _problem(tmp_path, """\
routes:
  - match: {type: notification, tmplate: winback}
    url: https://a.example.com/
""")
    where = f"{tmp_path / 'routes.yaml'}:2:33: routes[0].match.tmplate: "
    assert message.startswith("deliver: invalid routing file: " + where)
    assert "'tmplate' is not a known key (did you mean 'template'?)" in message
    assert "they are type, template, rule_id" in message
    assert message.endswith("see docs/deliver.md")


def test_unknown_route_and_top_level_keys(tmp_path: Path) -> None:
    message = _problem(tmp_path, """\
routes:
  - match: {type: task}
    urll: https://a.example.com/
defualt: https://d.example.com/
""")
    name = tmp_path / "routes.yaml"
    assert f"{name}:3:5: routes[0].urll: 'urll' is not a known key (did you mean 'url'?)" \
        in message
    assert "they are match, url, skip, headers" in message
    assert f"{name}:4:1: defualt: 'defualt' is not a known key (did you mean 'default'?)" \
        in message
    assert "they are routes, default" in message


def test_unknown_key_without_a_close_one_has_no_hint(tmp_path: Path) -> None:
    message = _problem(tmp_path, "default: https://d.example.com/\nzzz: 1\n")
    assert f"{tmp_path / 'routes.yaml'}:2:1: zzz: 'zzz' is not a known key; they are" \
        in message
    assert "did you mean" not in message


@pytest.mark.parametrize("url", ["ftp://crm.example.com/api", "https:///no-host", "crm.example"])
def test_bad_url_scheme_or_host(tmp_path: Path, url: str) -> None:
    message = _problem(tmp_path, f"""\
routes:
  - match: {{type: task}}
    url: {url}
""")
    assert (f"{tmp_path / 'routes.yaml'}:3:10: routes[0].url: "
            "must be an http:// or https:// URL with a host") in message


def test_bad_default_url(tmp_path: Path) -> None:
    message = _problem(tmp_path, "routes: []\ndefault: mailto:ops@example.com\n")
    assert (f"{tmp_path / 'routes.yaml'}:2:10: default: "
            "must be an http:// or https:// URL with a host") in message


@pytest.mark.parametrize("body", [
    "    url: https://b.example.com/\n    skip: true\n",
    "    headers: {X-Tenant: a}\n",
    "    skip: false\n",
])
def test_url_and_skip_both_or_neither(tmp_path: Path, body: str) -> None:
    message = _problem(tmp_path, "routes:\n  - match: {type: coupon}\n" + body)
    assert (f"{tmp_path / 'routes.yaml'}:2:5: routes[0]: "
            "give a route either `url` or `skip: true`") in message


@pytest.mark.parametrize("header", [
    "Idempotency-Key", "X-Churnguard-Signature", "content-type", "Content-Length", "Host"])
def test_reserved_headers_are_refused(tmp_path: Path, header: str) -> None:
    message = _problem(tmp_path, f"""\
routes:
  - match: {{type: task}}
    url: https://crm.example.com/
  - match: {{type: coupon}}
    url: https://crm.example.com/
    headers: {{X-Tenant: a, {header}: x}}
""")
    assert (f"{tmp_path / 'routes.yaml'}:4:5: routes[1]: "
            f"headers {header} are set by deliver itself") in message


def test_several_reserved_headers_are_all_named() -> None:
    with pytest.raises(ValidationError, match="headers Idempotency-Key, X-Churnguard-Signature"):
        Route(url="https://a.example.com/",
              headers={"X-Churnguard-Signature": "x", "Idempotency-Key": "y"})


def test_unknown_action_type_is_refused_at_its_position(tmp_path: Path) -> None:
    message = _problem(tmp_path, """\
routes:
  - match:
      type: sms
    url: https://a.example.com/
""")
    assert f"{tmp_path / 'routes.yaml'}:3:13: routes[0].match.type: " in message
    assert "'notification'" in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    message = _problem(tmp_path, """\
routes:
  - match: {type: task}
    url: ftp://a.example.com/
  - match: {type: coupon}
default: nope
""")
    name = tmp_path / "routes.yaml"
    assert f"{name}:3:10: routes[0].url:" in message
    assert f"{name}:4:5: routes[1]: give a route either" in message
    assert f"{name}:5:10: default:" in message


@pytest.mark.parametrize("text", ["", "{}\n", "routes: []\n", "# only a comment\n"])
def test_a_file_that_routes_nothing_is_refused(tmp_path: Path, text: str) -> None:
    message = _problem(tmp_path, text)
    assert message.startswith(f"deliver: {tmp_path / 'routes.yaml'}")
    assert "empty" in message or "routes nothing" in message


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    message = _problem(tmp_path, "routes:\n  - match: {type: task\n    url: x\n")
    assert message.startswith(f"deliver: {tmp_path / 'routes.yaml'}:")
    assert "YAML syntax error" in message


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the file"):
        load_routes(tmp_path / "absent.yaml")


# --- --url and shown URLs ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://user:pw@files.example.com/x?token=abc", "not a url",
                                 "http://", "https:///path?token=abc"])
def test_to_url_with_a_bad_url_is_a_user_error(url: str) -> None:
    with pytest.raises(UserError) as caught:
        Router.to_url(url)
    message = str(caught.value)
    assert message.startswith("deliver: --url ")
    assert "must be an http:// or https:// URL with a host" in message
    assert "pw" not in message
    assert "token" not in message


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:secret@hooks.example.com/a/b?token=abc#frag", "https://hooks.example.com/a/b"),
    ("http://hooks.example.com:8080/x?k=v", "http://hooks.example.com:8080/x"),
    ("https://token@hooks.example.com", "https://hooks.example.com"),
    ("https://hooks.example.com/plain", "https://hooks.example.com/plain"),
])
def test_shown_url_strips_credentials_and_query(url: str, shown: str) -> None:
    assert shown_url(url) == shown


# --- found by review: refused up front, or dead-lettered, never a stalled partition ----


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/hook", "http://hooks.example.com:x/"])
def test_to_url_refuses_an_invalid_port(url: str) -> None:
    with pytest.raises(UserError):
        Router.to_url(url)


def test_shown_url_keeps_ipv6_brackets() -> None:
    assert shown_url("http://[::1]:8080/hook?token=t") == "http://[::1]:8080/hook"


def test_header_value_with_a_line_break_is_refused(tmp_path: Path) -> None:
    _problem(tmp_path, """\
routes:
  - url: https://a.example.com/
    headers: {X-Tenant: "a\\r\\nX-Injected: 1"}
""")


def test_bad_header_name_is_reported_at_the_key(tmp_path: Path) -> None:
    message = _problem(tmp_path, """\
routes:
  - url: https://a.example.com/
    headers: {"X Bad": y}
""")
    assert "[key]" not in message
    assert f'{tmp_path / "routes.yaml"}:3:15: routes[0].headers."X Bad"' in message
