"""`whisper-daemon web`: the status page served by uvicorn until stopped."""

from __future__ import annotations

import socket
import threading

import uvicorn
from loguru import logger

from daemon.config import Config
from daemon.web.app import create_app
from daemon.web.guard import is_loopback


def address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(cfg: Config, stop: threading.Event) -> int:
    """Serve until `stop` is set (or uvicorn's own SIGTERM/SIGINT handling stops it); 1 if the address is taken."""
    try:
        sock = socket.create_server((cfg.host, cfg.port), family=socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    except OSError as e:
        logger.error("cannot serve the status page on {}: {}", address(cfg.host, cfg.port), e.strerror)
        return 1
    url = address(cfg.host, sock.getsockname()[1])
    print(f"status page: {url}", flush=True)  # the port too when port = 0 let the system choose it
    if not is_loopback(cfg.host) and cfg.web_token is None:
        logger.warning("{} is reachable from other machines and no web_token is set: the page shows only that "
                       "a token is required", url)
    logger.info("serving the status page on {} (actions {})", url, "on" if cfg.web_actions else "off")
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level="warning", access_log=False, lifespan="off"))
    threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True).start()
    server.run(sockets=[sock])
    return 0
