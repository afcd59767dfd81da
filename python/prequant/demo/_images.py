"""The demo's data: a few real photos that scikit-image's wheel ships, ImageNet class names from
torchvision, and EfficientNet-Lite0's preprocessing. Nothing is downloaded.

Evaluation input per photo: resize the short side to 256 (bilinear), center crop 224, RGB,
(x - 127) / 128, NCHW float32. Calibration inputs are derived from the same photos (a handful of
photos is too few to calibrate activation ranges on): random crops covering 35-100 % of the
area with aspect ratio 3/4..4/3, resized to 224, half of them flipped left-right.
"""

from __future__ import annotations

import numpy as np

from ._lite0_architecture import INPUT_MEAN, INPUT_STD

SIZE = 224
RESIZE = 256

# (name shown in the table, skimage.data loader, what the photo shows). Natural RGB photos only.
SAMPLES = [
    ("chelsea", "chelsea", "a tabby cat"),
    ("coffee", "coffee", "a cup of coffee"),
    ("rocket", "rocket", "a rocket on its launch pad"),
    ("motorcycle", "stereo_motorcycle", "a motorcycle"),
    ("astronaut", "astronaut", "an astronaut in front of a flag (no ImageNet class fits)"),
]


def load_photos(count: int) -> list[tuple[str, np.ndarray]]:
    """The first `count` sample photos as (name, HxWx3 uint8 RGB)."""
    from skimage import data

    if not 1 <= count <= len(SAMPLES):
        raise ValueError(f"the demo has {len(SAMPLES)} photos; ask for 1..{len(SAMPLES)}, not {count}")
    photos = []
    for name, loader, _ in SAMPLES[:count]:
        image = getattr(data, loader)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        photos.append((name, np.ascontiguousarray(image[..., :3])))
    return photos


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in the standard order (shipped inside torchvision)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _normalize(rgb: np.ndarray) -> np.ndarray:
    return ((rgb.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)


def center_crop(rgb: np.ndarray) -> np.ndarray:
    """Short side to 256, center 224 crop, normalized, 3x224x224 float32."""
    from PIL import Image

    im = Image.fromarray(rgb)
    w, h = im.size
    s = RESIZE / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    return _normalize(np.asarray(im.crop((left, top, left + SIZE, top + SIZE))))


def random_crops(rgb: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random-resized, randomly flipped 224 crops of one photo, normalized."""
    from PIL import Image

    im = Image.fromarray(rgb)
    w, h = im.size
    crops = []
    for i in range(count):
        area = w * h * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = min(w, round(np.sqrt(area * aspect)))
        ch = min(h, round(np.sqrt(area / aspect)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((left, top, left + cw, top + ch)).resize((SIZE, SIZE), Image.BILINEAR)
        if i % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(_normalize(np.asarray(crop)))
    return crops


def build_inputs(photo_count: int, crops_per_photo: int, seed: int = 0):
    """(names, evaluation batch Nx3x224x224, calibration batch (N*crops)x3x224x224)."""
    rng = np.random.default_rng(seed)
    photos = load_photos(photo_count)
    names = [name for name, _ in photos]
    evaluation = np.stack([center_crop(rgb) for _, rgb in photos])
    calibration = np.stack([c for _, rgb in photos for c in random_crops(rgb, crops_per_photo, rng)])
    return names, evaluation, calibration
