"""The browser files the gateway serves: the client module always, the demo only with AG_DEMO."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient

from services.gateway.web import web_handlers
from shared.config import load_settings


def _client(tmp_path: Path, demo: bool) -> TestClient[Litestar]:
    (tmp_path / "clients" / "js" / "src").mkdir(parents=True)
    (tmp_path / "clients" / "js" / "src" / "atomic-guide.js").write_text("export const x = 1;\n")
    (tmp_path / "clients" / "demo").mkdir(parents=True)
    (tmp_path / "clients" / "demo" / "index.html").write_text("<!doctype html><title>d</title>")
    (tmp_path / "clients" / "demo" / "notes.txt").write_text("not served")
    (tmp_path / "secret.js").write_text("nope")
    settings = load_settings({}, web_root=tmp_path, demo=demo)
    return TestClient(Litestar(route_handlers=web_handlers(settings)))


def test_the_client_module_is_served_as_javascript_with_revalidation(tmp_path: Path) -> None:
    with _client(tmp_path, demo=False) as http:
        first = http.get("/client/atomic-guide.js")
        assert first.status_code == 200
        assert first.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "max-age" in first.headers["cache-control"]
        assert first.headers["x-content-type-options"] == "nosniff"
        assert first.text == "export const x = 1;\n"
        again = http.get(
            "/client/atomic-guide.js", headers={"If-None-Match": first.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        assert http.get("/client/missing.js").status_code == 404
        assert http.get("/client/..%2Fsecret.js").status_code == 404


def test_the_demo_is_off_unless_asked_for(tmp_path: Path) -> None:
    with _client(tmp_path, demo=False) as http:
        assert http.get("/demo/").status_code == 404
        assert http.get("/demo/index.html").status_code == 404


def test_the_demo_page_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    with _client(tmp_path, demo=True) as http:
        page = http.get("/demo/")
        assert page.status_code == 200 and "<title>d</title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert http.get("/demo/notes.txt").status_code == 404  # unknown suffix: never served
        home = http.get("/", follow_redirects=False)
        assert home.status_code in (301, 302, 307, 308) and home.headers["location"] == "/demo/"
