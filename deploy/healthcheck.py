"""Container HEALTHCHECK: exit 0 when GET /healthz answers 200, else 1.

Reads the address from the service's own Settings (DIFFRES_HOST / DIFFRES_PORT), so set the
port through the environment rather than a ``--port`` flag. Standard library for HTTP.
"""

import sys
import urllib.request

from service.config import Settings

WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}


def healthz_url(settings: Settings) -> str:
    host = WILDCARDS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/healthz"


def main() -> int:
    url = healthz_url(Settings())
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:  # URLError, HTTPError, timeouts, refused connections
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
