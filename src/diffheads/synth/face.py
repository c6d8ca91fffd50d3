"""Cartoon faces with a big measurable mouth, drawn with analytic anti-aliasing, and their 68 landmarks.

Pixel coordinates are continuous: the image spans [0, size] on both axes and pixel (row j, column i)
has its centre at (x, y) = (i + 0.5, j + 0.5), so landmarks scale exactly with the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
MAX_OPENING = 0.25  # interior height of a fully open mouth, as a fraction of the face height
JAW_DROP = 0.45  # how far the chin moves down per pixel of mouth opening
UPPER_SHARE = 0.15  # share of the opening taken by the upper lip rising; the jaw takes the rest
SCLERA = np.array([0.93, 0.92, 0.89])
PUPIL = np.array([0.03, 0.03, 0.04])
HAIR_PALETTE = np.array(
    [
        [0.08, 0.07, 0.06],
        [0.25, 0.15, 0.09],
        [0.45, 0.30, 0.18],
        [0.55, 0.22, 0.10],
        [0.85, 0.72, 0.45],
        [0.62, 0.62, 0.62],
    ]
)
IRIS_PALETTE = np.array(
    [[0.35, 0.20, 0.10], [0.30, 0.50, 0.75], [0.35, 0.55, 0.35], [0.50, 0.55, 0.60], [0.50, 0.40, 0.20]]
)
HAIR_STYLES = ("short", "bob", "long")


@dataclass(frozen=True)
class FaceIdentity:
    """Geometry (fractions of the frame, or of the face axes where noted) and colours (RGB in 0..1) of one face."""

    center: tuple[float, float]  # face centre (x, y) / frame size
    face_axes: tuple[float, float]  # half width, half height / frame size
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    lips: tuple[float, float, float]
    mouth_interior: tuple[float, float, float]
    iris: tuple[float, float, float]
    hair_style: int  # index into HAIR_STYLES
    hair_volume: float  # hair above the skull / face half height
    hairline: float  # height of the forehead hairline above the centre / face half height
    hair_tilt: float  # side-part slope of the hairline
    eye_height: float  # eye line above the centre / face half height
    eye_spacing: float  # eye centre distance from the midline / face half width
    eye_half_width: float  # / face half width
    eye_lids: tuple[float, float]  # upper, lower lid height of an open eye / eye half width
    iris_radius: float  # / eye half width
    brow_gap: float  # / eye half width
    brow_thickness: float  # / eye half width
    brow_arch: float  # / eye half width
    nose_tip: float  # nostril line below the centre / face half height
    nostril_spacing: float  # / face half width
    mouth_height: float  # lip line below the centre / face half height
    mouth_span: float  # neutral mouth width / face width (0.40..0.45)
    lip_thickness: tuple[float, float]  # upper, lower lip / face half height


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB values in 0..1 (last axis)."""
    return np.asarray(rgb) @ LUMA


def _color(rng: np.random.Generator, base: np.ndarray, jitter: float) -> np.ndarray:
    """A palette colour with a little random variation."""
    return np.clip(base + rng.uniform(-jitter, jitter, 3), 0.0, 1.0)


def _sample_colors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Skin, lips, hair and background that stay clearly apart; skin and lips keep luma >= 0.47 / 0.45."""
    while True:
        skin = _color(rng, np.array([0.62, 0.42, 0.30]) + rng.uniform(0.05, 1.0) * np.array([0.36, 0.44, 0.46]), 0.03)
        if 0.47 <= luminance(skin) <= 0.9:
            break
    red = rng.uniform(0.35, 0.6)
    lips = np.clip((1 - red) * skin + red * _color(rng, np.array([0.85, 0.40, 0.45]), 0.05), 0, 1)
    while luminance(lips) < 0.45:
        lips = 0.8 * lips + 0.2
    while True:
        hair = _color(rng, HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))], 0.04)
        if np.linalg.norm(hair - skin) > 0.3:
            break
    while True:
        background = rng.uniform(0.05, 0.95, 3)
        if min(np.linalg.norm(background - other) for other in (skin, hair, lips)) > 0.35:
            break
    interior = np.array([0.18, 0.04, 0.06]) * rng.uniform(0.4, 1.0)
    iris = _color(rng, IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))], 0.05)
    return dict(skin=skin, lips=lips, hair=hair, background=background, mouth_interior=interior, iris=iris)


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    """A random face: shape, colours, hair, eyes, nose and mouth."""
    colors = {k: tuple(float(c) for c in v) for k, v in _sample_colors(rng).items()}
    u = rng.uniform
    return FaceIdentity(
        center=(0.5 + u(-0.02, 0.02), 0.47 + u(-0.01, 0.01)),
        face_axes=(u(0.30, 0.34), u(0.37, 0.41)),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        hair_volume=u(0.03, 0.09),
        hairline=u(0.45, 0.6),
        hair_tilt=u(-0.15, 0.15),
        eye_height=u(0.1, 0.2),
        eye_spacing=u(0.36, 0.44),
        eye_half_width=u(0.17, 0.21),
        eye_lids=(u(0.55, 0.7), u(0.35, 0.45)),
        iris_radius=u(0.45, 0.55),
        brow_gap=u(0.3, 0.5),
        brow_thickness=u(0.25, 0.4),
        brow_arch=u(0.15, 0.35),
        nose_tip=u(0.17, 0.21),
        nostril_spacing=u(0.08, 0.11),
        mouth_height=u(0.42, 0.47),
        mouth_span=u(0.40, 0.45),
        lip_thickness=(u(0.06, 0.08), u(0.08, 0.1)),
        **colors,
    )


def _ellipse(u, v, a, b_top, b_bottom):
    """Signed distance estimate (pixels, negative inside) to an ellipse with different upper/lower half heights."""
    b = np.where(v < 0, b_top, b_bottom)
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(q, 1e-6)
    return (q - 1) / np.maximum(grad, 1.0 / np.maximum(a, b))


def _cover(distance):
    """Area coverage of a pixel from the signed distance of its centre to an edge."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def _span(u, v, half_width, top, bottom):
    """Exact vertical coverage of each pixel by the column span [top(u), bottom(u)] for |u| < half_width."""
    inside = np.clip(np.minimum(v + 0.5, bottom) - np.maximum(v - 0.5, top), 0.0, 1.0)
    return inside * np.clip(0.5 + half_width - np.abs(u), 0.0, 1.0)


def _lens(u, v, half_width, up, down):
    """Coverage of a shape bounded by half-ellipses of heights `up` and `down` over a common chord."""
    s = np.sqrt(1.0 - np.clip(u / half_width, -1.0, 1.0) ** 2)
    return _span(u, v, half_width, -up * s, down * s)


def _paint(image, coverage, color):
    """Composite a colour over the image with the given coverage (in place)."""
    image += coverage[..., None] * (np.asarray(color, np.float32) - image)


def _column(x):
    """Per-frame scalar as a (T, 1, 1) array for broadcasting over the pixel grid."""
    return np.asarray(x, np.float32)[:, None, None]


@dataclass(frozen=True)
class _Geometry:
    """Per-frame pixel geometry of a face (arrays of shape (T, 1, 1) or scalars)."""

    a: float
    b: float
    chin: np.ndarray
    mouth_y: float
    mouth_half: np.ndarray
    inner_half: np.ndarray
    opening: np.ndarray
    eye_x: float
    eye_y: float
    eye_w: float
    lid_up: np.ndarray
    lid_down: np.ndarray
    brow_y: float
    brow_len: float
    nose_y: float
    nostril_x: float


def _geometry(ident: FaceIdentity, size: int, mouth_open, mouth_width, eye_open) -> _Geometry:
    """Pixel sizes of every part for the given expression."""
    a, b = ident.face_axes[0] * size, ident.face_axes[1] * size
    opening = np.clip(mouth_open, 0, 1) * MAX_OPENING * 2 * b
    mouth_half = ident.mouth_span * a * (0.88 + 0.24 * np.clip(mouth_width, 0, 1))
    eye_w = ident.eye_half_width * a
    eye = np.clip(eye_open, 0, 1)
    lid_up, lid_down = ident.eye_lids[0] * eye_w * eye, ident.eye_lids[1] * eye_w * eye
    eye_y = -ident.eye_height * b
    return _Geometry(
        a=a,
        b=b,
        chin=b + JAW_DROP * opening,
        mouth_y=ident.mouth_height * b,
        mouth_half=mouth_half,
        inner_half=0.88 * mouth_half,
        opening=opening,
        eye_x=ident.eye_spacing * a,
        eye_y=eye_y,
        eye_w=eye_w,
        lid_up=lid_up,
        lid_down=lid_down,
        brow_y=eye_y - ident.eye_lids[0] * eye_w - ident.brow_gap * eye_w,
        brow_len=1.25 * eye_w,
        nose_y=ident.nose_tip * b,
        nostril_x=ident.nostril_spacing * a,
    )


def _hair_back(ident: FaceIdentity, u, v, g: _Geometry):
    """Signed distance to the hair behind the head."""
    vol = ident.hair_volume * g.b
    style = HAIR_STYLES[ident.hair_style]
    widen = {"short": 1.07, "bob": 1.15, "long": 1.15}[style]
    skull = _ellipse(u, v + vol, widen * g.a, g.b + vol, g.b + vol)
    if style == "short":
        return np.maximum(skull, v - 0.05 * g.b)
    if style == "bob":
        return np.maximum(skull, v - 0.75 * g.b)
    return np.minimum(skull, np.maximum(np.abs(u) - 1.12 * g.a, -0.2 * g.b - v))


def _draw(ident: FaceIdentity, g: _Geometry, u, v) -> np.ndarray:
    """Paint one batch of frames given face-frame coordinates u, v of every pixel."""
    skin, hair = np.array(ident.skin), np.array(ident.hair)
    image = np.empty(u.shape + (3,), np.float32)
    image[:] = np.asarray(ident.background, np.float32)
    _paint(image, _cover(_hair_back(ident, u, v, g)), hair)
    for side in (-1, 1):
        ear = _ellipse(u - side * 0.98 * g.a, v + 0.05 * g.b, 0.13 * g.a, 0.2 * g.b, 0.2 * g.b)
        _paint(image, _cover(ear), 0.92 * skin)
    face = _ellipse(u, v, g.a, g.b, g.chin)
    shade = 1.0 - 0.12 * np.clip(1.0 + face / g.a, 0, 1) ** 4
    _paint(image, _cover(face), shade[..., None] * skin.astype(np.float32))
    hairline = -ident.hairline * g.b + ident.hair_tilt * u + 0.3 * g.b * (u / g.a) ** 2
    # grown by a pixel so the face's soft edge does not show through as a seam
    _paint(image, _cover(np.maximum(face - 1.0, v - hairline)), hair)
    brow_color = 0.6 * hair + 0.02
    for side in (-1, 1):
        du = u - side * 1.05 * g.eye_x
        arc = g.brow_y - ident.brow_arch * g.eye_w * (1 - np.clip(du / g.brow_len, -1, 1) ** 2)
        half = 0.5 * ident.brow_thickness * g.eye_w
        _paint(image, _span(du, v, g.brow_len, arc - half, arc + half), brow_color)
        du, dv = u - side * g.eye_x, v - g.eye_y
        white = _lens(du, dv, g.eye_w, g.lid_up, g.lid_down)
        _paint(image, white, SCLERA)
        radius = ident.iris_radius * g.eye_w
        _paint(image, white * _cover(np.sqrt(du**2 + dv**2) - radius), ident.iris)
        _paint(image, white * _cover(np.sqrt(du**2 + dv**2) - 0.45 * radius), PUPIL)
        lid = -g.lid_up * np.sqrt(1.0 - np.clip(du / g.eye_w, -1, 1) ** 2)
        _paint(image, _span(du, dv, g.eye_w, lid - 0.12 * g.eye_w, lid + 0.03 * g.eye_w), 0.45 * hair + 0.02)
    _paint(image, _cover(_ellipse(u, v - g.nose_y + 0.04 * g.b, 0.14 * g.a, 0.08 * g.b, 0.06 * g.b)), 0.93 * skin)
    for side in (-1, 1):
        nostril = _ellipse(u - side * g.nostril_x, v - g.nose_y, 0.07 * g.a, 0.035 * g.b, 0.035 * g.b)
        _paint(image, _cover(nostril), 0.78 * skin)
    centre = v - g.mouth_y - (0.5 - UPPER_SHARE) * g.opening
    half_h = 0.5 * g.opening
    t_up, t_down = ident.lip_thickness[0] * g.b, ident.lip_thickness[1] * g.b
    _paint(image, _lens(u, centre, g.mouth_half, half_h + t_up, half_h + t_down), ident.lips)
    _paint(image, _lens(u, centre, g.inner_half, 0.04 * g.b, 0.04 * g.b) * 0.6, 0.8 * np.array(ident.lips))
    _paint(image, _lens(u, centre, g.inner_half, half_h, half_h), ident.mouth_interior)
    return image


def _landmarks(ident: FaceIdentity, g: _Geometry, n: int) -> np.ndarray:
    """The 68 points (T, 68, 2) in face-frame pixel coordinates (u right, v down)."""

    def col(x):
        return np.asarray(x, np.float64).reshape(-1, 1) * np.ones((n, 1))

    pts = np.zeros((n, 68, 2))
    theta = np.linspace(-0.18, np.pi + 0.18, 17)
    pts[:, 0:17, 0] = -g.a * np.cos(theta)
    pts[:, 0:17, 1] = np.where(np.sin(theta) > 0, col(g.chin), g.b) * np.sin(theta)
    for side, first in ((-1, 17), (1, 22)):
        du = np.linspace(-1, 1, 5) * g.brow_len
        pts[:, first : first + 5, 0] = side * 1.05 * g.eye_x + du
        pts[:, first : first + 5, 1] = g.brow_y - ident.brow_arch * g.eye_w * (1 - (du / g.brow_len) ** 2)
    pts[:, 27:31, 0] = 0.0
    pts[:, 27:31, 1] = np.linspace(g.eye_y, g.nose_y - 0.04 * g.b, 4)
    pts[:, 31:36, 0] = np.linspace(-1.6, 1.6, 5) * g.nostril_x
    pts[:, 31:36, 1] = g.nose_y + np.array([0.0, 0.02, 0.03, 0.02, 0.0]) * g.b
    # eye order: corner, two upper, other corner, two lower (running back), left to right in the image
    eu = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
    lid_sign = np.array([0.0, -1, -1, 0, 1, 1])
    arc = np.sqrt(1 - eu**2)
    up, down = col(g.lid_up), col(g.lid_down)
    for side, first in ((-1, 36), (1, 42)):
        pts[:, first : first + 6, 0] = side * g.eye_x + eu * g.eye_w
        pts[:, first : first + 6, 1] = g.eye_y + arc * np.where(lid_sign < 0, -up, down) * np.abs(lid_sign)
    half_h = col(0.5 * g.opening)
    centre = g.mouth_y + (0.5 - UPPER_SHARE) * col(g.opening)
    outer = col(g.mouth_half)
    ou = np.array([-1.0, -0.6, -0.25, 0, 0.25, 0.6, 1.0, 0.6, 0.25, 0, -0.25, -0.6])
    o_sign = np.array([0, -1, -1, -1, -1, -1, 0, 1, 1, 1, 1, 1])
    o_thick = np.where(o_sign < 0, ident.lip_thickness[0] * g.b, ident.lip_thickness[1] * g.b)
    pts[:, 48:60, 0] = ou * outer
    pts[:, 48:60, 1] = centre + o_sign * (half_h + o_thick) * np.sqrt(1 - ou**2)
    iu = np.array([-1.0, -0.5, 0, 0.5, 1.0, 0.5, 0, -0.5])
    i_sign = np.array([0, -1, -1, -1, 0, 1, 1, 1])
    pts[:, 60:68, 0] = iu * 0.88 * outer
    pts[:, 60:68, 1] = centre + i_sign * half_h * np.sqrt(1 - iu**2)
    return pts


def render_faces(
    identity: FaceIdentity,
    size: int,
    mouth_open: np.ndarray,
    mouth_width: np.ndarray,
    eye_open: np.ndarray,
    head: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Render T frames: uint8 (T, size, size, 3) and float32 landmarks (T, 68, 2); head is (T, 3) of (dx, dy, roll)."""
    mouth_open, mouth_width, eye_open = (
        np.asarray(x, np.float32).reshape(-1) for x in (mouth_open, mouth_width, eye_open)
    )
    head = np.asarray(head, np.float32).reshape(-1, 3)
    n = len(mouth_open)
    frames = np.empty((n, size, size, 3), np.uint8)
    landmarks = np.empty((n, 68, 2), np.float32)
    grid = np.arange(size, dtype=np.float32) + 0.5
    chunk = max(1, 2**18 // (size * size))
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        g = _geometry(identity, size, _column(mouth_open[sl]), _column(mouth_width[sl]), _column(eye_open[sl]))
        cx = _column(identity.center[0] + head[sl, 0]) * size
        cy = _column(identity.center[1] + head[sl, 1]) * size
        cos, sin = _column(np.cos(head[sl, 2])), _column(np.sin(head[sl, 2]))
        x, y = grid[None, None, :] - cx, grid[None, :, None] - cy
        u, v = cos * x + sin * y, cos * y - sin * x
        image = _draw(identity, g, u, v)
        frames[sl] = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        local = _landmarks(identity, g, sl.stop - sl.start)
        c, s = cos[:, :, 0], sin[:, :, 0]
        landmarks[sl, :, 0] = cx[:, :, 0] + c * local[..., 0] - s * local[..., 1]
        landmarks[sl, :, 1] = cy[:, :, 0] + s * local[..., 0] + c * local[..., 1]
    return frames, landmarks


def render_face(
    identity: FaceIdentity,
    size: int,
    mouth_open: float,
    mouth_width: float = 0.5,
    eye_open: float = 1.0,
    head: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """One frame: uint8 (size, size, 3) and landmarks (68, 2) pixel (x, y); head = (dx, dy) / size, roll (rad)."""
    frames, landmarks = render_faces(identity, size, [mouth_open], [mouth_width], [eye_open], [head])
    return frames[0], landmarks[0]
