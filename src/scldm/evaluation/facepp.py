"""A Face++ Detect API v3 client for gender and age (the SCLDM paper's attribute estimator).

POST multipart/form-data to https://api-us.faceplusplus.com/facepp/v3/detect with
`return_attributes=gender,age` (REFERENCES.md §8), standard library only. The key and secret
come from FACEPP_API_KEY / FACEPP_API_SECRET and never appear in logs, errors or the
recorded convention; FACEPP_URL (or `url=`) points the client elsewhere, e.g. the China
region or a test server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from scldm.errors import InputError
from scldm.faces import to_pil

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api-us.faceplusplus.com/facepp/v3/detect"
MAX_IMAGE_BYTES = 2 * 1024 * 1024  # the documented limit is 2 MB: stay strictly under it
MAX_IMAGE_SIDE = 4096
MIN_IMAGE_SIDE = 48


class FacePPError(InputError):
    """A Face++ request that failed for good: HTTP status and Face++'s error_message, one line
    (never the key or secret)."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        where = "Face++ detect" if status is None else f"Face++ detect (HTTP {status})"
        super().__init__(None, f"{where}: {message}")


def jpeg_under(img: Image.Image, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """JPEG bytes of `img` under `max_bytes`: quality 95, then 85 and 75, then 3/4 the size
    and again, down to Face++'s 48 px minimum side."""
    img = img.convert("RGB")
    if max(img.size) > MAX_IMAGE_SIDE:
        scale = MAX_IMAGE_SIDE / max(img.size)
        img = img.resize(tuple(max(1, int(s * scale)) for s in img.size), Image.Resampling.LANCZOS)
    while True:
        for quality in (95, 85, 75):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            if buf.tell() < max_bytes:
                return buf.getvalue()
        if min(img.size) * 3 // 4 < MIN_IMAGE_SIDE:
            raise FacePPError(None, f"cannot encode a {img.size} image under {max_bytes} bytes")
        img = img.resize(tuple(s * 3 // 4 for s in img.size), Image.Resampling.LANCZOS)


def _multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image_file"; '
        f'filename="face.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + image
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class FacePlusPlus:
    """Face++ Detect: gender ("f"/"m") and age (years) of the largest face in each image.

    One request per face image; retried with exponential back-off (`backoff_s` · 2^attempt,
    capped at `max_backoff_s`, `max_retries` times; `sleep` is injectable) on 403
    CONCURRENCY_LIMIT_EXCEEDED, on 5xx and on network errors. Other errors raise `FacePPError`
    at once with Face++'s error_message (413 answers plain text, not JSON). Images whose short
    side is under `min_side` px are upscaled (bicubic) first: Face++ needs faces of >= 48 px.
    """

    name = "facepp"

    def __init__(
        self,
        *,
        url: str | None = None,
        min_side: int = 150,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._api_key = os.environ.get("FACEPP_API_KEY", "")
        self._api_secret = os.environ.get("FACEPP_API_SECRET", "")
        if not self._api_key or not self._api_secret:
            raise InputError(
                None,
                "the facepp estimator needs the environment variables FACEPP_API_KEY and "
                "FACEPP_API_SECRET (a Face++ API key and secret)",
            )
        self.url = url or os.environ.get("FACEPP_URL") or DEFAULT_URL
        self.min_side = min_side
        self.max_retries = max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.convention = {
            "service": "Face++ Detect API v3",
            "url": self.url,
            "return_attributes": "gender,age",
            "image": (
                f"JPEG (quality 95, lowered and shrunk until < {MAX_IMAGE_BYTES} bytes); "
                f"short side upscaled (bicubic) to {min_side} px when smaller"
            ),
            "face": "the largest face_rectangle; no face -> None",
            "gender": "attributes.gender.value: Female -> f, Male -> m",
            "age": "attributes.age.value (whole years)",
        }

    def __repr__(self) -> str:
        return f"FacePlusPlus(url={self.url!r})"

    def _scrub(self, text: str) -> str:
        for secret in (self._api_key, self._api_secret):
            text = text.replace(secret, "***")
        return text

    def _post(self, image: bytes) -> dict[str, Any]:
        """One image → Face++'s JSON answer, retrying what may pass later."""
        fields = {
            "api_key": self._api_key,
            "api_secret": self._api_secret,
            "return_attributes": "gender,age",
        }
        body, content_type = _multipart(fields, image)
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": content_type}
        )
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                status, text = e.code, e.read().decode("utf-8", "replace")
                e.close()
                try:
                    message = json.loads(text).get("error_message") or text
                except (ValueError, AttributeError):  # 413 and proxies answer plain text
                    message = text.strip() or e.reason
                message = self._scrub(" ".join(str(message).split()))[:300]  # one line
                retry = status >= 500 or (
                    status == 403 and message.startswith("CONCURRENCY_LIMIT_EXCEEDED")
                )
                if status == 413:
                    message = (
                        f"{message} (the request body of {len(body)} bytes was refused; "
                        "images must be under 2 MB)"
                    )
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                status, retry = None, True
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                message = self._scrub(f"cannot reach {self.url}: {reason}")
            except ValueError as e:  # 200 with a body that is not JSON
                raise FacePPError(200, f"answer is not JSON ({e})") from None
            if not retry or attempt == self.max_retries:
                tries = f" (after {attempt + 1} tries)" if retry else ""
                raise FacePPError(status, message + tries) from None
            delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
            log.info("Face++ %s: %s; retrying in %.1f s", status, message, delay)
            self.sleep(delay)
            attempt += 1

    def detect(self, img: Image.Image) -> tuple[str | None, float | None]:
        """(gender "f"/"m", age in years) of the largest face in `img`, or (None, None)."""
        if min(img.size) < self.min_side:
            scale = self.min_side / min(img.size)
            size = tuple(max(self.min_side, round(s * scale)) for s in img.size)
            img = img.resize(size, Image.Resampling.BICUBIC)
        answer = self._post(jpeg_under(img))
        faces = answer.get("faces") or []
        if not faces:
            return None, None

        def area(face: dict[str, Any]) -> float:
            rect = face.get("face_rectangle") or {}
            return rect.get("width", 0) * rect.get("height", 0)

        attributes = max(faces, key=area).get("attributes") or {}
        gender = (attributes.get("gender") or {}).get("value")
        age = (attributes.get("age") or {}).get("value")
        return (
            {"Female": "f", "Male": "m"}.get(gender),
            None if age is None else float(age),
        )

    def __call__(self, faces: torch.Tensor) -> dict[str, list]:
        """faces (B, 3, H, W) in [-1, 1] → {"gender": ["f"/"m"/None], "age": [years/None]}."""
        out: dict[str, list] = {"gender": [], "age": []}
        for face in faces:
            gender, age = self.detect(to_pil(face))
            out["gender"].append(gender)
            out["age"].append(age)
        return out
