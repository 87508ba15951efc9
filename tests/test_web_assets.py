"""The page's gzip copies (ferkit.web_assets): sent to clients that accept gzip, never once stale."""

from __future__ import annotations

import gzip
import os

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from ferkit.web_assets import compressed_static_files, precompress  # noqa: E402


def test_a_page_file_edited_after_start_up_is_sent_as_it_is_now(tmp_path):
    site, copies = tmp_path / "web", tmp_path / "compressed"
    site.mkdir()
    script = site / "app.js"
    script.write_text("const version = 1;\n" * 200)
    precompress(site, copies)
    client = TestClient(Starlette(routes=[Mount("/", compressed_static_files(site, copies))]))

    first = client.get("/app.js", headers={"Accept-Encoding": "gzip"})
    assert first.headers["Content-Encoding"] == "gzip"  # the copy made at start-up
    assert first.text == script.read_text()

    script.write_text("const version = 2;\n" * 200)  # edited while the server runs
    stamp = (copies / "app.js.gz").stat().st_mtime_ns + 1_000_000_000
    os.utime(script, ns=(stamp, stamp))
    second = client.get("/app.js", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in second.headers and second.text == script.read_text()
    assert gzip.decompress((copies / "app.js.gz").read_bytes()).decode() != second.text  # the copy is stale
