"""The web page of `scldm app` (Gradio): record or upload speech, see faces from each model side
by side, with the audio the models heard and its spectrogram. Everything the page does is
`Studio.run`; this module lays it out and serves it.

Offline and private by default: bound to 127.0.0.1, no analytics, no share link (the theme's
fonts and scripts come from the gradio package), no server-side rendering (which would need
Node.js), uploads limited in size by the server and in duration by the studio, temporary files
in a folder of the server's own that is emptied as it runs and removed when it stops. One
request runs at a time (a sampler already uses every CPU core); the others wait in a bounded
queue, and a bad file shows its error in the page while the server carries on."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import soundfile as sf

from scldm.app.studio import Sampling, Studio
from scldm.audio import SAMPLE_RATE
from scldm.errors import InputError

log = logging.getLogger(__name__)

TITLE = "scldm: faces from a voice"


def _gradio():
    """Gradio, imported with its analytics off (it reads the variable at import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    return gr


def _header(studio: Studio) -> str:
    limits = studio.limits
    lines = [
        f"# {TITLE}",
        "",
        "Record yourself or upload a recording (wav, flac, mp3, m4a, ogg, webm, ...; up to "
        f"{limits.max_upload_mb:g} MB and {limits.max_seconds:g} s). Each model hears the start "
        "of it (a shorter recording is looped by the models that read a fixed length).",
        "",
    ]
    for m in studio.models:
        lines.append(f"- **{m.name}**: {m.title}; hears the first {m.seconds:g} s; {m.trained_on}.")
    return "\n".join(lines)


class Outbox:
    """A fresh folder per answer under `root` for the files the page hands to Gradio.

    Gradio caches what a handler returns by content: a picture or an array is written to
    `<hash>/name`, rewritten in place by every answer with the same content (the same voice's
    spectrogram, the same voice and seed's faces) while another client may be downloading it,
    which then gets a truncated file. A file path is instead copied once, under a temporary name
    and renamed. So every answer is written here as files first; Gradio's copies are made as the
    handler returns, and folders older than `keep_s` are removed by later answers."""

    def __init__(self, root: Path, keep_s: float = 300.0):
        self.root, self.keep_s = Path(root), keep_s
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            if now - old.stat().st_mtime > self.keep_s:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="answer-", dir=self.root))


def build_page(studio: Studio, outbox: Outbox) -> Any:
    """The page's `gr.Blocks` for `studio`'s models; the answers' files go to `outbox`."""
    gr = _gradio()
    limits, defaults = studio.limits, studio.sampling_defaults()
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(300, 900)) as page:
        gr.Markdown(_header(studio))
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Speech: record or upload",
                    buttons=["download"],
                    elem_id="speech",
                )
                num_images = gr.Slider(
                    1,
                    limits.max_faces,
                    value=min(4, limits.max_faces),
                    step=1,
                    label="Faces",
                    elem_id="faces",
                )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                with gr.Accordion(
                    "SCLDM sampling (its saved defaults)", open=False, visible=defaults is not None
                ):
                    d = defaults or Sampling(6.0, 0.8, 25)
                    guidance = gr.Slider(
                        *limits.guidance, value=d.guidance_scale, step=0.1,
                        label="Guidance scale (1 = none)",
                    )  # fmt: skip
                    temperature = gr.Slider(
                        *limits.temperature, value=d.temperature, step=0.05,
                        label="Temperature (lower: closer to the voice, less varied)",
                    )  # fmt: skip
                    steps = gr.Slider(
                        1, limits.max_steps, value=d.num_inference_steps, step=1,
                        label="Sampler steps",
                    )  # fmt: skip
                button = gr.Button("Generate faces", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                galleries = [
                    gr.Gallery(
                        label=f"{m.name}: {m.title}"
                        + (" (deterministic: one face per voice)" if m.deterministic else ""),
                        columns=4,
                        fit_columns=False,
                        height=260,
                        object_fit="contain",
                        buttons=["download", "download_all", "fullscreen"],
                        elem_id=f"faces-{i}",
                        interactive=False,
                    )
                    for i, m in enumerate(studio.models)
                ]
                notice = gr.Markdown(label="Notes", elem_id="notice")
        with gr.Row():
            heard = gr.Audio(
                label=f"What the models heard (the first {studio.seconds:g} s)",
                type="filepath",
                interactive=False,
                buttons=["download"],
            )
            picture = gr.Image(
                label="Its spectrogram",
                type="filepath",
                interactive=False,
                buttons=["download", "fullscreen"],
            )

        def generate(speech, faces, seed, guidance, temperature, steps):
            sampling = Sampling()
            if defaults is not None:
                steps = None if steps is None else int(steps)
                sampling = Sampling(guidance, temperature, steps)
            try:
                result = studio.run(speech, faces, 0 if seed is None else seed, sampling)
            except InputError as e:
                message = e.problem  # the file by its name: the server's paths stay private
                if e.path is not None:
                    name = Path(e.path).name
                    message = f"{name}: {message.replace(e.path, name)}"
                raise gr.Error(message, print_exception=False) from None
            out = outbox.folder()
            galleries = []
            for i, m in enumerate(studio.models):
                gallery = []
                for k, im in enumerate(result.faces[m.name]):
                    im.save(out / f"{i}-{m.name}-{k + 1}.png")
                    gallery.append((str(out / f"{i}-{m.name}-{k + 1}.png"), f"{m.name} #{k + 1}"))
                galleries.append(gallery)
            lines = [*result.notices, f"Made in {result.seconds:.1f} s."]
            sf.write(out / "heard.wav", result.heard.clip(-1, 1), SAMPLE_RATE, subtype="PCM_16")
            result.spectrogram.save(out / "spectrogram.png")
            return (
                *galleries,
                "  \n".join(lines),
                str(out / "heard.wav"),
                str(out / "spectrogram.png"),
            )

        button.click(
            generate,
            inputs=[audio, num_images, seed, guidance, temperature, steps],
            outputs=[*galleries, notice, heard, picture],
            concurrency_limit=1,
            api_name="generate",
        )
    return page


def serve(
    studio: Studio,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    queue_size: int = 16,
    open_browser: bool = False,
) -> None:
    """Serve `studio`'s page until interrupted (Ctrl-C or SIGTERM); temporary files (uploads,
    faces) in a folder of its own, removed when it stops."""
    temp = Path(tempfile.mkdtemp(prefix="scldm-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(temp)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests

    def stop(signum: int, frame: Any) -> None:  # a scheduler's or `kill`'s stop, as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        page = build_page(studio, Outbox(temp / "answers"))
        page.queue(default_concurrency_limit=1, max_size=queue_size)
        print(f"scldm app: serving {len(studio.models)} model(s) on http://{host}:{port}")
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=open_browser,
            max_file_size=int(studio.limits.max_upload_mb * 1e6),  # bytes
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            show_error=True,
            quiet=True,
            footer_links=["api"],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(temp, ignore_errors=True)
        print("scldm app: stopped")
