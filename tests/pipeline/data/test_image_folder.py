"""``data: {name: image_folder}`` on real images: scikit-learn's 8x8 digits written as PNG files, one
sub-folder per class, read back through ``load_data`` and one stage of a run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

import edgeslim
from edgeslim.config.schema import DataSpec
from edgeslim.data.datasets import load_data
from edgeslim.errors import UserError
from tests.conftest import small_config, write_config

ROOT = Path(__file__).resolve().parents[3]
CLASSES = {"zero": 0, "one": 1, "two": 2}  # folder name -> digit; sorted names give ids one=0, two=1, zero=2
PER_CLASS = 40


def write_digits(root: Path, per_class: int = PER_CLASS, classes: dict[str, int] = CLASSES) -> dict[str, list[Path]]:
    """Real digits as 8-bit grayscale PNGs (0-16 scaled to 0-255) in ``root/<class>/NNN.png``."""
    bunch = load_digits()
    files: dict[str, list[Path]] = {}
    for name, digit in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        images = bunch.images[bunch.target == digit][:per_class]
        files[name] = []
        for i, image in enumerate(images):
            path = folder / f"{i:03d}.png"
            Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), mode="L").save(path)
            files[name].append(path)
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits_png")
    write_digits(root)
    (root / "one" / "notes.txt").write_text("not an image: skipped")
    (root / ".cache").mkdir()  # hidden: not a class
    return root


def spec(root: Path, **keys: object) -> DataSpec:
    return DataSpec(name="image_folder", path=root, **keys)


def all_images(splits) -> tuple[torch.Tensor, torch.Tensor]:
    parts = (splits.train, splits.val, splits.test)
    return torch.cat([p.tensors[0] for p in parts]), torch.cat([p.tensors[1] for p in parts])


def expected_by_class(root: Path, transform) -> list[list[bytes]]:
    """What each class folder's files should become: ``transform(PIL image) -> (C, H, W) float32``."""
    out = []
    for name in sorted(CLASSES):
        arrays = []
        for path in sorted((root / name).glob("*.png")):
            with Image.open(path) as image:
                arrays.append(np.ascontiguousarray(transform(image), dtype=np.float32).tobytes())
        out.append(sorted(arrays))
    return out


def per_image(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[list[bytes]]:
    """Each class's images as sorted raw bytes: comparable whatever split and order they landed in."""
    return [sorted(x[i : i + 1].numpy().tobytes() for i in range(len(y)) if int(y[i]) == c) for c in range(num_classes)]


def test_classes_are_the_sorted_folders_and_pixels_are_normalised_as_recorded(folder):
    splits = load_data(spec(folder, grayscale=True, mean=[0.5], std=[0.25]))
    assert splits.labels == ["one", "two", "zero"] and splits.num_classes == 3
    assert splits.input_shape == (1, 8, 8)
    x, y = all_images(splits)
    assert len(y) == 3 * PER_CLASS  # every PNG once; notes.txt and the hidden folder skipped

    def normalise(image: Image.Image) -> np.ndarray:
        return ((np.asarray(image, dtype=np.float32) * np.float32(1 / 255) - 0.5) / 0.25)[None]

    assert per_image(x, y, 3) == expected_by_class(folder, normalise)  # "zero" files are class 2, and so on
    pre = splits.preprocessing
    assert (pre.layout, pre.scale, pre.mean, pre.std) == ("NCHW", 1 / 255, [0.5], [0.25])
    assert pre.raw_input == "grayscale 8x8, 0-255"


def test_resize_center_crop_and_rgb_are_pillows_own(folder):
    splits = load_data(spec(folder, image_size=16, crop=12, mean=[0.1, 0.2, 0.3], std=[0.5]))
    assert splits.input_shape == (3, 12, 12)

    def transform(image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR).crop((2, 2, 14, 14))
        pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
        return (pixels - np.float32([0.1, 0.2, 0.3])[:, None, None]) / np.float32(0.5)

    x, y = all_images(splits)
    assert per_image(x, y, 3) == expected_by_class(folder, transform)
    pre = splits.preprocessing
    assert pre.mean == [0.1, 0.2, 0.3] and pre.std == [0.5, 0.5, 0.5]  # one value per channel, as apps need it
    assert pre.raw_input == "RGB image, 0-255, resized to 16x16 (bilinear), center-cropped to 12x12"


def test_the_split_is_seeded_and_stratified(folder):
    first, again = load_data(spec(folder, grayscale=True)), load_data(spec(folder, grayscale=True))
    assert first.fingerprint == again.fingerprint
    assert torch.equal(first.test.tensors[0], again.test.tensors[0])
    sizes = [len(part) for part in (first.train, first.val, first.test)]
    assert sum(sizes) == 3 * PER_CLASS and abs(sizes[2] - 2 * sizes[1]) <= 2  # 70/10/20
    for part in (first.train, first.val, first.test):  # every class in every split, in equal shares
        counts = torch.bincount(part.tensors[1], minlength=3)
        assert counts.min() > 0 and counts.max() - counts.min() <= 1
    other = load_data(spec(folder, grayscale=True, split_seed=1))
    assert not torch.equal(other.test.tensors[0], first.test.tensors[0])
    assert other.fingerprint != first.fingerprint
    subset = load_data(spec(folder, grayscale=True, max_samples=60))
    assert sum(len(p) for p in (subset.train, subset.val, subset.test)) == 60


def test_the_fingerprint_covers_the_files_not_only_their_pixels(tmp_path):
    files = write_digits(tmp_path)
    before = load_data(spec(tmp_path, grayscale=True))
    # same pixels, different bytes (a text chunk): the decoded tensors are equal, the fingerprint is not
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("note", "re-exported")
    Image.open(files["two"][0]).save(files["two"][0], pnginfo=info)
    metadata_only = load_data(spec(tmp_path, grayscale=True))
    assert torch.equal(all_images(metadata_only)[0], all_images(before)[0])
    assert metadata_only.fingerprint != before.fingerprint
    # one pixel changed: new pixels, new fingerprint
    pixels = np.asarray(Image.open(files["zero"][5])).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels, mode="L").save(files["zero"][5])
    edited = load_data(spec(tmp_path, grayscale=True))
    assert edited.fingerprint not in (before.fingerprint, metadata_only.fingerprint)


def one_line_error(data_spec: DataSpec, pattern: str) -> str:
    with pytest.raises(UserError) as err:
        load_data(data_spec)
    message = str(err.value)
    assert "\n" not in message and re.search(pattern, message), message
    return message


def test_folder_errors_are_one_line_naming_the_key(tmp_path):
    one_line_error(spec(tmp_path / "nowhere"), r"^data\.path: folder not found: .*nowhere$")
    (tmp_path / "file.png").write_bytes(b"")
    one_line_error(spec(tmp_path / "file.png"), r"^data\.path: not a folder: ")
    write_digits(tmp_path / "single", classes={"zero": 0})
    one_line_error(spec(tmp_path / "single"), r"^data\.path: .*single has 1 class folder\(s\) \(zero\); .* at least 2$")


def test_an_unreadable_image_is_named(tmp_path):
    write_digits(tmp_path)
    (tmp_path / "two" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    one_line_error(spec(tmp_path), r"^data\.path: cannot read image .*two/broken\.png: ")
    (tmp_path / "two" / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "two" / "gif_named.jpg", format="GIF")
    one_line_error(spec(tmp_path), r"^data\.path: cannot read image .*two/gif_named\.jpg: ")  # no GIF decoder used
    (tmp_path / "two" / "gif_named.jpg").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "two" / "deep.png")
    one_line_error(spec(tmp_path), r"^data\.path: .*two/deep\.png has I(;16)? pixels; image_folder reads 8-bit images$")


def test_a_class_too_small_to_split_is_named(tmp_path):
    write_digits(tmp_path, per_class=12)
    for path in sorted((tmp_path / "one").glob("*.png"))[4:]:
        path.unlink()
    one_line_error(
        spec(tmp_path),
        r"^data\.path: class 'one' \(.*/one\) has 4 image\(s\); splitting into train/val/test \(val_fraction 0\.1, "
        r"test_fraction 0\.2\) needs at least 10 per class$",
    )
    assert load_data(spec(tmp_path, val_fraction=0.25, test_fraction=0.25)).labels == ["one", "two", "zero"]


def test_images_of_different_sizes_need_image_size(tmp_path):
    write_digits(tmp_path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "zero" / "wide.png")
    message = one_line_error(spec(tmp_path), r"^data\.image_size: images differ in size \(.*\); set data\.image_size")
    assert "zero/wide.png is 12x10" in message and " is 8x8" in message
    assert load_data(spec(tmp_path, image_size=8)).input_shape == (3, 8, 8)
    one_line_error(spec(tmp_path, crop=9), r"^data\.crop: .* is 8x8, smaller than crop 9; set data\.image_size")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"name": "digits", "path": "x"}, r"^data\.path: only for name: image_folder \| text_csv \(got 'x'\)$"),
        ({"name": "digits", "grayscale": True}, r"^data\.grayscale: only for name: image_folder"),
        ({"name": "image_folder"}, r"^data\.path: required for name: image_folder: a folder with one sub-folder"),
        ({"name": "image_folder", "path": "x", "image_size": 8, "crop": 9}, r"^data\.crop: must not exceed image_size"),
        ({"name": "image_folder", "path": "x", "grayscale": True, "mean": [0.1, 0.2]}, r"^data\.mean: give one value"),
        ({"name": "image_folder", "path": "x", "std": [0.1, 0.2]}, r"^data\.std: give 1 or 3 values \(RGB\)"),
        ({"name": "image_folder", "path": "x", "std": [0.0]}, r"^data\.std: std entries must be non-zero"),
    ],
)
def test_image_folder_keys_are_validated_with_the_config(keys, message):
    with pytest.raises(UserError, match=message):
        edgeslim.parse_config(small_config(["baseline"], data=keys))


def test_other_keys_that_do_not_apply_are_refused(folder):
    one_line_error(spec(folder, kwargs={"a": 1}), r"^data\.kwargs: built-in dataset 'image_folder' takes no kwargs$")
    one_line_error(
        DataSpec(name="image_folder", path=folder, preprocessing={"mean": [0.5]}),
        r"^data\.preprocessing: image_folder records its own; set data\.mean and data\.std instead$",
    )
    assert load_data(spec(folder, labels=["1", "2", "0"])).labels == ["1", "2", "0"]  # display names may differ


def test_old_configs_and_their_dumps_stay_valid():
    plain = DataSpec(name="digits")
    assert DataSpec.model_validate(plain.model_dump(mode="json")) == plain  # dumps hold path: null, grayscale: false


def readme_example() -> dict:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "name: image_folder" in b]
    return yaml.safe_load(block)


def test_the_readme_example_reads_a_folder_beside_the_config(tmp_path):
    example = readme_example()
    write_digits(tmp_path / example["data"]["path"])  # a relative path is taken from the config's folder
    config = edgeslim.load_config(write_config(tmp_path / "c.yaml", small_config(["baseline"], **example)))
    assert config.data.path == (tmp_path / example["data"]["path"]).resolve()
    splits = load_data(config.data)
    assert splits.input_shape == (3, example["data"]["crop"], example["data"]["crop"])
    assert splits.preprocessing.mean == example["data"]["mean"]


def test_a_stage_runs_on_an_image_folder(folder, tmp_path):
    cfg = small_config(["baseline"], data={"name": "image_folder", "path": str(folder), "grayscale": True})
    result = edgeslim.run(cfg, out=tmp_path)
    (stage,) = result.stages
    assert stage.status == "ran" and 0.0 <= stage.metrics.accuracy <= 1.0
    manifest = (result.stage_dir("baseline") / "manifest.json").read_text()
    assert load_data(spec(folder, grayscale=True)).fingerprint in manifest  # the stage is keyed by the folder's data
