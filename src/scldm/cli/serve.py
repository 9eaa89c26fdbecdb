"""`scldm app`: serve the web page (record or upload speech, see faces) for trained models."""

from __future__ import annotations

import argparse

from scldm.cli.options import Command
from scldm.errors import InputError


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a pipeline folder (RUN/pipeline of scldm train or train-baseline); repeat it to "
        "show several methods side by side, each named by its method or by NAME",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 "
        "serves the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest upload (default: %(default)s)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="longest recording accepted, in seconds (default: %(default)s); the models hear "
        "its start",
    )
    p.add_argument(
        "--max-faces", type=int, default=8, help="most faces per request (default: %(default)s)"
    )
    p.add_argument(
        "--queue", type=int, default=16, help="requests that may wait (default: %(default)s)"
    )
    p.add_argument("--open", action="store_true", help="open the page in a browser")


def _check_port(host: str, port: int) -> None:
    """Refuse in one line an address this machine cannot listen on (a port in use, say)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise InputError(
            None, f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port"
        ) from None


def _app(args: argparse.Namespace) -> int:
    from scldm.cli.options import require_pipeline

    for name, value, low in (
        ("--port", args.port, 1),
        ("--max-faces", args.max_faces, 1),
        ("--queue", args.queue, 1),
    ):
        if value < low:
            raise InputError(None, f"{name} must be at least {low}, got {value}")
    for name, value in (
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-seconds", args.max_seconds),
    ):
        if not value > 0 or value == float("inf"):
            raise InputError(None, f"{name} must be a positive number, got {value}")
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not imported here: serve sets it up
        raise InputError(
            None, "the app needs Gradio: pip install 'scldm[app]' (make installs it)"
        ) from None
    _check_port(args.host, args.port)  # before the models load
    from scldm.app.studio import Limits, Studio, model_names

    models = model_names(args.models)
    for path in models.values():
        require_pipeline(path)
    limits = Limits(
        max_upload_mb=args.max_upload_mb,
        max_seconds=args.max_seconds,
        max_faces=args.max_faces,
    )
    studio = Studio(models, limits)
    from scldm.app.page import serve

    serve(studio, args.host, args.port, queue_size=args.queue, open_browser=args.open)
    return 0


APP = Command(
    "app",
    "a web page to record or upload speech and see faces (Gradio)",
    _options,
    _app,
    description="Serves a page where anyone records from the microphone or uploads a file "
    "and sees faces from each --model side by side, with the audio the models heard and its "
    "spectrogram. SCLDM's sampling settings (guidance, temperature, steps) start at the "
    "pipeline's saved defaults. The model folders are fixed here, never taken from the page. "
    "Offline: nothing is fetched and no analytics are sent; bound to 127.0.0.1 unless --host "
    "says otherwise. One request runs at a time (sampling uses every core); up to --queue "
    "wait. Example: `scldm app --model runs/demo/ldm/pipeline`, then open "
    "http://127.0.0.1:7860.",
)
