"""The battery of awkward inputs (issue 6), written to files, shared by the API, CLI and app tests.

Each case: name -> (file bytes or ndarray, expected: None for "works", or a phrase of the error message).
"""

import io

import numpy as np
from PIL import Image


def _png(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90' (orientation 6): it must come out 20x40."""
    im = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _png(im, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("P", (24, 16), i * 40) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def _bomb() -> bytes:
    """A tiny PNG whose header claims 10000x10000 pixels (100 MP, over the 40 MP limit)."""
    return _png(Image.new("1", (10000, 10000)), optimize=True)


def cases() -> dict:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8))
    png = _png(rgb)
    nan = rng.random((16, 16, 3))
    nan[3, 3, 0] = np.nan
    inf = rng.random((16, 16, 3))
    inf[0, 0, 1] = np.inf
    return {
        "zero_bytes.png": (b"", "empty"),
        "random_bytes.png": (rng.bytes(2048), "not an image file"),
        "truncated.png": (png[: len(png) // 2], "damaged or truncated"),
        "text_named.png": (b"this is not a picture\n" * 10, "not an image file"),
        "one_pixel.png": (_png(Image.new("RGB", (1, 1), (9, 9, 9))), None),
        "strip_3x20000.png": (_png(Image.new("RGB", (3, 20000), (50, 60, 70))), None),
        "bomb.png": (_bomb(), "over the limit"),
        "sixteen_bit.png": (_png(Image.fromarray((rng.random((20, 30)) * 65535).astype(np.uint16))), None),
        "sixteen_bit.tif": (
            _png(Image.fromarray((rng.random((20, 30)) * 65535).astype(np.uint16)), "TIFF"),
            None,
        ),
        "cmyk.jpg": (_png(Image.new("CMYK", (20, 20), (0, 128, 255, 0)), "JPEG"), None),
        "rgba.png": (_png(Image.new("RGBA", (20, 20), (255, 0, 0, 0))), None),
        "palette.png": (_png(rgb.convert("P")), None),
        "gray.png": (_png(rgb.convert("L")), None),
        "exif_rotated.jpg": (_exif_rotated(), None),
        "animated.gif": (_animated_gif(), None),
        "nan_array": (nan, "NaN or infinite"),
        "inf_array": (inf, "NaN or infinite"),
    }


def write_cases(folder) -> dict:
    """Write the file cases into `folder`; returns name -> (path or array, expected)."""
    out = {}
    for name, (data, expected) in cases().items():
        if isinstance(data, bytes):
            path = folder / name
            path.write_bytes(data)
            out[name] = (path, expected)
        else:
            out[name] = (data, expected)
    return out
