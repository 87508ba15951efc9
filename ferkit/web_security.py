"""Who may ask the web server, and what an upload may be: the checks ``ferkit.server`` makes per request.

- Host names (:func:`host_checker`): a page whose DNS name an attacker points
  at 127.0.0.1 (DNS rebinding) sends its own name in the Host header and is
  refused.
- Cross-site requests (:func:`cross_site_reason`): state changes (POST, PUT,
  PATCH, DELETE) are taken only from the server's own pages.
- Uploads: their first bytes must announce a video container
  (:func:`sniff_video`); their names are shown cleaned (:func:`safe_filename`)
  and never used in a path (:func:`video_suffix`).

docs/web-app.md has the threat model.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

#: Host names the server answers to by default: this machine's loopback only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Listening on these means every interface: any IP address and the machine's name are then this server.
EVERY_INTERFACE = ("0.0.0.0", "::")
#: Methods that change something: only the server's own pages may send them.
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
#: Longest upload name shown (a longer one is cut in its stem).
MAX_FILENAME_CHARS = 100
#: What an upload's first bytes must look like: (offset, signature, format).
VIDEO_SIGNATURES = ((4, b"ftyp", "MP4/MOV"), (0, b"\x1aE\xdf\xa3", "WebM/MKV"), (8, b"AVI ", "AVI"))


def host_name(host: str) -> str:
    """The name in a Host header or an address: '[::1]:8000' -> '::1', 'LocalHost:80' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_checker(allowed: Iterable[str]) -> Callable[[str], bool]:
    """Whether a Host header names this server. A page whose DNS name an attacker points at 127.0.0.1 (DNS
    rebinding) sends its own name; names are therefore listed. Listening on every interface (0.0.0.0, ::),
    the machine's name and any IP address are this server too: an address cannot be rebound."""
    names = {host_name(h) for h in allowed}
    anywhere = bool(names & set(EVERY_INTERFACE))
    if anywhere:
        names.add(socket.gethostname().lower())

    def check(header: str) -> bool:
        name = host_name(header)
        if name in names or not anywhere:
            return name in names
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    return check


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a URL, the default port filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, parts.hostname or "", parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None


def cross_site_reason(request) -> str | None:
    """Why a request comes from a page of another site, or None. Browsers send Origin (or at least Referer)
    and Sec-Fetch-Site with every POST; a client that sends none of them (curl, a script) is no web page."""
    site = request.headers.get("sec-fetch-site", "")
    if site in ("cross-site", "same-site"):  # same-site: another port or subdomain, also not this server
        return f"Sec-Fetch-Site is {site}"
    own = _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
    for header in ("origin", "referer"):
        if header in request.headers:
            value = request.headers[header]
            if own is None or _origin(value) != own:
                return f"{header.title()} {value[:100]!r} is not this server"
            return None
    return None


def sniff_video(head: bytes) -> str | None:
    """The container format the first bytes announce, or None."""
    for offset, signature, kind in VIDEO_SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind
    return None


def safe_filename(raw: str | None, default: str = "video.mp4") -> str:
    """An upload's name as shown: percent-decoded (the page encodes it: headers carry Latin-1 only), its base
    name only, without control or format characters, at most MAX_FILENAME_CHARS (a long name loses its stem's
    end, not its suffix). It is shown and given back in download names, never used in a path."""
    name = re.split(r"[/\\]", unquote(raw or ""))[-1]
    name = "".join(c for c in name if not unicodedata.category(c).startswith("C")).strip()
    if name.strip(".") == "":
        return default
    if len(name) > MAX_FILENAME_CHARS:
        suffix = Path(name).suffix[:12]
        name = name[:MAX_FILENAME_CHARS - len(suffix) - 1] + "…" + suffix
    return name


def video_suffix(filename: str) -> str:
    """The suffix the job's input file gets (decoders guess by it as well as by content)."""
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".mp4"
