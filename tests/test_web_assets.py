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


def test_a_revalidated_file_is_answered_not_modified_in_either_encoding(tmp_path):
    """The page is served with Cache-Control: no-cache, so the browser revalidates every file on every load and
    model switch: each encoding's tag gets a 304 (no body), the other encoding's tag or a changed file the file."""
    site, copies = tmp_path / "web", tmp_path / "compressed"
    site.mkdir()
    model = site / "model.onnx"
    model.write_bytes(bytes(range(256)) * 400)
    precompress(site, copies)
    client = TestClient(Starlette(routes=[Mount("/", compressed_static_files(site, copies))]))

    def get(encoding, tag=None):
        headers = {"Accept-Encoding": encoding, **({"If-None-Match": tag} if tag else {})}
        return client.get("/model.onnx", headers=headers)

    gzipped, plain = get("gzip"), get("identity")
    assert gzipped.headers["Content-Encoding"] == "gzip" and gzipped.content == model.read_bytes()
    assert "Content-Encoding" not in plain.headers and gzipped.headers["ETag"] != plain.headers["ETag"]
    for encoding, first in (("gzip", gzipped), ("identity", plain)):
        again = get(encoding, first.headers["ETag"])
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == first.headers["ETag"]
    assert get("identity", gzipped.headers["ETag"]).status_code == 200  # the other encoding's tag: the file
    assert get("gzip", plain.headers["ETag"]).status_code == 304  # the same bytes once decoded

    model.write_bytes(bytes(range(256)) * 401)  # changed: its tags change, the old ones get the file
    stamp = (copies / "model.onnx.gz").stat().st_mtime_ns + 1_000_000_000
    os.utime(model, ns=(stamp, stamp))
    changed = get("gzip", gzipped.headers["ETag"])
    assert changed.status_code == 200 and changed.content == model.read_bytes()
