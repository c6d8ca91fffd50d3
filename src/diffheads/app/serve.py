"""`diffheads app`: list the models (--checkpoint and those under outputs/), load one, serve the page on loopback."""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from diffheads.errors import DiffheadsError

NO_MODEL_HELP = (
    "Run `make demo` in the diffheads folder first (about 15 minutes on a CPU; it trains a model of synthetic cartoon "
    "faces into outputs/demo/model.ckpt) or `make demo-real` (a person-specific model of GRID speaker s1 from real "
    "footage, outputs/demo-grid/model.ckpt), or start the app with `diffheads app --checkpoint MODEL` using a model "
    "from `diffheads train` (RUN/model.ckpt) or `diffheads import-reference`."
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


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than Gradio's later, if the address cannot be served."""
    if not 0 < port < 65536:
        raise DiffheadsError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DiffheadsError(
                    f"port {port} on {host} is in use; stop what uses it or choose another with --port"
                ) from None
            raise DiffheadsError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None


def serve(options: AppOptions) -> None:
    """Load the model and serve the page at http://HOST:PORT until Ctrl+C."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DiffheadsError(
            "the app needs the optional extra: pip install 'diffheads[app]' (make demo installs it)"
        ) from None
    from diffheads.app.engine import Studio, discover_models
    from diffheads.app.page import CSS, Page, new_workdir, theme

    choices, skipped = discover_models(options.checkpoint, trust=options.trust_checkpoint)
    check_port(options.host, options.port)
    for reason in skipped:
        print(f"diffheads app: not listed: {reason}", file=sys.stderr)
    studio = Studio.open(
        choices,
        options.device,
        strict=bool(options.checkpoint),
        on_skip=lambda reason: print(f"diffheads app: not listed: {reason}", file=sys.stderr),
    )
    if studio is None:
        print(f"diffheads app: no model: {NO_MODEL_HELP}", file=sys.stderr)
    for c in studio.choices if studio is not None else []:
        print(f"diffheads app: model {c.label}", file=sys.stderr)
    with new_workdir() as workdir:
        page = Page(studio, NO_MODEL_HELP, Path(workdir)).build()
        page.queue(max_size=64, default_concurrency_limit=1)
        name = studio.name if studio is not None else "no model"
        print(
            f"diffheads app: serving {name} at http://{options.host}:{options.port} (Ctrl+C to stop)",
            file=sys.stderr,
            flush=True,
        )
        page.launch(
            server_name=options.host,
            server_port=options.port,
            share=False,
            ssr_mode=False,
            inbrowser=False,
            show_error=True,
            quiet=True,
            theme=theme(),
            css=CSS,
            footer_links=[],
            mcp_server=False,
            pwa=False,
            max_file_size=MAX_UPLOAD,
        )
