"""The page's files sent compressed: gzip copies made once, served with ``Content-Encoding: gzip``.

ONNX Runtime's WASM file (14 MB) shrinks to under 4 MB and the scripts to a
quarter; the models' float16 weights hardly shrink, but their graphs do. The
copies are made when the server starts (``ferkit serve``) or the static site is
written (``ferkit export-web``, where they lie beside the originals as
NAME.gz for hosts that serve precompressed files, e.g. nginx's
``gzip_static`` or Caddy's ``precompressed``; a plain file server ignores
them). Compressing once, not per request, keeps the first load's time down:
gzip of the WASM file takes about half a second on a laptop core.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from ferkit import files

#: Files worth compressing, by suffix (images and videos are compressed already).
COMPRESSIBLE = (".wasm", ".js", ".mjs", ".css", ".html", ".json", ".onnx", ".svg", ".txt")
#: Smaller files go as they are: the header costs more than gzip saves.
MIN_BYTES = 1024


def precompress(folder: Path, into: Path | None = None) -> list[Path]:
    """A gzip copy of every compressible file under ``folder``, written to ``into`` (default: beside each
    file) as RELATIVE_PATH.gz; files whose copy would not be smaller are skipped. Returns the copies."""
    written = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in COMPRESSIBLE or path.stat().st_size < MIN_BYTES:
            continue
        original = path.read_bytes()
        packed = gzip.compress(original, compresslevel=6, mtime=0)
        if len(packed) < len(original):
            target = (into or folder) / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(files.write_bytes(target.with_name(target.name + ".gz"), packed))
    return written


def compressed_static_files(directory: Path, compressed: Path, **options):
    """Starlette ``StaticFiles`` for ``directory`` that answers a client accepting gzip with the copy in
    ``compressed`` (as :func:`precompress` wrote it), Content-Type of the original, ``Content-Encoding: gzip``;
    a file changed since its copy was made is sent uncompressed."""
    from starlette.datastructures import Headers  # starlette is imported where the app is made
    from starlette.responses import FileResponse
    from starlette.staticfiles import NotModifiedResponse, StaticFiles

    directory, compressed = Path(directory).resolve(), Path(compressed).resolve()

    class CompressedStaticFiles(StaticFiles):
        async def get_response(self, path, scope):
            response = await super().get_response(path, scope)
            if response.status_code != 200 or not isinstance(response, FileResponse):
                return response
            original = Path(response.path).resolve()
            copy = compressed / original.relative_to(directory)
            copy = copy.with_name(copy.name + ".gz")
            accepts = "gzip" in Headers(scope=scope).get("accept-encoding", "")
            # A page file edited while the server runs is newer than its copy: send it as it is now.
            fresh = copy.is_file() and copy.stat().st_mtime_ns >= original.stat().st_mtime_ns
            if not (accepts and fresh):
                response.headers["Vary"] = "Accept-Encoding"
                return response
            # The copy's own tag, made from the original's: a browser revalidating it (Cache-Control: no-cache, on
            # every load and model switch) is answered 304 instead of sent the file again.
            tag = response.headers["etag"][:-1] + '-gzip"'
            gzipped = FileResponse(copy, media_type=response.media_type,
                                   headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding", "ETag": tag})
            if self.is_not_modified(gzipped.headers, Headers(scope=scope)):
                return NotModifiedResponse(gzipped.headers)
            return gzipped

    return CompressedStaticFiles(directory=directory, **options)
