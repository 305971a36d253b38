"""The parameters of the synthetic face world: what is sampled per identity and per image, how, in which units.

Identity parameters are fixed per identity (continuous ones carry a small per-image jitter) and
hashed on the absolute identity id (stream :data:`IDENTITY_STREAM`); nuisance parameters vary per
image and are hashed on (identity id, image number) (stream :data:`IMAGE_STREAM`). Each parameter
draws from a fixed counter ``slot`` of its stream, so adding one never reshuffles the others.
:data:`SYNTHETIC_SCHEMA` is the labelled ones; the rest (hair length, translation, clothing, the
noise texture) are internal.

Units of the continuous attributes (labels are these values, float32):

====================  =======================================================
``jaw_width``         chin-level face width / cheek-level face width (ratio)
``eye_spacing``       eye centre to eye centre, fraction of the image width
``eye_size``          width of one eye, fraction of the image width
``nose_length``       bridge to tip, fraction of the image height
``mouth_width``       corner to corner, fraction of the image width
``skin_tone``         Fitzpatrick-like scale, 1 (lightest) .. 6 (darkest)
``age``               years
``yaw``/``pitch``/``roll``  degrees (yaw > 0: turned to the viewer's right;
                      pitch > 0: looking up; roll > 0: top of the head tilted
                      to the viewer's right, i.e. clockwise)
``eye_openness``      eye height relative to a fully open eye (1)
``illumination``      azimuth of the key light in degrees (< 0: from the
                      viewer's left, > 0: from the right)
``noise``             standard deviation of additive pixel noise ([0, 1] scale)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from frx_plugin.attributes import Attribute, AttributeSchema

__all__ = [
    "IDENTITY_STREAM",
    "IMAGE_STREAM",
    "NOISE_BANK_SIZE",
    "NOISE_STREAM",
    "N_IDENTITY_SLOTS",
    "N_IMAGE_SLOTS",
    "PARAMETERS",
    "PARAMETERS_BY_NAME",
    "Parameter",
    "SYNTHETIC_SCHEMA",
]

#: Hash streams (the key after the seed): identity parameters, per-image parameters, the noise textures.
IDENTITY_STREAM = 1
IMAGE_STREAM = 2
NOISE_STREAM = 3


@dataclass(frozen=True)
class Parameter:
    """How one parameter is sampled.

    ``slot`` numbers the hash counter the parameter draws from within its stream
    (identity stream for identity parameters, image stream for per-image ones);
    slots are fixed so adding a parameter never reshuffles the others. Continuous
    parameters are uniform on ``[low, high]``; identity ones add a per-image
    normal jitter of standard deviation ``jitter`` drawn from image-stream slots
    ``jitter_slot`` and ``jitter_slot + 1`` (Box-Muller).
    """

    name: str
    kind: str  # binary | categorical | continuous
    group: str  # identity | nuisance
    slot: int
    low: float = 0.0
    high: float = 1.0
    jitter: float = 0.0
    jitter_slot: int = -1
    classes: tuple[str, ...] | None = None
    probability: float = 0.5  # of class 1, for binary parameters
    description: str = ""
    attribute: bool = True  # False: internal parameter, not labelled

    @property
    def n_classes(self) -> int:
        """How many classes a categorical or binary parameter has (a binary one without class names: 2)."""
        return 2 if self.classes is None else len(self.classes)

    @property
    def population_std(self) -> float:
        return math.sqrt((self.high - self.low) ** 2 / 12.0 + self.jitter**2)


PARAMETERS: tuple[Parameter, ...] = (
    # identity: fixed per identity (hashed on the absolute identity id)
    Parameter("face_shape", "categorical", "identity", 0, classes=("oval", "round", "square"),
              description="outline of the face"),
    Parameter("jaw_width", "continuous", "identity", 1, 0.60, 1.00, 0.005, 0,
              description="chin-level / cheek-level face width (ratio)"),
    Parameter("eye_spacing", "continuous", "identity", 2, 0.19, 0.29, 0.002, 2,
              description="eye centre to eye centre, fraction of the image width"),
    Parameter("eye_size", "continuous", "identity", 3, 0.08, 0.15, 0.001, 4,
              description="width of one eye, fraction of the image width"),
    Parameter("nose_length", "continuous", "identity", 4, 0.10, 0.20, 0.002, 6,
              description="nose bridge to tip, fraction of the image height"),
    Parameter("mouth_width", "continuous", "identity", 5, 0.10, 0.24, 0.002, 8,
              description="mouth corner to corner, fraction of the image width"),
    Parameter("skin_tone", "continuous", "identity", 6, 1.0, 6.0, 0.05, 10,
              description="Fitzpatrick-like scale, 1 (lightest) to 6 (darkest)"),
    Parameter("iris_colour", "categorical", "identity", 7, classes=("brown", "blue", "green", "grey"),
              description="colour of the irises"),
    Parameter("hair_colour", "categorical", "identity", 8,
              classes=("black", "dark_brown", "light_brown", "blond", "red"),
              description="natural hair colour (greys with age)"),
    Parameter("age", "continuous", "identity", 9, 18.0, 80.0, 2.0, 12,
              description="age in years (wrinkles, greying hair)"),
    Parameter("hair_length", "continuous", "identity", 10, 0.0, 1.0, 0.0,
              description="0: cropped, 1: shoulder length", attribute=False),
    # nuisance: per image (hashed on identity id and image number)
    Parameter("yaw", "continuous", "nuisance", 20, -30.0, 30.0,
              description="head yaw in degrees, > 0 turned to the viewer's right"),
    Parameter("pitch", "continuous", "nuisance", 21, -20.0, 20.0,
              description="head pitch in degrees, > 0 looking up"),
    Parameter("roll", "continuous", "nuisance", 22, -15.0, 15.0,
              description="head roll in degrees, > 0 clockwise in the image"),
    Parameter("smile", "binary", "nuisance", 23, probability=0.4, classes=("neutral", "smiling"),
              description="open smile (teeth) or closed neutral mouth"),
    Parameter("eye_openness", "continuous", "nuisance", 24, 0.35, 1.00,
              description="eye height relative to a fully open eye"),
    Parameter("illumination", "continuous", "nuisance", 25, -60.0, 60.0,
              description="key-light azimuth in degrees, < 0 from the viewer's left"),
    Parameter("glasses", "binary", "nuisance", 26, probability=0.3, description="wears glasses"),
    Parameter("background", "categorical", "nuisance", 27, classes=("slate", "green", "beige", "lilac"),
              description="background colour"),
    Parameter("noise", "continuous", "nuisance", 28, 0.0, 0.05,
              description="standard deviation of additive pixel noise"),
    Parameter("translate_x", "continuous", "nuisance", 29, -0.05, 0.05,
              description="horizontal shift, image half-widths", attribute=False),
    Parameter("translate_y", "continuous", "nuisance", 30, -0.05, 0.05,
              description="vertical shift, image half-heights", attribute=False),
    Parameter("clothing", "categorical", "nuisance", 31, classes=("navy", "maroon", "olive", "grey", "teal", "white"),
              description="shirt colour", attribute=False),
    Parameter("noise_texture", "categorical", "nuisance", 32, classes=tuple(str(i) for i in range(16)),
              description="which texture of the world's noise bank", attribute=False),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}
#: How many counters of the identity and the image stream a face draws (slots and jitter slots).
N_IDENTITY_SLOTS = 1 + max(p.slot for p in PARAMETERS if p.group == "identity")
N_IMAGE_SLOTS = 1 + max(
    max(p.slot for p in PARAMETERS if p.group == "nuisance"),
    max(p.jitter_slot + 1 for p in PARAMETERS),
)
#: How many noise textures a world makes per image size (one per class of ``noise_texture``).
NOISE_BANK_SIZE = PARAMETERS_BY_NAME["noise_texture"].n_classes

#: The labelled parameters as attributes: 10 identity and 9 nuisance ones.

SYNTHETIC_SCHEMA = AttributeSchema(
    Attribute(
        name=p.name,
        kind=p.kind,
        classes=p.classes,
        group=p.group,
        description=p.description,
    )
    for p in PARAMETERS
    if p.attribute
)
