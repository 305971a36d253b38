"""The torch renderer of the synthetic world: a batch of parameter vectors to images, vectorised over faces.

Coordinates: the image spans [-1, 1] in x (left to right) and y (top to
bottom). Features are placed in *head space* (u, v), which is image space
rotated by ``roll`` about a pivot below the face and shifted by a small
per-image translation; yaw and pitch move and foreshorten the features inside
the face outline. Each feature is painted only inside the band of rows and
columns it can reach, and composited with ``lerp_`` in place.

:func:`render_faces` is the entry point; the parameters it takes are those of
:mod:`frx_plugin.synthetic.parameters`, in their units. A face renders the same pixels in whatever
batch or chunk it comes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = ["pixel_coordinates", "render_faces"]


def _sin_cos_degrees(degrees: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of angles in degrees, by polynomials (for |angle| <= 90).

    Plain multiply-adds give bit-identical results wherever an element sits in a
    tensor, which vectorised transcendental kernels do not promise.
    """
    x = degrees.clamp(-90.0, 90.0) * (math.pi / 180.0)
    x2 = x * x
    sin = x * (1 - x2 / 6 * (1 - x2 / 20 * (1 - x2 / 42 * (1 - x2 / 72 * (1 - x2 / 110)))))
    cos = 1 - x2 / 2 * (1 - x2 / 12 * (1 - x2 / 30 * (1 - x2 / 56 * (1 - x2 / 90 * (1 - x2 / 132)))))
    return sin, cos


# --------------------------------------------------------------------------- #
# Colours
# --------------------------------------------------------------------------- #

_SKIN_LIGHT = (0.98, 0.85, 0.74)
_SKIN_DARK = (0.36, 0.23, 0.15)
_HAIR = ((0.09, 0.07, 0.06), (0.30, 0.18, 0.10), (0.58, 0.40, 0.22), (0.93, 0.80, 0.48), (0.72, 0.27, 0.10))
_GREY_HAIR = (0.80, 0.80, 0.78)
_IRIS = ((0.38, 0.22, 0.08), (0.22, 0.48, 0.86), (0.25, 0.58, 0.28), (0.58, 0.62, 0.66))
_BACKGROUND = ((0.46, 0.53, 0.62), (0.50, 0.66, 0.48), (0.85, 0.79, 0.66), (0.70, 0.60, 0.78))
_CLOTHING = ((0.16, 0.22, 0.45), (0.50, 0.13, 0.18), (0.42, 0.45, 0.20), (0.45, 0.45, 0.47), (0.12, 0.47, 0.48), (0.92, 0.92, 0.90))
_EYE_WHITE = (0.97, 0.96, 0.93)
_LASH = (0.12, 0.08, 0.07)
_PUPIL = (0.03, 0.03, 0.04)
_MOUTH_INSIDE = (0.33, 0.06, 0.08)
_TEETH = (0.98, 0.97, 0.92)
_LENS = (0.82, 0.91, 1.00)
_FRAME = (0.07, 0.07, 0.09)

# face outline per face_shape: half-width, half-height, squareness (0: ellipse; see _paint_face)
_FACE_HALF_WIDTH = (0.48, 0.56, 0.52)
_FACE_HALF_HEIGHT = (0.66, 0.59, 0.62)
_FACE_SQUARE = (0.0, 0.0, 0.6)

_PIVOT_X, _PIVOT_Y = 0.0, 0.25  # roll pivots about the neck


def _table(rows: Sequence) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- #
# Layout
# --------------------------------------------------------------------------- #


class _Layout:
    """Per-face quantities for a batch of faces, packed so that a chunk or a subset is one slice.

    ``layout.name`` is a per-face scalar as (B, 1, 1) or a colour as (B, 3, 1, 1).
    """

    def __init__(self, scalars: torch.Tensor, colours: torch.Tensor, scalar_names: dict[str, int], colour_names: dict[str, int]):
        self._scalars, self._colours = scalars, colours  # (B, K), (B, 3, C)
        self._scalar_names, self._colour_names = scalar_names, colour_names

    @classmethod
    def pack(cls, scalars: Mapping[str, torch.Tensor], colours: Mapping[str, torch.Tensor]) -> _Layout:
        n = next(iter(scalars.values())).shape[0]
        packed = torch.stack([t.reshape(n).to(torch.float32) for t in scalars.values()], 1)
        packed_colours = torch.stack([t.reshape(n, 3).to(torch.float32) for t in colours.values()], 2)
        return cls(packed, packed_colours, {k: i for i, k in enumerate(scalars)}, {k: i for i, k in enumerate(colours)})

    def __len__(self) -> int:
        return self._scalars.shape[0]

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in self._scalar_names:
            return self._scalars[:, self._scalar_names[name], None, None]
        if name in self._colour_names:
            return self._colours[:, :, self._colour_names[name], None, None]
        raise AttributeError(name)

    def take(self, index) -> _Layout:
        """The faces at ``index`` (a slice or an index tensor)."""
        return _Layout(self._scalars[index], self._colours[index], self._scalar_names, self._colour_names)


def _layout(p: Mapping[str, torch.Tensor]) -> _Layout:
    """Place every face: geometry in head space, colours, pose. Vectorised over all faces."""
    f32 = lambda name: p[name].to(torch.float32).reshape(-1)  # noqa: E731
    n = p["age"].shape[0]
    shape = p["face_shape"].long().clamp(0, 2)
    sin_yaw, cos_yaw = _sin_cos_degrees(f32("yaw"))
    sin_pitch, cos_pitch = _sin_cos_degrees(f32("pitch"))
    sin_roll, cos_roll = _sin_cos_degrees(f32("roll"))
    age = f32("age")
    greying = ((age - 45.0) / 40.0).clamp(0.0, 0.9).view(-1, 1)
    tone = ((f32("skin_tone") - 1.0) / 5.0).clamp(-0.2, 1.2).view(-1, 1)
    hair = torch.lerp(_table(_HAIR)[p["hair_colour"].long()], _table(_GREY_HAIR).expand(n, 3), greying)

    s: dict[str, torch.Tensor] = {}
    s["sin_roll"], s["cos_roll"] = sin_roll, cos_roll
    s["shift_x"], s["shift_y"] = f32("translate_x") + _PIVOT_X, f32("translate_y") + _PIVOT_Y
    s["sin_yaw"] = sin_yaw
    s["light"] = f32("illumination").clamp(-150, 150) / 60.0
    s["wrinkles"] = ((age - 25.0) / 45.0).clamp(0.0, 1.3)
    s["smile"] = f32("smile")
    s["glasses"] = f32("glasses")
    s["noise_texture"] = f32("noise_texture")  # exact: small integers
    s["noise"] = f32("noise").clamp(min=0)
    # face outline
    s["face_a"] = _table(_FACE_HALF_WIDTH)[shape] * (0.93 + 0.07 * cos_yaw)
    s["face_b"] = _table(_FACE_HALF_HEIGHT)[shape]
    s["squareness"] = _table(_FACE_SQUARE)[shape]
    s["jaw"] = f32("jaw_width").clamp(0.3, 1.4)
    s["face_x"] = 0.05 * sin_yaw
    s["face_y"] = torch.zeros_like(sin_yaw)
    # features move with yaw and pitch; the far eye is foreshortened
    s["feature_x"] = s["face_x"] + 0.28 * sin_yaw
    s["eye_y"] = -0.10 - 0.22 * sin_pitch
    s["eye_half_spacing"] = f32("eye_spacing").clamp(0.05, 0.6) * (1.0 - 0.12 * sin_yaw.abs())
    s["eye_half_width"] = f32("eye_size").clamp(0.02, 0.3)
    s["eye_width_left"] = s["eye_half_width"] * (1.0 - 0.45 * (-sin_yaw).clamp(min=0))
    s["eye_width_right"] = s["eye_half_width"] * (1.0 - 0.45 * sin_yaw.clamp(min=0))
    s["eye_left"] = s["feature_x"] - s["eye_half_spacing"]
    s["eye_right"] = s["feature_x"] + s["eye_half_spacing"]
    s["eye_half_height"] = s["eye_half_width"] * 0.55 * f32("eye_openness").clamp(0.05, 1.6) * (0.85 + 0.15 * cos_pitch)
    s["iris_shift"] = 0.03 * sin_yaw
    s["nose"] = f32("nose_length").clamp(0.03, 0.35) * 2.0 * cos_pitch
    s["nose_x"] = s["feature_x"] + 0.06 * sin_yaw
    s["mouth_y"] = s["eye_y"] + s["nose"] + 0.13 * cos_pitch
    s["mouth_half"] = f32("mouth_width").clamp(0.04, 0.4) * (1.0 - 0.15 * sin_yaw.abs())
    s["mouth_x"] = s["feature_x"] + 0.02 * sin_yaw
    s["brow_y"] = s["eye_y"] - s["eye_half_width"] * 0.55 - 0.085
    # hair: from above the scalp down to the ears (cropped) or the shoulders (long)
    hair_length = f32("hair_length").clamp(0, 1)
    hair_top = s["face_y"] - s["face_b"] - 0.15
    hair_bottom = s["face_y"] - 0.10 + 0.85 * hair_length
    s["hair_x"] = s["face_x"] - 0.05 * sin_yaw
    s["hair_y"], s["hair_b"] = (hair_top + hair_bottom) / 2, (hair_bottom - hair_top) / 2
    s["hair_a"] = s["face_a"] * 1.16 + 0.08 * hair_length
    s["cap_x"], s["cap_y"] = s["face_x"] - 0.02 * sin_yaw, s["face_y"] - s["face_b"] * 0.90
    s["cap_a"], s["cap_b"] = s["face_a"] * 1.07, s["face_b"] * 0.33
    s["ear_y"] = s["eye_y"] + 0.10
    s["ear_left"] = s["face_x"] - s["face_a"] * 0.97 - 0.12 * sin_yaw
    s["ear_right"] = s["face_x"] + s["face_a"] * 0.97 - 0.12 * sin_yaw
    s["rim_a_left"] = s["eye_width_left"] * 1.45 + 0.03
    s["rim_a_right"] = s["eye_width_right"] * 1.45 + 0.03
    s["rim_b"] = s["eye_half_width"] * 0.75 + 0.06
    s["fold_top"] = s["eye_y"] + s["nose"] - 0.02
    s["fold_bottom"] = s["mouth_y"] + 0.07

    skin = torch.lerp(_table(_SKIN_LIGHT).expand(n, 3), _table(_SKIN_DARK).expand(n, 3), tone).clamp(0, 1)
    colours = {
        "skin": skin,
        "hair": hair,
        "brow": hair * 0.55 + 0.03,
        "lip": torch.lerp(skin, _table((0.70, 0.22, 0.26)).expand(n, 3), 0.70),
        "iris": _table(_IRIS)[p["iris_colour"].long()],
        "background": _table(_BACKGROUND)[p["background"].long()],
        "clothing": _table(_CLOTHING)[p["clothing"].long()],
    }
    return _Layout.pack(s, colours)


def _boxes(L: _Layout) -> dict[str, tuple]:
    """Head-space boxes (centre x, centre y, half width, half height) each feature can cover."""
    zero = torch.zeros_like(L.face_x)
    reach = (L.feature_x - L.face_x).abs()
    return {
        "shirt": (L.face_x * 0.5, zero + 1.28, zero + 0.98, zero + 0.48),
        "neck": (L.face_x * 0.5, L.face_y + 0.62, L.face_a * 0.42, zero + 0.36),
        "hair": (L.hair_x, L.hair_y, L.hair_a, L.hair_b),
        "ears": (L.face_x - 0.12 * L.sin_yaw, L.ear_y, L.face_a + 0.075, zero + 0.12),
        "face": (L.face_x, L.face_y, L.face_a * L.jaw.clamp(min=1.0), L.face_b),
        "forehead": (L.feature_x, L.eye_y - 0.23, zero + 0.30, zero + 0.06),
        "cap": (L.cap_x, L.cap_y, L.cap_a, L.cap_b),
        "brows": (L.feature_x, L.brow_y, L.eye_half_spacing + L.eye_half_width * 1.3, zero + 0.034),
        "eyes": (L.feature_x, L.eye_y, L.eye_half_spacing + L.eye_half_width + 0.02, L.eye_half_height + 0.015),
        "nose": (L.nose_x, L.eye_y + L.nose * 0.55, zero + 0.10, L.nose * 0.55 + 0.04),
        "folds": (L.feature_x, (L.fold_top + L.fold_bottom) / 2, L.mouth_half + 0.12, (L.fold_bottom - L.fold_top) / 2 + 0.02),
        "mouth": (L.mouth_x, L.mouth_y + 0.04, L.mouth_half + 0.04, zero + 0.09),
        "glasses": (L.face_x + 0.5 * (L.feature_x - L.face_x), L.eye_y, L.face_a + 0.02 + reach, L.rim_b + 0.02),
    }


def _image_boxes(L: _Layout, size: int) -> tuple[list[str], torch.Tensor]:
    """Image-space bounding boxes (B, F, 4: x0, x1, y0, y1) of every feature, with a 2-pixel margin."""
    boxes = _boxes(L)
    cx, cy, hx, hy = (torch.cat([box[i].reshape(-1, 1) for box in boxes.values()], 1) for i in range(4))
    s, c = L.sin_roll.reshape(-1, 1), L.cos_roll.reshape(-1, 1)
    px, py = cx - _PIVOT_X, cy - _PIVOT_Y
    x = L.shift_x.reshape(-1, 1) + c * px - s * py
    y = L.shift_y.reshape(-1, 1) + s * px + c * py
    margin = 4.0 / size
    half_x = c.abs() * hx + s.abs() * hy + margin
    half_y = s.abs() * hx + c.abs() * hy + margin
    return list(boxes), torch.stack([x - half_x, x + half_x, y - half_y, y + half_y], 2)


def _minimum(a, b) -> torch.Tensor:
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _between(t: torch.Tensor, low, high, sharpness) -> torch.Tensor:
    """Soft indicator of low < t < high (ramps ``1/sharpness`` wide)."""
    return ((t - low) * sharpness + 0.5).clamp_(0, 1).mul_(((high - t) * sharpness + 0.5).clamp_(0, 1))


def _shading(x: torch.Tensor, centre, half_width, light) -> torch.Tensor:
    """Horizontal light profile (B, 1, 1, w) across a face: key light plus fall-off to the sides."""
    t = (x - centre) * (1.0 / half_width)
    return ((t * light * 0.30 + 1.0) - t * t * 0.15).unsqueeze(1)


class _Band:
    """A rectangle of the image with head-space coordinates for the faces painted in it.

    Head space is image space rotated by the roll about the pivot and shifted:
    u = px + c (x - sx) + s (y - sy), v = py - s (x - sx) + c (y - sy). Both are
    kept as a column part (B, 1, w) plus a row part (B, h, 1), so an offset and
    scaled coordinate costs one broadcast add over the band.
    """

    def __init__(self, region: torch.Tensor, x: torch.Tensor, y: torch.Tensor, L: _Layout, size: int):
        self.region, self.x, self.L, self.size = region, x, L, size
        self.pixel = 2.0 / size
        dx, dy = x - L.shift_x, y - L.shift_y
        s, c = L.sin_roll, L.cos_roll
        self._ux, self._uy = dx * c + _PIVOT_X, dy * s
        self._vx, self._vy = _PIVOT_Y - dx * s, dy * c

    def du(self, centre, scale=1.0) -> torch.Tensor:
        """(u - centre) / scale over the band, (B, h, w)."""
        inverse = 1.0 / scale
        return (self._ux - centre).mul_(inverse) + self._uy * inverse

    def dv(self, centre, scale=1.0) -> torch.Tensor:
        """(v - centre) / scale over the band, (B, h, w)."""
        inverse = 1.0 / scale
        return (self._vx - centre).mul_(inverse) + self._vy * inverse

    def coverage(self, d: torch.Tensor, radius) -> torch.Tensor:
        """Anti-aliased inside-ness of a shape whose distance-like ``d`` is 1 on the outline (in place)."""
        k = radius * (self.size / 4.0)  # d's slope at the outline is about 2/radius per unit
        return d.mul_(-k).add_(k + 0.5).clamp_(0, 1)

    def ellipse(self, cx, cy, a, b) -> torch.Tensor:
        """Coverage (B, h, w) of the ellipse centred (cx, cy) with half-axes a, b."""
        du, dv = self.du(cx, a), self.dv(cy, b)
        return self.coverage(du.mul_(du).add_(dv.mul_(dv)), _minimum(a, b))

    def ellipse_pair(self, cx_left, cx_right, cy, a_left, a_right, b) -> torch.Tensor:
        """Two ellipses sharing their vertical centre and half-height (eyes, brows, ears)."""
        left, right, dv = self.du(cx_left, a_left), self.du(cx_right, a_right), self.dv(cy, b)
        d = torch.minimum(left.mul_(left), right.mul_(right)).add_(dv.mul_(dv))
        return self.coverage(d, _minimum(_minimum(a_left, a_right), b))

    def paint(self, colour: torch.Tensor, alpha: torch.Tensor) -> None:
        """Composite ``colour`` ((B,3,1,1) or (B,3,1,w)) over the band with coverage alpha (B,h,w)."""
        self.region.lerp_(colour, alpha.unsqueeze(1))


# Painters, in drawing order. Each paints one feature for the faces of a band.


def _paint_shirt(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse(L.face_x * 0.5, 1.28, 0.98, 0.48)
    band.paint(L.clothing * _shading(band.x, L.face_x, 1.0, L.light), alpha)


def _paint_neck(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse(L.face_x * 0.5, L.face_y + 0.62, L.face_a * 0.42, 0.36)
    band.paint(L.skin * 0.80 * _shading(band.x, L.face_x, L.face_a * 0.84, L.light), alpha)


def _paint_hair(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse(L.hair_x, L.hair_y, L.hair_a, L.hair_b)
    band.paint(L.hair * _shading(band.x, L.hair_x, L.hair_a, L.light), alpha)


def _paint_ears(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse_pair(L.ear_left, L.ear_right, L.ear_y, 0.065, 0.065, 0.12)
    band.paint(L.skin * 0.90 * _shading(band.x, L.face_x, L.face_a, L.light), alpha)


def _paint_face(band: _Band, L: _Layout) -> None:
    """An ellipse (oval, round) or a squircle (square), narrowing towards the chin by jaw_width."""
    du, dv = band.du(L.face_x, L.face_a), band.dv(L.face_y, L.face_b)
    du.div_(dv.clamp(0, 1).mul_(L.jaw - 1.0).add_(1.0))  # width factor 1 at the cheeks, jaw_width at the chin
    du, dv = du.mul_(du), dv.mul_(dv)
    # squareness q pushes the corners out: d = du² + dv² - q du² min(dv², 1) (monotone, = 1 on the outline)
    d = (du * L.squareness).mul_(dv.clamp(max=1.0)).sub_(du).sub_(dv).neg_()
    band.paint(L.skin * _shading(band.x, L.face_x, L.face_a, L.light), band.coverage(d, _minimum(L.face_a, L.face_b) * 0.8))


def _paint_forehead(band: _Band, L: _Layout) -> None:
    """Age: three forehead lines (painted before the hairline, which may cover them)."""
    lines = None
    for offset in (0.19, 0.23, 0.27):
        line = band.dv(L.eye_y - offset).abs_().mul_(-1.0 / 0.012).add_(1.0).clamp_(0, 1)
        lines = line if lines is None else lines.add_(line)
    across = band.du(L.feature_x).abs_().mul_(-1.0 / 0.06).add_(0.26 / 0.06).clamp_(0, 1)
    assert lines is not None  # three offsets above
    band.paint(L.skin * 0.62, lines.mul_(across).mul_(L.wrinkles * 0.55))


def _paint_cap(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse(L.cap_x, L.cap_y, L.cap_a, L.cap_b)
    band.paint(L.hair * _shading(band.x, L.cap_x, L.cap_a, L.light), alpha)


def _paint_brows(band: _Band, L: _Layout) -> None:
    alpha = band.ellipse_pair(L.eye_left, L.eye_right, L.brow_y, L.eye_width_left * 1.3, L.eye_width_right * 1.3, 0.034)
    band.paint(L.brow, alpha)


def _paint_eyes(band: _Band, L: _Layout) -> None:
    """Lashes, the white, the iris and the pupil (iris and pupil clipped to the white)."""
    left, right, y = L.eye_left, L.eye_right, L.eye_y
    wl, wr, h = L.eye_width_left, L.eye_width_right, L.eye_half_height
    band.paint(_rgb_constant(_LASH), band.ellipse_pair(left, right, y, wl + 0.015, wr + 0.015, h + 0.013))
    white = band.ellipse_pair(left, right, y, wl, wr, h)
    band.paint(_rgb_constant(_EYE_WHITE), white)
    left, right, iris = left + L.iris_shift, right + L.iris_shift, L.eye_half_width * 0.62
    band.paint(L.iris, band.ellipse_pair(left, right, y, wl * 0.62, wr * 0.62, iris).mul_(white))
    band.paint(_rgb_constant(_PUPIL), band.ellipse_pair(left, right, y, wl * 0.28, wr * 0.28, iris * 0.45).mul_(white))


def _paint_nose(band: _Band, L: _Layout) -> None:
    """A shadowed ridge, the tip and the nostrils."""
    x, top, length = L.nose_x, L.eye_y, L.nose
    band.paint(L.skin * 0.80, band.ellipse(x, top + length * 0.55, 0.038, length * 0.5).mul_(0.45))
    band.paint(L.skin * 0.78, band.ellipse(x + 0.03 * L.sin_yaw, top + length - 0.01, 0.085, 0.040).mul_(0.55))
    nostrils = band.ellipse_pair(x - 0.035, x + 0.035, top + length + 0.008, 0.021, 0.021, 0.014)
    band.paint(_rgb_constant((0.25, 0.12, 0.10)), nostrils.mul_(0.8))


def _paint_folds(band: _Band, L: _Layout) -> None:
    """Age: nasolabial folds from beside the nose to the mouth corners."""
    t = band.dv(L.fold_top, L.fold_bottom - L.fold_top)  # 0 at the top of a fold, 1 at its bottom
    offset = t * (L.mouth_half - 0.07) + 0.10
    distance = band.du(L.feature_x).abs_().sub_(offset).abs_()
    alpha = distance.mul_(-1.0 / 0.014).add_(1.0).clamp_(0, 1).mul_(_between(t, 0.0, 1.0, 8.0))
    band.paint(L.skin * 0.62, alpha.mul_(L.wrinkles * 0.6))


def _paint_lips(band: _Band, L: _Layout) -> None:
    """Neutral mouth: a thin lip line, slightly turned down at the corners."""
    t = band.du(L.mouth_x, L.mouth_half)
    bow = (1.0 - t * t).clamp_(min=0)
    line = band.dv(L.mouth_y).sub_(bow.mul_(0.008)).abs_()
    alpha = line.mul_(-1.0).add_(0.026).mul_(1.0 / band.pixel).add_(0.5).clamp_(0, 1)
    band.paint(L.lip, alpha.mul_(_between(t, -1.0, 1.0, L.mouth_half / band.pixel)))


def _paint_smile(band: _Band, L: _Layout) -> None:
    """Open smile: lips around a dark mouth whose lower edge curves down, with the upper teeth."""
    sharp = 1.0 / band.pixel
    t = band.du(L.mouth_x, L.mouth_half)
    v = band.dv(L.mouth_y)
    bow = (1.0 - t * t).clamp_(min=0)
    upper, lower = bow * 0.015 - 0.005, bow.mul_(0.085)
    across = _between(t, -1.0, 1.0, L.mouth_half * sharp)
    band.paint(L.lip, _between(v, upper - 0.018, lower + 0.022, sharp).mul_(_between(t, -1.08, 1.08, L.mouth_half * sharp)))
    inside = _between(v, upper, lower, sharp).mul_(across)
    band.paint(_rgb_constant(_MOUTH_INSIDE), inside)
    band.paint(_rgb_constant(_TEETH), _between(v, upper, upper + 0.03, sharp).mul_(inside))


def _paint_glasses(band: _Band, L: _Layout) -> None:
    """Tinted lenses, rims, the bridge and the temples."""
    left, right, y = L.eye_left, L.eye_right, L.eye_y
    rim_left, rim_right, rim_b = L.rim_a_left, L.rim_a_right, L.rim_b
    du_left, du_right, dv = band.du(left, rim_left), band.du(right, rim_right), band.dv(y, rim_b)
    d = torch.minimum(du_left.mul_(du_left), du_right.mul_(du_right)).add_(dv.mul_(dv))
    radius = d.sqrt()
    band.paint(_rgb_constant(_LENS), band.coverage(d, rim_b).mul_(0.30))
    sharp = 1.0 / band.pixel
    frame = radius.sub_(1.0).abs_().mul_(-1.0).add_(0.11).mul_(rim_b * sharp).add_(0.5).clamp_(0, 1)
    u = band.du(0.0)
    bar = _between(band.dv(y), -0.035, -0.012, sharp)
    bridge = _between(u, left + rim_left * 0.98, right - rim_right * 0.98, sharp)
    temples = _between(u, L.face_x - L.face_a, left - rim_left, sharp).add_(_between(u, right + rim_right, L.face_x + L.face_a, sharp))
    band.paint(_rgb_constant(_FRAME), torch.maximum(frame, bridge.add_(temples).mul_(bar)))


def _rgb_constant(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)


# (name, painter, which faces: None for all, else a layout scalar that must be > 0.5 / < 0.5)
_FEATURES = (
    ("shirt", _paint_shirt, None),
    ("neck", _paint_neck, None),
    ("hair", _paint_hair, None),
    ("ears", _paint_ears, None),
    ("face", _paint_face, None),
    ("forehead", _paint_forehead, None),
    ("cap", _paint_cap, None),
    ("brows", _paint_brows, None),
    ("eyes", _paint_eyes, None),
    ("nose", _paint_nose, None),
    ("folds", _paint_folds, None),
    ("mouth", _paint_lips, ("smile", False)),
    ("mouth", _paint_smile, ("smile", True)),
    ("glasses", _paint_glasses, ("glasses", True)),
)


def _pixel_range(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel index range [start, stop) whose centres may fall in [lo, hi] (coordinates in [-1, 1])."""
    start = math.floor((lo + 1.0) * size / 2.0 - 0.5)
    stop = math.ceil((hi + 1.0) * size / 2.0 - 0.5) + 1
    return max(0, start), min(size, stop)


def _render_chunk(L: _Layout, boxes: torch.Tensor, names: list[str], image: torch.Tensor, coords: torch.Tensor,
                  noise_bank: torch.Tensor, use_bands: bool = True) -> None:
    """Draw one chunk of faces into ``image`` (B, 3, S, S) in place; boxes are their feature boxes (B, F, 4)."""
    size = image.shape[-1]
    image.copy_(L.background * (1.06 - 0.06 * (coords.view(1, 1, -1, 1) + 1.0)))
    extent = torch.stack([boxes[:, :, 0].amin(0), boxes[:, :, 1].amax(0), boxes[:, :, 2].amin(0), boxes[:, :, 3].amax(0)], 1).tolist()
    column = {name: i for i, name in enumerate(names)}
    for name, painter, subset in _FEATURES:
        faces, sub = None, L
        x0, x1, y0, y1 = extent[column[name]]
        if subset is not None:
            chosen = getattr(L, subset[0]).reshape(-1) > 0.5
            faces = (chosen if subset[1] else ~chosen).nonzero().reshape(-1)
            if faces.numel() == 0:
                continue
            sub = L.take(faces)
            b = boxes[faces, column[name]]
            x0, x1, y0, y1 = torch.stack([b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()]).tolist()
        r0, r1 = _pixel_range(y0, y1, size) if use_bands else (0, size)
        c0, c1 = _pixel_range(x0, x1, size) if use_bands else (0, size)
        if r0 >= r1 or c0 >= c1:
            continue
        region = image[:, :, r0:r1, c0:c1]
        target = region if faces is None else region[faces]
        painter(_Band(target, coords[c0:c1].view(1, 1, -1), coords[r0:r1].view(1, -1, 1), sub, size), sub)
        if faces is not None:
            region[faces] = target
    # sensor noise from the world's noise bank, then clip
    texture = L.noise_texture.reshape(-1).long() % noise_bank.shape[0]
    image.add_(noise_bank.index_select(0, texture).mul_(L.noise.unsqueeze(1)))
    image.clamp_(0, 1)



def pixel_coordinates(size: int) -> torch.Tensor:
    """Image-space coordinates (size,) of the pixel centres along one axis, in [-1, 1]."""
    return (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0


def render_faces(params: Mapping[str, torch.Tensor], out: torch.Tensor, coords: torch.Tensor, noise_bank: torch.Tensor,
                 chunk_size: int, use_bands: bool = True) -> torch.Tensor:
    """Render the faces of ``params`` into ``out`` (B, 3, S, S) in place, ``chunk_size`` faces at a time; returns ``out``.

    ``coords``: :func:`pixel_coordinates` of S; ``noise_bank``: (K, 3, S, S) standard-normal textures,
    of which each face adds texture ``noise_texture`` scaled by its ``noise``. ``use_bands=False``
    paints every feature over the whole image (the reference the bands must agree with).
    """
    n_faces, size = out.shape[0], out.shape[-1]
    with torch.no_grad():
        layout = _layout(params)
        names, boxes = _image_boxes(layout, size)
        for start in range(0, n_faces, chunk_size):
            chunk = slice(start, min(start + chunk_size, n_faces))
            _render_chunk(layout.take(chunk), boxes[chunk], names, out[chunk], coords, noise_bank, use_bands=use_bands)
    return out
