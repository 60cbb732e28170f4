"""Every odd input a face folder holds: converted when it is an image, a reason when not."""

import io

import numpy as np
import pytest
from PIL import Image

from facekd.image_io import UnreadableImage, decode_rgb, read_rgb


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_grayscale_becomes_three_equal_channels(tmp_path):
    p = tmp_path / "g.jpg"
    Image.fromarray(np.full((20, 30), 77, np.uint8), "L").save(p)
    rgb = read_rgb(p)
    assert rgb.shape == (20, 30, 3)
    assert np.abs(rgb.astype(int) - 77).max() <= 1


def test_cmyk_jpeg_is_converted(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    rgb = read_rgb(p)
    assert rgb.shape == (16, 16, 3)
    r, g, b = rgb[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgb = decode_rgb(_png_bytes(img))
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])


def test_16bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, np.uint16)  # half of full scale
    rgb = decode_rgb(_png_bytes(Image.fromarray(arr)))
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_exif_rotation_is_applied(tmp_path):
    # Stored as 20 wide x 10 high with orientation 6 ("rotate 90 CW to view"): upright it
    # is 10 wide x 20 high, and the stored left columns (red) become the top rows.
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :4] = [255, 0, 0]  # four columns wide, so chroma subsampling keeps it red
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "r.jpg"
    Image.fromarray(arr).save(p, exif=exif.tobytes(), quality=100)
    rgb = read_rgb(p)
    assert rgb.shape == (20, 10, 3)
    assert rgb[0, 5, 0] > 200 and rgb[-1, 5, 0] < 60


def test_zero_byte_truncated_and_non_images(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="empty file"):
        read_rgb(empty)
    with pytest.raises(UnreadableImage, match="not an image"):
        read_rgb(text)
    with pytest.raises(UnreadableImage, match="truncated"):
        read_rgb(truncated)


def test_tiny_image_reads():
    rgb = decode_rgb(_png_bytes(Image.new("RGB", (3, 2), (1, 2, 3))))
    np.testing.assert_array_equal(rgb, np.full((2, 3, 3), [1, 2, 3], dtype=np.uint8))  # PNG is lossless: R, G, B in order
