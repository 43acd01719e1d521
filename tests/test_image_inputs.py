"""Every kind of training image and mask a user may hand over: it loads as RGB (alpha kept as the mask), or it is
refused with one clear line naming the file."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from perfusion.cli import main
from perfusion.testing import small_corpus, write_concept_images
from perfusion.training.images import ImageInputError, load_training_images


def write_png(path, width, height, depth, colour_type, rows=()):
    """A PNG written by hand: PIL cannot write 16-bit colour, nor a header that lies about the size."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def folder(tmp_path, name="images"):
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def only(directory, mask_dir=None):
    (item,) = load_training_images(directory, mask_dir)
    assert item.image.mode == "RGB"
    return item


def pixels(image):
    return np.asarray(image).astype(int)


# -- files that cannot be used ----------------------------------------------------------------------------
def test_zero_byte_file_is_refused(tmp_path):
    (folder(tmp_path) / "00.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"00\.png: an empty file \(0 bytes\)"):
        load_training_images(tmp_path / "images")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_truncated_file_is_refused(tmp_path, suffix):
    path = folder(tmp_path) / f"00.{suffix}"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageInputError, match=rf"00\.{suffix}: not a readable image \(truncated"):
        load_training_images(tmp_path / "images")


def test_non_image_with_an_image_extension_is_refused(tmp_path):
    (folder(tmp_path) / "00.jpg").write_text("name,age\ncat,3\n")
    with pytest.raises(ImageInputError, match=r"00\.jpg: not a readable image \(not a recognised image format\)"):
        load_training_images(tmp_path / "images")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    write_png(folder(tmp_path) / "00.png", 100_000, 100_000, 8, 2)  # a few bytes claiming 10^10 pixels
    with pytest.raises(ImageInputError, match=r"00\.png: 10,000,000,000 pixels, more than the [\d,]+ PIL allows"):
        load_training_images(tmp_path / "images")


def test_image_over_pils_pixel_limit_is_refused(tmp_path, monkeypatch):
    """Between PIL's limit and twice it PIL only warns: the loader refuses there too."""
    write_concept_images(folder(tmp_path), count=1, size=16)  # 256 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with pytest.raises(ImageInputError, match=r"00\.png: 16x16 pixels, more than the 200 PIL allows"):
        load_training_images(tmp_path / "images")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file_is_refused(tmp_path):
    path = write_concept_images(folder(tmp_path), count=1) / "00.png"
    path.chmod(0)
    try:
        with pytest.raises(ImageInputError, match=r"00\.png: cannot be read \(permission denied\)"):
            load_training_images(tmp_path / "images")
    finally:
        path.chmod(0o644)


def test_directory_named_like_an_image_is_refused(tmp_path):
    """What an unreadable file looks like when the tests run as root (chmod does not stop root)."""
    write_concept_images(folder(tmp_path), count=1)
    (tmp_path / "images" / "01.png").mkdir()
    with pytest.raises(ImageInputError, match=r"01\.png: cannot be read \(a directory, not a file\)"):
        load_training_images(tmp_path / "images")


# -- unusual images that load ---------------------------------------------------------------------------
def test_16_bit_greyscale_keeps_its_tones(tmp_path):
    tones = np.array([[0, 16384, 32768, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(tones).save(folder(tmp_path) / "00.png")
    item = only(tmp_path / "images")
    assert item.mask is None
    assert pixels(item.image)[0, :, 0].tolist() == [0, 64, 128, 255]  # scaled, not clipped at 255


def test_16_bit_rgba_loads_as_rgb_with_its_alpha_as_the_mask(tmp_path):
    values = np.zeros((4, 4, 4), ">u2")
    values[..., 0] = 65535
    values[:2, :, 3] = 65535  # the top half opaque
    write_png(folder(tmp_path) / "00.png", 4, 4, 16, 6, [row.tobytes() for row in values])
    item = only(tmp_path / "images")
    assert pixels(item.image)[0, 0].tolist() == [255, 0, 0]
    assert pixels(item.mask)[:, 0].tolist() == [255, 255, 0, 0]


def test_palette_image_loads_as_rgb(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(folder(tmp_path) / "00.png")
    item = only(tmp_path / "images")
    assert item.mask is None and pixels(item.image)[0, 0].tolist() == [10, 200, 30]


def test_palette_transparency_becomes_the_mask(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(folder(tmp_path) / "00.png", transparency=0)
    item = only(tmp_path / "images")
    assert pixels(item.mask)[0, :2].tolist() == [0, 255]


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder(tmp_path) / "00.jpg", quality=95)
    red, green, blue = pixels(only(tmp_path / "images").image)[4, 4]
    assert red > 200 and green < 50 and blue < 50


def test_greyscale_loads_as_rgb(tmp_path):
    Image.new("L", (4, 4), 90).save(folder(tmp_path) / "00.png")
    item = only(tmp_path / "images")
    assert item.mask is None and pixels(item.image)[0, 0].tolist() == [90, 90, 90]


def test_greyscale_with_alpha_keeps_the_alpha_as_the_mask(tmp_path):
    image = Image.new("LA", (4, 4), (90, 255))
    image.putpixel((0, 0), (90, 0))
    image.save(folder(tmp_path) / "00.png")
    item = only(tmp_path / "images")
    assert pixels(item.image)[0, 1].tolist() == [90, 90, 90] and pixels(item.mask)[0, :2].tolist() == [0, 255]


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    folder(tmp_path)
    frames[0].save(tmp_path / "images" / "00.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert pixels(only(tmp_path / "images").image)[4, 4].tolist() == [255, 0, 0]


def rotated_jpeg(path, size=(16, 8)):
    """Stored landscape with a red left half; EXIF orientation 6 shows it portrait with red on top."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return path


def test_exif_rotation_is_honoured(tmp_path):
    rotated_jpeg(folder(tmp_path) / "00.jpg")
    image = only(tmp_path / "images").image
    assert image.size == (8, 16)
    assert pixels(image)[2, 4, 0] > 200 and pixels(image)[13, 4, 2] > 200  # red on top, blue below


def test_exif_rotation_of_a_mask_file_is_honoured(tmp_path):
    rotated_jpeg(folder(tmp_path) / "00.jpg")
    rotated_jpeg(folder(tmp_path, "masks") / "00.jpg")
    assert only(tmp_path / "images", tmp_path / "masks").mask.size == (8, 16)


def test_16_bit_mask_file_keeps_its_tones(tmp_path):
    write_concept_images(folder(tmp_path), count=1, size=4, alpha=False)
    Image.fromarray(np.array([[0, 65535, 0, 0]] * 4, np.uint16)).save(folder(tmp_path, "masks") / "00.png")
    assert pixels(only(tmp_path / "images", tmp_path / "masks").mask)[0].tolist() == [0, 255, 0, 0]


# -- masks that cannot be used --------------------------------------------------------------------------
def test_mask_of_the_wrong_size_is_refused(tmp_path):
    write_concept_images(folder(tmp_path), count=1, size=16, alpha=False)
    Image.new("L", (8, 8), 255).save(folder(tmp_path, "masks") / "00.png")
    with pytest.raises(ImageInputError, match=r"00\.png: its mask .*00\.png is 8x8 but the image is 16x16"):
        load_training_images(tmp_path / "images", tmp_path / "masks")


def test_all_zero_mask_file_is_refused(tmp_path):
    write_concept_images(folder(tmp_path), count=1, size=16, alpha=False)
    Image.new("L", (16, 16), 0).save(folder(tmp_path, "masks") / "00.png")
    with pytest.raises(ImageInputError, match=r"00\.png: its mask .*00\.png is all zero"):
        load_training_images(tmp_path / "images", tmp_path / "masks")


def test_fully_transparent_image_is_refused(tmp_path):
    Image.new("RGBA", (4, 4), (200, 0, 0, 0)).save(folder(tmp_path) / "00.png")
    with pytest.raises(ImageInputError, match=r"00\.png: its alpha channel \(the mask\) is all zero"):
        load_training_images(tmp_path / "images")


# -- folder sizes ---------------------------------------------------------------------------------------
def test_a_folder_of_500_images_loads(tmp_path):
    write_concept_images(folder(tmp_path), count=500, size=8)
    items = load_training_images(tmp_path / "images")
    assert len(items) == 500 and items[0].name == "00.png"
    assert all(item.image.mode == "RGB" and item.mask is not None for item in items)


# -- the command line: one clear line each ------------------------------------------------------------
@pytest.fixture(scope="module")
def captions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(small_corpus()))
    return path


def train(model, images, out, captions, *extra):
    return [
        str(part)
        for part in [
            "train",
            "--model",
            model,
            "--images",
            images,
            "--token",
            "<mydisc>",
            "--supercategory",
            "cat",
            "--out",
            out,
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--gradient-accumulation",
            "1",
            "--captions",
            captions,
            "--quiet",
            *extra,
        ]
    ]


def test_a_folder_of_one_image_trains(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    images = write_concept_images(folder(tmp_path), count=1)
    out = tmp_path / "one.safetensors"
    assert main(train(tiny_pipeline_dir, images, out, captions_file)) == 0
    assert out.exists() and "1 images" in capsys.readouterr().out


def zero_byte(images, masks):
    (images / "00.png").write_bytes(b"")


def truncated(images, masks):
    path = images / "00.png"
    path.write_bytes(path.read_bytes()[:40])


def bomb(images, masks):
    write_png(images / "00.png", 100_000, 100_000, 8, 2)


def not_an_image(images, masks):
    (images / "00.png").write_text("hello")


def directory(images, masks):
    (images / "00.png").unlink()
    (images / "00.png").mkdir()


def wrong_size_mask(images, masks):
    Image.new("L", (8, 8), 255).save(masks / "00.png")


def empty_mask(images, masks):
    Image.new("L", (16, 16), 0).save(masks / "00.png")


@pytest.mark.parametrize(
    "spoil, message",
    [
        (zero_byte, "00.png: an empty file"),
        (truncated, "00.png: not a readable image"),
        (bomb, "00.png: 10,000,000,000 pixels, more than the"),
        (not_an_image, "00.png: not a readable image"),
        (directory, "00.png: cannot be read"),
        (wrong_size_mask, "is 8x8 but the image is 16x16"),
        (empty_mask, "is all zero"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_the_command_line_gives_one_clear_line(spoil, message, tiny_pipeline_dir, tmp_path, captions_file, capsys):
    images = write_concept_images(folder(tmp_path), count=2, size=16, alpha=False)
    masks = folder(tmp_path, "masks")
    for path in images.iterdir():
        Image.new("L", (16, 16), 255).save(masks / path.name)
    spoil(images, masks)
    code = main(train(tiny_pipeline_dir, images, tmp_path / "x.safetensors", captions_file, "--mask-dir", masks))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("perfusion: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
