"""A downloaded sample is stored as the row asked: byte for byte when it already is that format
(no decode and re-encode), transcoded when the provider could only offer another."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kontext_batch.errors import InvalidImage
from kontext_batch.io.formats import conform_sample


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 40, 90)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("wanted", "pil"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_a_sample_already_in_the_wanted_format_is_kept_byte_identical(wanted: str, pil: str) -> None:
    data = encoded(pil)
    out, content_type, transcoded_from = conform_sample(data, wanted)
    assert out == data
    assert content_type == f"image/{wanted}"
    assert transcoded_from is None


def test_a_sample_in_another_format_is_transcoded_and_says_from_what() -> None:
    out, content_type, transcoded_from = conform_sample(encoded("PNG"), "webp")
    assert content_type == "image/webp"
    assert transcoded_from == "png"
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "WEBP"
        assert im.size == (16, 12)


@pytest.mark.parametrize(("wanted", "pil"), [("jpeg", "JPEG"), ("png", "PNG")])
def test_a_truncated_sample_in_the_wanted_format_is_refused(wanted: str, pil: str) -> None:
    data = encoded(pil)
    with pytest.raises(InvalidImage, match="not a decodable image"):
        conform_sample(data[: len(data) - 20], wanted)
