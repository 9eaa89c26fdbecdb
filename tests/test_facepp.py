"""The Face++ Detect client against a local fake server that answers as the documentation
says (REFERENCES.md §8): success, retries with back-off, and one-line errors without secrets."""

from __future__ import annotations

import io
import json
import socket
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from scldm.errors import InputError
from scldm.evaluation.extractors import build_estimator
from scldm.evaluation.facepp import MAX_IMAGE_BYTES, FacePlusPlus, FacePPError, jpeg_under
from scldm.faces import to_pil

KEY, SECRET = "test-key-8d3f", "test-secret-51ac"


def documented_answer(*faces: tuple[str, int, int]) -> dict:
    """A Detect answer shaped like the documentation's example, one face per (gender, age,
    width)."""
    return {
        "image_id": "Dd2xUw9S/7yjr0oDHHSL/Q==",
        "request_id": "1470472868,dacf2ff1-ea45-4842-9c07-6e8418cea78b",
        "time_used": 752,
        "faces": [
            {
                "face_token": f"ed319e807e039ae669a4d1af0922a0c{i}",
                "face_rectangle": {"width": width, "top": 89, "left": 104, "height": width},
                "attributes": {"gender": {"value": gender}, "age": {"value": age}},
            }
            for i, (gender, age, width) in enumerate(faces)
        ],
    }


class FakeFacePP:
    """Answers each POST with the next scripted (status, body) and records what it received."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict | str]] = []
        self.requests: list[dict[str, bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                raw = b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n"
                message = BytesParser(policy=HTTP).parsebytes(raw + body)
                fake.requests.append(
                    {
                        part.get_param("name", header="content-disposition"): part.get_payload(
                            decode=True
                        )
                        for part in message.iter_parts()
                    }
                )
                status, answer = fake.script.pop(0)
                if isinstance(answer, str):  # 413 answers plain text
                    data, kind = answer.encode(), "text/plain"
                else:
                    data, kind = json.dumps(answer).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/facepp/v3/detect"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeFacePP()
    yield fake
    fake.close()


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setenv("FACEPP_API_KEY", KEY)
    monkeypatch.setenv("FACEPP_API_SECRET", SECRET)
    monkeypatch.setenv("FACEPP_URL", server.url)
    sleeps: list[float] = []
    facepp = FacePlusPlus(max_retries=3, backoff_s=0.5, max_backoff_s=1.5, sleep=sleeps.append)
    facepp.sleeps = sleeps
    return facepp


def faces(batch: int = 1, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error)):
        assert KEY not in text and SECRET not in text


def test_success_reads_the_largest_face_and_sends_the_documented_form(server, client):
    server.script = [
        (200, documented_answer(("Male", 60, 40), ("Female", 21, 140))),
        (200, documented_answer(("Male", 35, 120))),
    ]
    out = client(faces(2))
    assert out == {"gender": ["f", "m"], "age": [21.0, 35.0]}
    assert client.sleeps == []
    form = server.requests[0]
    assert form["api_key"] == KEY.encode() and form["api_secret"] == SECRET.encode()
    assert form["return_attributes"] == b"gender,age"
    image = Image.open(io.BytesIO(form["image_file"]))
    assert image.format == "JPEG" and len(form["image_file"]) < MAX_IMAGE_BYTES
    assert min(image.size) == 150  # 64 px faces are upscaled for Face++'s 48 px face minimum
    for text in (repr(client), json.dumps(client.convention)):
        assert KEY not in text and SECRET not in text
    assert client.convention["url"] == server.url


def test_no_face_is_none(server, client):
    server.script = [(200, documented_answer())]
    assert client(faces(1)) == {"gender": [None], "age": [None]}


def test_concurrency_limit_is_retried_with_capped_back_off(server, client):
    busy = {"error_message": "CONCURRENCY_LIMIT_EXCEEDED", "request_id": "x", "time_used": 1}
    server.script = [(403, busy)] * 3 + [(200, documented_answer(("Female", 30, 100)))]
    assert client(faces(1)) == {"gender": ["f"], "age": [30.0]}
    assert client.sleeps == [0.5, 1.0, 1.5]  # 0.5 · 2^attempt, capped at 1.5
    assert len(server.requests) == 4


def test_server_errors_are_retried_then_reported(server, client):
    server.script = [(500, {"error_message": "INTERNAL_ERROR"}), (502, "Bad Gateway")]
    server.script.append((200, documented_answer(("Male", 44, 100))))
    assert client(faces(1)) == {"gender": ["m"], "age": [44.0]}
    assert client.sleeps == [0.5, 1.0]

    server.script = [(500, {"error_message": "INTERNAL_ERROR"})] * 4
    with pytest.raises(FacePPError, match=r"HTTP 500.*INTERNAL_ERROR \(after 4 tries\)"):
        client(faces(1))


def test_413_plain_text_is_a_clear_error(server, client):
    server.script = [(413, "<html><body>413 Request Entity Too Large</body></html>")]
    with pytest.raises(FacePPError, match=r"HTTP 413.*Request Entity Too Large.*under 2 MB"):
        client(faces(1))
    assert len(server.requests) == 1 and client.sleeps == []


@pytest.mark.parametrize(
    "status, error_message",
    [
        (401, "AUTHENTICATION_ERROR"),
        (403, "AUTHORIZATION_ERROR:Denied by Client"),
        (400, f"BAD_ARGUMENTS: api_secret {SECRET}"),  # even an echoed secret is masked
    ],
    ids=["401", "403", "400"],
)
def test_client_errors_are_reported_at_once_without_secrets(server, client, status, error_message):
    server.script = [(status, {"error_message": error_message, "request_id": "x"})]
    with pytest.raises(FacePPError, match=f"HTTP {status}") as info:
        client(faces(1))
    assert error_message.split(" ")[0] in str(info.value)
    assert_no_secret(info.value)
    assert isinstance(info.value, InputError)  # the CLI prints it as one line
    assert len(server.requests) == 1 and client.sleeps == []


def test_unreachable_server_is_retried_then_reported(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FACEPP_API_KEY", KEY)
    monkeypatch.setenv("FACEPP_API_SECRET", SECRET)
    sleeps: list[float] = []
    client = FacePlusPlus(url=f"http://127.0.0.1:{port}/", max_retries=2, sleep=sleeps.append)
    with pytest.raises(FacePPError, match="cannot reach") as info:
        client(faces(1))
    assert sleeps == [1.0, 2.0]
    assert_no_secret(info.value)


def test_large_images_are_sent_under_2_mb(server, client):
    noise = faces(1, 1500)  # JPEG of this noise: 2.6 MB at quality 95, 1.7 MB at 85
    server.script = [(200, documented_answer())]
    client(noise)
    sent = server.requests[0]["image_file"]
    assert len(sent) < MAX_IMAGE_BYTES
    assert Image.open(io.BytesIO(sent)).size[0] >= 48
    # lowering the quality is not enough here: the image is shrunk by 3/4 until it fits
    shrunk = jpeg_under(to_pil(faces(1, 600)[0]), max_bytes=100_000)
    assert len(shrunk) < 100_000 and Image.open(io.BytesIO(shrunk)).size[0] < 600


def test_credentials_come_from_the_environment(monkeypatch, server):
    monkeypatch.delenv("FACEPP_API_KEY", raising=False)
    monkeypatch.setenv("FACEPP_API_SECRET", SECRET)
    with pytest.raises(InputError, match="FACEPP_API_KEY and FACEPP_API_SECRET") as info:
        build_estimator("facepp")
    assert_no_secret(info.value)
    monkeypatch.setenv("FACEPP_API_KEY", KEY)
    monkeypatch.delenv("FACEPP_URL", raising=False)
    assert build_estimator("facepp").url == "https://api-us.faceplusplus.com/facepp/v3/detect"
    monkeypatch.setenv("FACEPP_URL", server.url)
    assert build_estimator("facepp").convention["url"] == server.url
