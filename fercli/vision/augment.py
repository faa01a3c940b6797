"""Video augmentation: one transform for every frame of a sequence (thesis 3.2.2).

Offline methods (thesis 3.2.4, listing lines 1-9; paper 000 sec. 2.2 adds the last two) each
write one more training clip. The names below are the config names (``augment.methods``):

=============  ===============================================  =========================
name           operation on a uint8 frame                        source
=============  ===============================================  =========================
flip           ``cv2.flip(img, 1)``                              thesis 3.2.4 line 1
blur           ``cv2.GaussianBlur(img, (3, 3), 0)``              thesis 3.2.4 line 2
bright50       ``cv2.convertScaleAbs(img, alpha=1, beta=50)``    thesis 3.2.4 line 3
bright20       ``cv2.convertScaleAbs(img, alpha=1, beta=20)``    thesis 3.2.4 line 4
contrast2      ``cv2.convertScaleAbs(img, alpha=2, beta=0)``     thesis 3.2.4 line 5
contrast17     ``cv2.convertScaleAbs(img, alpha=1.7, beta=50)``  thesis 3.2.4 line 6
rot8           rotate +8 degrees (counter-clockwise)             thesis 3.2.4 line 7
rot-8          rotate -8 degrees (clockwise)                     thesis 3.2.4 line 8
saltpepper     1 % salt-and-pepper noise per channel             thesis 3.2.4 lines 9-30
histeq         ``cv2.equalizeHist`` (on luma for colour)         paper 000 sec. 2.2
gray           ``cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)``         paper 000 sec. 2.2
=============  ===============================================  =========================

Online augmentation (thesis 3.2.5) reproduces the C3D ``ImageDataGenerator`` settings with one
random parameter set per sequence, in NumPy/OpenCV (``OnlineAugment.apply_numpy``) and in
TensorFlow for ``tf.data`` pipelines (``OnlineAugment.tf_augment_sequence``). TensorFlow is
imported only inside the TensorFlow functions.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fercli.core.errors import ConfigError, ItemError

SALT_PEPPER_AMOUNT = 0.01  # share of the values of each channel (thesis 3.2.4 line 9)
ROTATION_DEGREES = 8.0  # thesis 3.2.4 lines 7-8


def _flip(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.flip(frame, 1)


def _blur(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(frame, (3, 3), 0)


def _scale_abs(alpha: float, beta: float) -> Callable[[np.ndarray, np.random.Generator],
                                                      np.ndarray]:
    """``|alpha * x + beta|`` saturated to uint8: brightness (alpha 1) or contrast changes."""
    def scale(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return cv2.convertScaleAbs(frame, alpha=alpha, beta=beta)
    return scale


def rotate(frame: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, black corners (what ``imutils.rotate`` does).

    The centre is the exact pixel centre ((w - 1) / 2, (h - 1) / 2); imutils uses
    (w // 2, h // 2), half a pixel off for even sizes, so +8 then -8 would not cancel.
    """
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(frame, matrix, (width, height))


def _rotation(degrees: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def rotation(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rotate(frame, degrees)
    return rotation


def salt_pepper_noise(shape: tuple[int, ...], amount: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Noise mask for a frame of ``shape``: +1 salt (255), -1 pepper (0), 0 untouched.

    Each channel gets ``ceil(amount * h * w / 2)`` salt and as many pepper values at distinct
    positions, drawn independently per channel as in thesis 3.2.4 (lines 11-30). The thesis
    listing draws coordinates with ``np.random.randint(0, i - 1)``, which never reaches the
    last row or column, and with replacement, so fewer than 1 % of values change; here every
    position can be hit and exactly that many values are set.
    """
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    n_each = math.ceil(amount * height * width / 2)
    order = rng.random((channels, height * width)).argsort(axis=1)
    noise = np.zeros((channels, height * width), np.int8)
    rows = np.arange(channels)[:, None]
    noise[rows, order[:, :n_each]] = 1
    noise[rows, order[:, n_each:2 * n_each]] = -1
    return noise.T.reshape(shape)


def _salt_pepper(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = salt_pepper_noise(frame.shape, SALT_PEPPER_AMOUNT, rng)
    out = frame.copy()
    out[noise == 1] = 255
    out[noise == -1] = 0
    return out


def _histeq(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Equalise the grey levels; for colour only luma, so the hues stay as they were."""
    if frame.ndim == 2:
        return cv2.equalizeHist(frame)
    ycrcb = cv2.cvtColor(frame, cv2.COLOR_BGR2YCrCb)
    ycrcb[..., 0] = cv2.equalizeHist(ycrcb[..., 0])
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def _gray(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey levels, still with three channels for colour frames, so clip shapes do not change."""
    if frame.ndim == 2:
        return frame.copy()
    return cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


OFFLINE_METHODS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "flip": _flip,
    "blur": _blur,
    "bright50": _scale_abs(1, 50),
    "bright20": _scale_abs(1, 20),
    "contrast2": _scale_abs(2, 0),
    "contrast17": _scale_abs(1.7, 50),
    "rot8": _rotation(ROTATION_DEGREES),
    "rot-8": _rotation(-ROTATION_DEGREES),
    "saltpepper": _salt_pepper,
    "histeq": _histeq,
    "gray": _gray,
}
"""Offline methods by config name; each maps one uint8 frame (H x W or H x W x 3 BGR) and a
random generator to a new frame of the same shape and dtype."""

OFFLINE_LABELS: dict[str, str] = {
    "flip": "horizontal flip",
    "blur": "Gaussian blur 3x3",
    "bright50": "brightness +50",
    "bright20": "brightness +20",
    "contrast2": "contrast x2",
    "contrast17": "contrast x1.7, +50",
    "rot8": "rotate +8°",
    "rot-8": "rotate -8°",
    "saltpepper": "salt & pepper 1%",
    "histeq": "histogram equalisation",
    "gray": "grayscale",
}
"""What each method does, in a few words, for figures and listings."""

DEFAULT_OFFLINE: list[str] = ["flip", "blur", "bright50", "bright20", "contrast2",
                              "contrast17", "rot8", "rot-8", "saltpepper"]
"""The nine methods of thesis 3.2.4 (ten times the training data with the originals)."""


def sequence_seed(seed: int, item_id: str, method: str) -> int:
    """The seed of one augmented copy: the same transform whenever it is redone (augment
    writes the clip, extract redoes it on the clip's neutral onset for its baseline)."""
    from ..core.config import params_hash

    return int(params_hash([seed, item_id, method]), 16) % 2**31


def offline_method(name: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The registered method ``name``; a ConfigError names the choices otherwise."""
    try:
        return OFFLINE_METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation method {name!r}",
                          hint=f"Use one of: {', '.join(OFFLINE_METHODS)}.") from None


def augment_sequence(frames: Iterable[np.ndarray], method: str,
                     seed: int) -> Iterator[np.ndarray]:
    """Apply offline ``method`` to every frame of a sequence, lazily, the same way each time.

    Every frame gets a fresh generator seeded with ``seed``, so a random method draws the
    same thing for all frames: salt-and-pepper hits the same positions throughout. The
    thesis asks for one transform per sequence (3.2.2); noise redrawn per frame would also
    flicker, and a temporal model would see that flicker as motion that is not there.
    The method name is checked at once, not at the first frame.
    """
    transform = offline_method(method)

    def transformed() -> Iterator[np.ndarray]:
        for index, frame in enumerate(frames):
            _check_frame(frame, index)
            yield transform(frame, np.random.default_rng(seed))

    return transformed()


def _check_frame(frame: np.ndarray, index: int) -> None:
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3
                                                           and frame.shape[2] == 3)):
        raise ItemError(f"frame {index} is {frame.dtype} with shape {frame.shape}, offline "
                        "augmentation takes uint8 frames of shape HxW or HxWx3",
                        hint="Re-run the track stage to rewrite the clip.")


# OpenCV border modes and the ImageProjectiveTransformV3 fill modes that match them.
_CV2_BORDERS = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT,
                "constant": cv2.BORDER_CONSTANT}
_TF_FILL_MODES = {"nearest": "NEAREST", "reflect": "REFLECT", "constant": "CONSTANT"}
_N_UNIFORMS = 8  # random numbers behind one parameter set, see OnlineAugment.from_uniforms


@dataclass(frozen=True)
class OnlineAugment:
    """Random affine + flip + brightness, one draw per sequence (thesis 3.2.5).

    The defaults are the C3D ``ImageDataGenerator`` arguments of thesis 3.2.5 and keep Keras's
    meanings: rotation uniform in +-10 degrees; zoom factors for x and y drawn separately in
    [0.9, 1.1], where below 1 enlarges the face; shifts up to 10 % of the width and height;
    shear up to 0.15 *degrees* (Keras reads ``shear_range`` in degrees, so the thesis's shear
    moves a 160-pixel frame's edge by about 0.2 pixel); a flip with probability 1/2;
    brightness factor in [0.4, 1.5]; ``fill_mode`` "nearest" repeats the edge pixels.
    """

    rotation_range: float = 10.0
    zoom_range: float = 0.1
    width_shift_range: float = 0.1
    height_shift_range: float = 0.1
    shear_range: float = 0.15
    horizontal_flip: bool = True
    brightness_range: tuple[float, float] = (0.4, 1.5)
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("rotation_range", "zoom_range", "width_shift_range",
                     "height_shift_range", "shear_range"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is {getattr(self, name)}, it must be >= 0",
                                  hint="Give the half-width of the range.")
        if self.zoom_range >= 1:
            raise ConfigError(f"zoom_range is {self.zoom_range}, it must be below 1",
                              hint="Zoom factors are drawn in [1 - zoom_range, 1 + zoom_range].")
        low, high = self.brightness_range
        if not 0 <= low <= high:
            raise ConfigError(f"brightness_range is {self.brightness_range}",
                              hint="Give [low, high] with 0 <= low <= high, e.g. [0.4, 1.5].")
        if self.fill_mode not in _CV2_BORDERS:
            raise ConfigError(f"unknown fill_mode {self.fill_mode!r}",
                              hint=f"Use one of: {', '.join(_CV2_BORDERS)}.")

    def from_uniforms(self, u: Sequence[Any]) -> dict[str, Any]:
        """Parameters from eight numbers uniform in [0, 1): floats, or TensorFlow scalars.

        NumPy and TensorFlow draw their uniforms differently but share this mapping.
        """
        low, high = self.brightness_range
        return {
            "rotation": (2 * u[0] - 1) * self.rotation_range,
            "zoom_x": 1 + (2 * u[1] - 1) * self.zoom_range,
            "zoom_y": 1 + (2 * u[2] - 1) * self.zoom_range,
            "shift_x": (2 * u[3] - 1) * self.width_shift_range,
            "shift_y": (2 * u[4] - 1) * self.height_shift_range,
            "shear": (2 * u[5] - 1) * self.shear_range,
            "flip": (u[6] < 0.5) if self.horizontal_flip else False,
            "brightness": low + (high - low) * u[7],
        }

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """One parameter set for a whole sequence: angles in degrees, shifts as fractions."""
        params = self.from_uniforms(rng.random(_N_UNIFORMS).tolist())
        return {key: bool(value) if key == "flip" else float(value)
                for key, value in params.items()}

    def apply_numpy(self, frames: np.ndarray, params: dict[str, Any],
                    max_value: float = 255.0) -> np.ndarray:
        """Transform every frame of ``frames`` (T, H, W[, C]) with the same ``params``.

        Order as in Keras: warp (bilinear, border by ``fill_mode``), flip, then brightness
        clipped to [0, 255] for uint8 or [0, ``max_value``] for float clips.
        """
        frames = np.asarray(frames)
        height, width = frames.shape[1:3]
        matrix = affine_matrix(params, height, width)
        work = frames if frames.dtype == np.uint8 else frames.astype(np.float32)
        warped = np.stack([
            cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=_CV2_BORDERS[self.fill_mode], borderValue=0)
            for frame in work
        ]).reshape(frames.shape)
        if params["flip"]:
            warped = warped[:, :, ::-1]
        if frames.dtype == np.uint8:
            bright = np.rint(warped * np.float32(params["brightness"]))
            return np.clip(bright, 0, 255).astype(np.uint8)
        bright = warped * np.float32(params["brightness"])
        return np.clip(bright, 0, max_value).astype(frames.dtype)

    def tf_augment_sequence(self, clip, seed, max_value: float = 255.0):
        """Draw one parameter set from ``seed`` and apply it to every frame of ``clip``.

        ``clip`` is (T, H, W, C) with values in [0, ``max_value``]; ``seed`` a shape-[2]
        integer tensor (e.g. ``tf.stack([epoch, index])`` inside ``Dataset.map``). Stateless
        ops make the result a function of the seed alone, in graph mode as well as eagerly.
        Returns float32.
        """
        import tensorflow as tf

        uniforms = tf.unstack(tf.random.stateless_uniform([_N_UNIFORMS], seed=seed))
        return tf_apply_params(clip, self.from_uniforms(uniforms), self.fill_mode, max_value)


def _sampling_entries(params: dict[str, Any], height: Any, width: Any, cos: Callable,
                      sin: Callable) -> tuple:
    """Entries (a, b, c, d, e, f) of the map from an output pixel to the input pixel it samples.

    ``x_in = a x + b y + c, y_in = d x + e y + f`` with x the column and y the row. It is
    Keras's ``apply_affine_transform`` chain (rotation, shift, shear, zoom about the centre),
    so a parameter set gives the image Keras would give; in forward terms a positive
    rotation turns the face counter-clockwise on screen (as ``cv2.getRotationMatrix2D``),
    zoom below 1 enlarges it and a positive shift moves it right or down. Plain arithmetic,
    so floats and TensorFlow scalars both work.
    """
    theta = params["rotation"] * (math.pi / 180)
    shear = params["shear"] * (math.pi / 180)
    cos_t, sin_t = cos(theta), sin(theta)
    a, d = cos_t * params["zoom_x"], sin_t * params["zoom_x"]
    b, e = -sin(theta + shear) * params["zoom_y"], cos(theta + shear) * params["zoom_y"]
    shift_x, shift_y = -params["shift_x"] * width, -params["shift_y"] * height
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    c = centre_x + cos_t * shift_x - sin_t * shift_y - (a * centre_x + b * centre_y)
    f = centre_y + sin_t * shift_x + cos_t * shift_y - (d * centre_x + e * centre_y)
    return a, b, c, d, e, f


def _invert_affine(entries: tuple) -> tuple:
    """Entries of the inverse of an invertible affine map given as (a, b, c, d, e, f)."""
    a, b, c, d, e, f = entries
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)


def affine_matrix(params: dict[str, Any], height: int, width: int) -> np.ndarray:
    """2x3 forward matrix (input pixel -> output pixel) of ``params``, as ``cv2.warpAffine``
    takes it; the inverse of the sampling map described in ``_sampling_entries``."""
    sampling = _sampling_entries(params, height, width, math.cos, math.sin)
    return np.array(_invert_affine(sampling), dtype=np.float64).reshape(2, 3)


def tf_projective_transform(params: dict[str, Any], height, width):
    """The [1, 8] ``ImageProjectiveTransformV3`` vector for ``params``.

    That op maps each output pixel to the input pixel it samples, the inverse of
    ``affine_matrix``: the sampling entries, padded with the two zero projective terms.
    """
    import tensorflow as tf

    values = {key: tf.cast(params[key], tf.float32) for key in params if key != "flip"}
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    sampling = _sampling_entries(values, height, width, tf.cos, tf.sin)
    return tf.reshape(tf.stack([*sampling, 0.0, 0.0]), [1, 8])


def tf_apply_params(clip, params: dict[str, Any], fill_mode: str = "nearest",
                    max_value: float = 255.0):
    """TensorFlow twin of ``OnlineAugment.apply_numpy`` for a float (T, H, W, C) clip.

    ``params`` holds floats (e.g. from ``sample_params``) or TensorFlow scalars.
    """
    import tensorflow as tf

    clip = tf.cast(tf.convert_to_tensor(clip), tf.float32)
    size = tf.shape(clip)[1:3]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=clip, transforms=tf_projective_transform(params, size[0], size[1]),
        output_shape=size, fill_value=0.0, interpolation="BILINEAR",
        fill_mode=_TF_FILL_MODES[fill_mode])
    warped = tf.where(tf.cast(params["flip"], tf.bool), tf.reverse(warped, axis=[2]), warped)
    bright = tf.clip_by_value(warped * tf.cast(params["brightness"], tf.float32), 0.0,
                              max_value)
    return tf.ensure_shape(bright, clip.shape)


def plot_augment_preview(frames: list[np.ndarray], methods: list[str], path: str | Path,
                         seed: int = 0, online: OnlineAugment | None = OnlineAugment(),
                         ) -> Path:
    """Grid like thesis Figure 3.8: the original, each offline method, one online draw.

    Columns are the given frames of one clip (BGR or grey uint8, same shape); every row
    applies its transform to all of them, as the sequence would be. ``online=None`` leaves
    the online row out.
    """
    from fercli.reporting.plots import new_figure, save_figure

    if not frames:
        raise ValueError("no frames to preview")
    rows: list[tuple[str, list[np.ndarray]]] = [("original", list(frames))]
    rows += [(f"{name}\n{OFFLINE_LABELS[name]}", list(augment_sequence(frames, name, seed)))
             for name in methods]
    if online is not None:
        params = online.sample_params(np.random.default_rng(seed))
        rows.append((f"online\n{_describe(params)}",
                     list(online.apply_numpy(np.stack(frames), params))))
    figure = new_figure(1.2 + 1.25 * len(frames), 1.3 * len(rows))
    grid = figure.subplots(len(rows), len(frames), squeeze=False)
    for (label, images), axes_row in zip(rows, grid):
        for image, axes in zip(images, axes_row):
            if image.ndim == 2:
                axes.imshow(image, cmap="gray", vmin=0, vmax=255)
            else:
                axes.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            axes.set_xticks([])
            axes.set_yticks([])
        axes_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    figure.suptitle("Augmentation preview (one transform per sequence)", fontsize="medium")
    return save_figure(figure, path)


def _describe(params: dict[str, Any]) -> str:
    """Short summary of an online parameter set for a figure label."""
    text = (f"rot {params['rotation']:+.1f}°, zoom {params['zoom_x']:.2f}/"
            f"{params['zoom_y']:.2f}\nshift {params['shift_x']:+.2f}/{params['shift_y']:+.2f}, "
            f"bright x{params['brightness']:.2f}")
    return text + (", flip" if params["flip"] else "")
