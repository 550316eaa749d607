"""Which web pages may call the server (CORS), closed by default.

A page on another site can make a browser send requests to 127.0.0.1 on the user's
behalf. Without this, it could drive the local model with a "simple" POST that needs no
preflight. So a request that names an Origin other than the server itself is refused
unless the user listed that origin (``--cors-origins``, or baked at build time).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Request headers a preflight may ask for: what the OpenAI and Anthropic clients send.
SAFE_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
MAX_HEADERS = 32


class CorsPolicy:
    def __init__(self, setting: str):
        self.any = False
        self.origins: set[str] = set()
        for item in (s.strip() for s in setting.split(",")):
            if item == "*":
                self.any = True
            elif item:
                self.origins.add(normalize(item))

    def allows(self, origin: str) -> bool:
        if origin == "null":  # file:// pages and sandboxed frames: anyone can be "null"
            return False
        return self.any or normalize(origin) in self.origins


def normalize(origin: str) -> str:
    """``HTTP://Example.com:80/`` -> ``http://example.com``: how browsers write an Origin."""
    parts = urlsplit(origin.strip().rstrip("/"))
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def check_origins(setting: str) -> str:
    """A --cors-origins value checked: comma-separated http(s) origins, or ``*``."""
    for item in (s.strip() for s in setting.split(",")):
        if not item or item == "*":
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin; write it as http(s)://host[:port]")
    return setting


def same_origin(origin: str, host_header: str) -> bool:
    """The page this server served (its Origin names the host the request went to)."""
    parts = urlsplit(origin)
    return parts.scheme == "http" and parts.netloc.lower() == host_header.lower()


def allowed_headers(wanted: str) -> str:
    """The headers a preflight asked for, when they are plain header names."""
    names = [h.strip() for h in wanted.split(",") if h.strip()][:MAX_HEADERS]
    names = [h for h in names if SAFE_HEADER.match(h)]
    return ", ".join(names or ["Authorization", "Content-Type", "X-Api-Key"])
