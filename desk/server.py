"""Running the desk: uvicorn on the address and TLS settings desk/settings.py allows."""
from __future__ import annotations

import logging

from desk.settings import DeskSettings

log = logging.getLogger("facegate.desk")


def serve(settings: DeskSettings) -> None:
    """Serve until interrupted; the settings were checked (desk.settings.check_listen) by the caller."""
    import uvicorn

    from desk.app import create_app

    scheme = "https" if settings.tls else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"facegate desk: {scheme}://{host}:{settings.port}/ (gallery {settings.gallery}, events "
          f"{settings.events}, operators {settings.desk_db}); Ctrl-C stops it", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
                proxy_headers=False, server_header=False, date_header=False)
