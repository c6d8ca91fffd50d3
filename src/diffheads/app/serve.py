"""`diffheads app`: pick the model, load it, serve the page on loopback until interrupted."""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from diffheads.errors import DiffheadsError

DEMO_MODEL = Path("outputs/demo/model.ckpt")  # where `make demo` leaves its model
NO_MODEL_HELP = (
    "Run `make demo` in the diffheads folder first (about 15 minutes on a CPU; it trains the demo model into "
    "outputs/demo/model.ckpt), or start the app with `diffheads app --checkpoint MODEL` using a model from "
    "`diffheads train` (RUN/model.ckpt) or `diffheads import-reference`."
)

MAX_UPLOAD = "1gb"  # largest photo, video or audio file the page accepts


@dataclass(frozen=True)
class AppOptions:
    """The command line of `diffheads app`."""

    checkpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "cpu"
    trust_checkpoint: bool = False


def choose_model(checkpoint: str | None, demo_model: Path = DEMO_MODEL) -> tuple[Path | None, str]:
    """(model file, name to show): the given checkpoint, else the demo model if `make demo` left one, else None."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise DiffheadsError(f"checkpoint {checkpoint} does not exist; give a model file (e.g. RUN/model.ckpt)")
        return path, str(path)
    if demo_model.is_file():
        return demo_model, f"{demo_model} (the demo model from make demo)"
    return None, ""


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than Gradio's later, if the address cannot be served."""
    if not 0 < port < 65536:
        raise DiffheadsError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DiffheadsError(f"port {port} on {host} is in use; stop what uses it or choose another with --port") from None
            raise DiffheadsError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None


def serve(options: AppOptions) -> None:
    """Load the model and serve the page at http://HOST:PORT until Ctrl+C."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DiffheadsError("the app needs the optional extra: pip install 'diffheads[app]' (make demo installs it)") from None
    from diffheads.app.engine import Studio
    from diffheads.app.page import CSS, Page, new_workdir, theme
    from diffheads.checkpoint import load_model

    path, name = choose_model(options.checkpoint)
    check_port(options.host, options.port)
    studio = None
    if path is not None:
        studio = Studio(load_model(path, options.device, trust=options.trust_checkpoint), name, options.device)
    else:
        print(f"diffheads app: no model: {NO_MODEL_HELP}", file=sys.stderr)
    with new_workdir() as workdir:
        page = Page(studio, NO_MODEL_HELP, Path(workdir)).build()
        page.queue(max_size=64, default_concurrency_limit=1)
        print(f"diffheads app: serving {name or 'no model'} at http://{options.host}:{options.port} "
              "(Ctrl+C to stop)", file=sys.stderr, flush=True)
        page.launch(
            server_name=options.host, server_port=options.port, share=False, ssr_mode=False, inbrowser=False,
            show_error=True, quiet=True, theme=theme(), css=CSS, footer_links=[], mcp_server=False, pwa=False,
            max_file_size=MAX_UPLOAD,
        )
