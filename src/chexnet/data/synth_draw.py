"""Drawing one synthetic chest X-ray: the anatomy, the 14 findings and :func:`render`.

:mod:`chexnet.data.synthetic` samples the labels and patients and writes the data set; this
module turns one image's labels into pixels and boxes.

- **Anatomy.** Body, two lung fields with vessel markings, heart and mediastinum, diaphragm
  domes, stomach bubble, spine, posterior ribs and clavicles; random exposure, gamma, heel
  effect and noise. Size, position, heart and ribs are fixed per patient with small per-image
  jitter.
- **Findings.** Each is a localized pattern, made high-contrast and large enough to survive
  downsampling to 128 px (learnability over realism): Atelectasis a plate-like band with a
  raised hemidiaphragm; Cardiomegaly a globular heart 50-70% wider; Effusion fluid with a
  meniscus at the costophrenic angle; Infiltration a cluster of small mottled spots; Mass a
  large lobulated blob; Nodule a small sharp bright disk; Pneumonia a large fuzzy cloud with
  air bronchograms; Pneumothorax a black apical-lateral rim without markings and a pleural
  line; Consolidation a dense homogeneous block with a sharp fissure edge; Edema bilateral
  perihilar haze with Kerley lines; Emphysema dark large lungs, flat low domes, few markings
  and bullae; Fibrosis a reticular net; Pleural_Thickening a lumpy bright rim with plaques
  along the lung edge; Hernia a retrocardiac air-fluid bubble. Each records its box in pixels
  of the image, for all 14.

:func:`render` depends only on its arguments: its generators are keyed by (seed, patient,
finding, image index), so a finding that persists across a patient's follow-ups is drawn at
the same place, and the number of worker processes does not change a single byte.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from chexnet.labels import PATHOLOGIES

_K = {name: i for i, name in enumerate(PATHOLOGIES)}
_F32 = np.float32


# --------------------------------------------------------------------------- drawing helpers


def _ramp(v, width):
    """Soft step: 0 for v << 0, 1 for v >> 0, linear over ``width`` (float32)."""
    return np.clip(v * _F32(1.0 / width) + _F32(0.5), _F32(0.0), _F32(1.0))


def _seg_dist(x, y, p0, p1):
    """Distance from grid points to the segment p0-p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    return np.hypot(x - (p0[0] + t * dx), y - (p0[1] + t * dy))


def _smooth_noise(rng, shape, cells):
    """Smooth random field of the given (h, w) shape, ~``cells`` bumps across, unit-ish amplitude."""
    h, w = shape
    small = rng.standard_normal((max(2, cells), max(2, cells))).astype(_F32)
    return np.asarray(Image.fromarray(small).resize((max(w, 1), max(h, 1)), Image.BICUBIC))


class _Canvas:
    """Density layers of a square image in normalized coordinates (x right, y down, 0..1)."""

    def __init__(self, size: int):
        self.n = size
        self.c = ((np.arange(size, dtype=_F32) + _F32(0.5)) / _F32(size))
        self.base = np.zeros((size, size), _F32)  # soft tissue, air, bone and findings
        self.marks = np.zeros((size, size), _F32)  # lung vessel markings (some findings erase them)
        self.boxes: list[tuple[str, float, float, float, float]] = []

    def win(self, x0, y0, x1, y1):
        """Window covering the normalized rectangle: (slices, X row, Y column) or None if empty."""
        j0, j1 = max(0, int(x0 * self.n)), min(self.n, int(math.ceil(x1 * self.n)))
        i0, i1 = max(0, int(y0 * self.n)), min(self.n, int(math.ceil(y1 * self.n)))
        if j1 <= j0 or i1 <= i0:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.c[j0:j1][None, :], self.c[i0:i1][:, None]

    def box(self, name, x0, y0, x1, y1):
        """Record a finding's box given in normalized coordinates (clipped to the image)."""
        x0, y0 = max(0.0, x0) * self.n, max(0.0, y0) * self.n
        x1, y1 = min(1.0, x1) * self.n, min(1.0, y1) * self.n
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            self.boxes.append((name, x0, y0, x1 - x0, y1 - y0))

    def mask_box(self, name, sl, mask, thr=0.5):
        """Record the box of ``mask > thr`` inside the window ``sl``."""
        rows, cols = np.flatnonzero((mask > thr).any(1)), np.flatnonzero((mask > thr).any(0))
        if len(rows) and len(cols):
            self.boxes.append((name, float(sl[1].start + cols[0]), float(sl[0].start + rows[0]),
                               float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)))


class _Lung:
    """One lung field: an egg shape (taller below its center) cut by a parabolic diaphragm dome."""

    def __init__(self, side, cx, cy, ax, ay, dome, dome_k):
        self.side, self.cx, self.cy, self.ax, self.ay = side, cx, cy, ax, ay  # side -1: image left
        self.ay_low = ay * 1.55
        self.dome, self.dome_k = dome, dome_k  # dome apex height and curvature

    def bounds(self, pad=0.02):
        return (self.cx - self.ax - pad, self.cy - self.ay - pad, self.cx + self.ax + pad, self.dome + 0.08)

    def radius(self, x, y):
        """Normalized elliptic radius (1 on the lung border, ignoring the dome)."""
        dy = y - self.cy
        ay = np.where(dy < 0, _F32(self.ay), _F32(self.ay_low))
        return np.sqrt(((x - self.cx) / _F32(self.ax)) ** 2 + (dy / ay) ** 2)

    def dome_y(self, x):
        return self.dome + self.dome_k * (x - self.cx - 0.1 * self.side * self.ax) ** 2

    def mask(self, x, y, edge=0.012):
        inside = _ramp((1 - self.radius(x, y)) * _F32(self.ax), edge)
        return inside * _ramp(self.dome_y(x) - y, edge)

    def point(self, rng, rmax=0.7, ylo=-1.0, yhi=1.0):
        """Random point well inside the lung, with y relative to the lung (-1 apex .. 1 dome)."""
        for _ in range(100):
            r, t = rmax * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            x = self.cx + r * self.ax * math.cos(t)
            y = self.cy + r * self.ay * math.sin(t) * (1.55 if math.sin(t) > 0 else 1.0)
            rel = (y - self.cy) / (self.dome - self.cy) if y > self.cy else (y - self.cy) / self.ay
            if ylo <= rel <= yhi and y < self.dome_y(x) - 0.05:
                return x, y
        return self.cx, self.cy


# --------------------------------------------------------------------------- anatomy


def _anatomy(pr, ir, has, view):
    """Per-patient anatomy (``pr``) with per-image jitter (``ir``), adjusted for some findings."""
    s = pr.uniform(0.92, 1.04)
    a = {
        "s": s,
        "cx": 0.5 + pr.normal(0, 0.012) + ir.normal(0, 0.006),
        "dy": pr.normal(0, 0.012) + ir.normal(0, 0.006),
        "heart_w": 0.12 * s * pr.uniform(0.93, 1.05) * (1.04 if view == "AP" else 1.0),
        "heart_h": 0.095 * s * pr.uniform(0.95, 1.05),
        "rib_period": 0.06 * s * pr.uniform(0.95, 1.05),
        "rib_phase": pr.uniform(0, 1),
        "dome": 0.655 + pr.normal(0, 0.012) + ir.normal(0, 0.008),
        "dome_k": 2.2 * pr.uniform(0.85, 1.15),
        "lung_dark": 0.33 * pr.uniform(0.92, 1.08),
        "marks": 0.07 * pr.uniform(0.8, 1.2),
        "bubble": pr.uniform() < 0.7,
    }
    if "Cardiomegaly" in has:
        a["heart_w"] *= pr.uniform(1.5, 1.7)
        a["heart_h"] *= 1.35
    ax, ay = 0.14 * s, 0.27 * s
    dome_k, dome = a["dome_k"], a["dome"]
    if "Emphysema" in has:  # hyperinflation: large dark lungs, low flat domes, sparse markings
        ay, dome, dome_k = ay * 1.1, dome + 0.06, dome_k * 0.25
        a["lung_dark"] *= 1.3
        a["marks"] *= 0.35
    cy = 0.44 + a["dy"]
    sep = 0.17 * s
    lift = {side: 0.0 for side in (-1, 1)}
    if "Atelectasis" in has:  # volume loss: the hemidiaphragm of the collapsed side rises
        a["atel_side"] = int(pr.choice((-1, 1)))
        lift[a["atel_side"]] = 0.035
    a["lungs"] = [
        _Lung(-1, a["cx"] - sep, cy, ax * 1.04, ay, dome + a["dy"] - lift[-1], dome_k),
        _Lung(1, a["cx"] + sep, cy + 0.01, ax, ay, dome + a["dy"] + 0.02 - lift[1], dome_k),
    ]
    return a


def _draw_anatomy(cv: _Canvas, a, ir):
    s, cx, dy = a["s"], a["cx"], a["dy"]
    c = cv.c
    # body: soft tissue with sloping shoulders, dark air around it
    half = np.where(c < 0.14 + dy, 0.3 * s + (0.14 * s) * np.clip((c - dy) / 0.14, 0, 1), 0.44 * s).astype(_F32)
    body = _ramp(half[:, None] - np.abs(c[None, :] - _F32(cx)), 0.03)
    cv.base += _F32(0.04) + _F32(0.48) * body
    # lungs: air, vessel markings fading from the hilum
    for lung in a["lungs"]:
        sl, x, y = cv.win(*lung.bounds())
        m = lung.mask(x, y)
        cv.base[sl] -= _F32(a["lung_dark"]) * m
        hx, hy = lung.cx - lung.side * 0.45 * lung.ax, lung.cy + 0.03
        hilum = np.exp(-(((x - hx) / 0.16) ** 2 + ((y - hy) / 0.2) ** 2))
        ridges = np.clip(1 - 2.5 * np.abs(_smooth_noise(ir, m.shape, 14)), 0, 1)
        cv.marks[sl] += _F32(a["marks"]) * ridges * (0.35 + 0.65 * hilum) * m
    # mediastinum with the aortic knob, then the heart, both over the medial lungs
    sl, x, y = cv.win(cx - 0.08, 0.0, cx + 0.12, 0.85)
    med = _ramp(0.052 * s - np.abs(x - cx), 0.015) * _ramp(y - 0.02, 0.02)
    knob = _ramp(1 - np.hypot((x - cx - 0.045 * s) / 0.04, (y - 0.29 - dy) / 0.035), 0.3)
    cv.base[sl] += (_F32(0.56) - cv.base[sl]) * np.maximum(med, knob)
    hcx, hcy, hw, hh, dome = cx + 0.03 * s, a["lungs"][1].dome - 0.065, a["heart_w"], a["heart_h"], a["lungs"][1].dome
    sl, x, y = cv.win(hcx - hw - 0.04, hcy - hh - 0.04, hcx + hw + 0.04, dome + 0.06)
    heart = _ramp(1 - np.hypot((x - hcx) / hw, (y - hcy) / hh), 0.06)
    below = _ramp(y - hcy, 0.02) * _ramp(dome + 0.03 - y, 0.02) * _ramp(hw - np.abs(x - hcx), 0.02)
    cv.base[sl] += (_F32(0.56) - cv.base[sl]) * np.maximum(heart, below)
    a["heart_box"] = (hcx - hw, hcy - hh, hcx + hw, dome + 0.02)
    # stomach bubble under the left hemidiaphragm (image right)
    lung = a["lungs"][1]
    if a["bubble"]:
        bx, by = lung.cx + 0.02, lung.dome_y(lung.cx + 0.02) + 0.045
        sl, x, y = cv.win(bx - 0.07, by - 0.05, bx + 0.07, by + 0.05)
        cv.base[sl] -= _F32(0.18) * _ramp(1 - np.hypot((x - bx) / 0.055, (y - by) / 0.03), 0.3)
    # spine with vertebrae
    sl, x, y = cv.win(cx - 0.05, 0, cx + 0.05, 1)
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * (y - dy) / (0.05 * s))
    cv.base[sl] += _F32(0.1) * _ramp(0.032 * s - np.abs(x - cx), 0.008) * vert
    # posterior ribs: arcs sloping down laterally, over the thorax only
    top, bottom = 0.1 + dy, max(l.dome for l in a["lungs"]) + 0.03
    sl, x, y = cv.win(cx - 0.42 * s, top, cx + 0.42 * s, bottom)
    lat = np.abs(x - cx)
    u = (y + _F32(0.1) * lat - _F32(0.9) * lat * lat) / _F32(a["rib_period"]) + _F32(a["rib_phase"])
    ribs = np.clip((np.cos(_F32(2 * np.pi) * u) - _F32(0.3)) * _F32(2.5), 0, 1)
    fade = _ramp(lat - 0.04, 0.03) * _ramp(0.41 * s - lat, 0.04) * _ramp(bottom - 0.03 - y, 0.04)
    cv.base[sl] += _F32(0.075) * ribs * fade
    # clavicles
    for side in (-1, 1):
        p0, p1 = (cx + side * 0.035, 0.2 + dy), (cx + side * 0.3 * s, 0.125 + dy)
        sl, x, y = cv.win(min(p0[0], p1[0]) - 0.03, 0.08 + dy, max(p0[0], p1[0]) + 0.03, 0.25 + dy)
        cv.base[sl] += _F32(0.2) * _ramp(0.012 * s - _seg_dist(x, y, p0, p1), 0.006)


# --------------------------------------------------------------------------- findings
# Each draws into the canvas and records its box. ``fr`` is keyed by (patient, finding), so a
# finding that persists across a patient's follow-ups is drawn at the same place; ``ir`` jitters.


def _blob(cv, name, cx, cy, rad, amp, edge, lobes=0.0, rng=None):
    sl, x, y = cv.win(cx - 1.3 * rad, cy - 1.3 * rad, cx + 1.3 * rad, cy + 1.3 * rad)
    r = np.hypot(x - cx, y - cy)
    if lobes:
        t = np.arctan2(y - cy, x - cx)
        r = r / (1 + lobes * np.sin(3 * t + rng.uniform(0, 6.3)) + 0.6 * lobes * np.sin(5 * t + rng.uniform(0, 6.3)))
    cv.base[sl] += _F32(amp) * _ramp(rad - r, edge * rad)
    cv.box(name, cx - rad, cy - rad, cx + rad, cy + rad)


def _nodule(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    x, y = lung.point(fr, 0.7)
    _blob(cv, "Nodule", x + ir.normal(0, 0.003), y + ir.normal(0, 0.003), fr.uniform(0.018, 0.026) * a["s"], 0.42, 0.25)


def _mass(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    x, y = lung.point(fr, 0.5)
    rad = fr.uniform(0.055, 0.08) * a["s"]
    _blob(cv, "Mass", x + ir.normal(0, 0.004), y + ir.normal(0, 0.004), rad, 0.36, 0.15, lobes=0.1, rng=fr)


def _infiltration(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    cx, cy = lung.point(fr, 0.55, -0.8, 0.5)
    rad = fr.uniform(0.075, 0.1) * a["s"]
    sl, x, y = cv.win(cx - rad - 0.03, cy - rad - 0.03, cx + rad + 0.03, cy + rad + 0.03)
    spots = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), _F32)
    for _ in range(int(fr.integers(10, 16))):
        r, t = rad * math.sqrt(fr.uniform()), fr.uniform(0, 2 * math.pi)
        sx, sy = cx + r * math.cos(t) + ir.normal(0, 0.004), cy + r * math.sin(t) + ir.normal(0, 0.004)
        sg = fr.uniform(0.01, 0.016)
        spots += np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / _F32(2 * sg * sg))
    cv.base[sl] += _F32(0.2) * np.minimum(spots, 1.4) * lung.mask(x, y)
    cv.mask_box("Infiltration", sl, spots * lung.mask(x, y), 0.3)


def _pneumonia(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    cx, cy = lung.point(fr, 0.45, 0.0, 0.8)
    rad = fr.uniform(0.085, 0.11) * a["s"]
    sl, x, y = cv.win(cx - 1.5 * rad, cy - 1.5 * rad, cx + 1.5 * rad, cy + 1.5 * rad)
    fuzz = _smooth_noise(fr, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), 6)
    cloud = np.clip(1.2 - np.hypot(x - cx, y - cy) / rad + 0.25 * fuzz, 0, 1) * lung.mask(x, y)
    bronchi = np.zeros_like(cloud)
    for _ in range(3):  # air bronchograms: dark tubes branching out from the cloud center
        t = fr.uniform(0, 2 * math.pi)
        end = (cx + 0.8 * rad * math.cos(t), cy + 0.8 * rad * math.sin(t))
        bronchi = np.maximum(bronchi, _ramp(0.006 - _seg_dist(x, y, (cx, cy), end), 0.004))
    cv.base[sl] += _F32(0.3) * cloud * (1 - 0.5 * bronchi)
    cv.mask_box("Pneumonia", sl, cloud, 0.3)


def _consolidation(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    top = lung.cy + fr.uniform(-0.04, 0.06)
    height, tilt = fr.uniform(0.12, 0.16) * a["s"], fr.uniform(-0.15, 0.15)
    sl, x, y = cv.win(lung.cx - lung.ax, top - 0.04, lung.cx + lung.ax, top + height + 0.06)
    edge = top + _F32(tilt) * (x - lung.cx)
    region = _ramp(y - edge, 0.004) * _ramp(edge + height - y, 0.04) * lung.mask(x, y, 0.006)
    cv.base[sl] += _F32(0.34) * region
    cv.mask_box("Consolidation", sl, region)


def _atelectasis(cv, a, fr, ir):
    lung = a["lungs"][0 if a["atel_side"] == -1 else 1]
    cx, cy = lung.point(fr, 0.4, 0.25, 0.75)
    half, angle = fr.uniform(0.07, 0.1) * a["s"], fr.uniform(-0.45, 0.45)
    p0 = (cx - half * math.cos(angle), cy - half * math.sin(angle))
    p1 = (cx + half * math.cos(angle), cy + half * math.sin(angle))
    sl, x, y = cv.win(cx - half - 0.03, cy - half - 0.03, cx + half + 0.03, cy + half + 0.03)
    band = _ramp(fr.uniform(0.011, 0.016) - _seg_dist(x, y, p0, p1), 0.006) * lung.mask(x, y)
    cv.base[sl] += _F32(0.38) * band
    cv.mask_box("Atelectasis", sl, band)


def _effusion(cv, a, fr, ir):
    sides = (0, 1) if fr.uniform() < 0.3 else (int(fr.integers(2)),)
    height = fr.uniform(0.1, 0.17) * a["s"] + ir.normal(0, 0.005)
    x0 = y0 = 1.0
    x1 = y1 = 0.0
    for k in sides:
        lung = a["lungs"][k]
        sl, x, y = cv.win(*lung.bounds())
        t = np.clip(1 - lung.side * (x - lung.cx) / lung.ax, 0, 2) / 2  # 0 at the lateral wall
        level = lung.dome - height * (0.3 + 0.7 * (1 - t) ** 2)  # meniscus: rises laterally
        fluid = _ramp(y - level, 0.015) * lung.mask(x, y, 0.006)
        cv.base[sl] += _F32(0.05 + 0.95 * a["lung_dark"]) * fluid  # up to soft-tissue density
        rows, cols = np.flatnonzero((fluid > 0.5).any(1)), np.flatnonzero((fluid > 0.5).any(0))
        if len(rows):
            x0, x1 = min(x0, cv.c[sl[1].start + cols[0]]), max(x1, cv.c[sl[1].start + cols[-1]])
            y0, y1 = min(y0, cv.c[sl[0].start + rows[0]]), max(y1, cv.c[sl[0].start + rows[-1]])
    cv.box("Effusion", x0, y0, x1, y1)


def _pneumothorax(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    f = fr.uniform(0.68, 0.78)  # the collapsed lung, shrunk toward the hilum
    hx, hy = lung.cx - lung.side * 0.3 * lung.ax, lung.cy + 0.08
    sl, x, y = cv.win(*lung.bounds())
    rs = np.hypot((x - hx) / (f * lung.ax * 1.3), (y - hy) / (f * lung.ay * 1.3))
    upper = _ramp(hy + 0.02 - y, 0.04)
    gap = _ramp(rs - 1, 0.01) * lung.mask(x, y, 0.008) * upper
    line = _ramp(0.2 - np.abs(rs - 1) / 0.04, 0.15) * lung.mask(x, y, 0.02) * upper  # pleural line ~3 px at 512
    cv.marks[sl] *= 1 - gap
    cv.base[sl] -= _F32(0.15) * gap
    cv.base[sl] += _F32(0.22) * line * (1 - gap)
    cv.mask_box("Pneumothorax", sl, gap)


def _edema(cv, a, fr, ir):
    boxes = []
    for lung in a["lungs"]:
        hx, hy = lung.cx - lung.side * 0.4 * lung.ax, lung.cy + 0.05
        sl, x, y = cv.win(*lung.bounds())
        m = lung.mask(x, y)
        haze = np.exp(-(((x - hx) / 0.085) ** 2 + ((y - hy) / 0.13) ** 2)) * m
        kerley = np.zeros_like(haze)
        for k in range(4):  # Kerley B lines: short horizontal lines at the lateral bases
            ky = lung.dome - 0.03 - 0.022 * k
            kx = lung.cx + lung.side * 0.75 * lung.ax
            kerley = np.maximum(kerley, _ramp(0.005 - _seg_dist(x, y, (kx - 0.025, ky), (kx + 0.025, ky)), 0.004))
        cv.base[sl] += _F32(0.27) * haze + _F32(0.2) * kerley * m
        boxes.append((hx - 0.12, hy - 0.17, hx + 0.12, hy + 0.17))
    (x0, y0, _, _), (_, _, x1, y1) = boxes  # image-left lung first
    cv.box("Edema", x0, min(y0, boxes[1][1]), x1, max(y1, boxes[0][3]))


def _emphysema(cv, a, fr, ir):
    # the lungs are already large and dark (see _anatomy); add a few bullae in the upper zones
    for _ in range(int(fr.integers(1, 4))):
        lung = a["lungs"][fr.integers(2)]
        bx, by = lung.point(fr, 0.75, -0.95, -0.1)
        rad = fr.uniform(0.03, 0.05)
        sl, x, y = cv.win(bx - rad - 0.01, by - rad - 0.01, bx + rad + 0.01, by + rad + 0.01)
        r = np.hypot(x - bx, y - by)
        cv.marks[sl] *= _ramp(r - rad, 0.006)
        cv.base[sl] -= _F32(0.08) * _ramp(rad - r, 0.006) * lung.mask(x, y)
        cv.base[sl] += _F32(0.12) * _ramp(0.004 - np.abs(r - rad), 0.003)
    l0, l1 = a["lungs"]
    cv.box("Emphysema", l0.cx - l0.ax, min(l0.cy - l0.ay, l1.cy - l1.ay), l1.cx + l1.ax, max(l0.dome, l1.dome) + 0.03)


def _fibrosis(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    cx, cy = lung.point(fr, 0.5, -0.85, -0.2) if fr.uniform() < 0.6 else lung.point(fr, 0.55, 0.2, 0.7)
    rx, ry = fr.uniform(0.08, 0.11) * a["s"], fr.uniform(0.07, 0.1) * a["s"]
    sl, x, y = cv.win(cx - rx, cy - ry, cx + rx, cy + ry)
    net = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), _F32)
    period = fr.uniform(0.04, 0.05)
    for _ in range(3):  # three crossing line gratings make a reticular net
        t = fr.uniform(0, math.pi)
        u = ((x - cx) * math.cos(t) + (y - cy) * math.sin(t)) / period + fr.uniform(0, 1)
        net = np.maximum(net, np.clip((np.cos(_F32(2 * np.pi) * u) - _F32(0.55)) * _F32(3), 0, 1))
    net *= 0.6 + 0.4 * np.clip(_smooth_noise(fr, net.shape, 4), -1, 1)
    patch = _ramp(1 - np.hypot((x - cx) / rx, (y - cy) / ry), 0.25) * lung.mask(x, y)
    cv.base[sl] += _F32(0.3) * net * patch + _F32(0.06) * patch
    cv.mask_box("Fibrosis", sl, patch, 0.3)


def _pleural_thickening(cv, a, fr, ir):
    lung = a["lungs"][fr.integers(2)]
    lateral = 0.0 if lung.side == 1 else math.pi
    center = lateral + fr.uniform(-0.6, 0.3) * lung.side if fr.uniform() < 0.6 else -math.pi / 2 + fr.uniform(-0.4, 0.4)
    span = fr.uniform(0.6, 0.9)
    thick = fr.uniform(0.035, 0.05) * a["s"]
    sl, x, y = cv.win(*lung.bounds())
    angle = np.arctan2((y - lung.cy) / lung.ay, (x - lung.cx) / lung.ax)
    off = (angle - center + np.pi) % (2 * np.pi) - np.pi
    within = _ramp(span - np.abs(off), 0.1)
    wavy = thick * (1 + 0.25 * np.sin(fr.integers(5, 9) * angle + fr.uniform(0, 6.3)))  # lumpy inner edge
    rim = _ramp(wavy - (1 - lung.radius(x, y)) * lung.ax, 0.006) * lung.mask(x, y, 0.006) * within
    plaques = sum(_ramp(0.3 - np.abs(off - t), 0.1) for t in fr.uniform(-0.7, 0.7, size=2) * span)  # calcified
    cv.base[sl] += (_F32(0.12 + 0.9 * a["lung_dark"]) + _F32(0.2) * np.minimum(plaques, 1)) * rim
    cv.mask_box("Pleural_Thickening", sl, rim)


def _hernia(cv, a, fr, ir):
    l0, l1 = a["lungs"]
    cx = a["cx"] + fr.uniform(-0.01, 0.05)
    cy = min(l0.dome, l1.dome) - fr.uniform(0.02, 0.05)
    rad = fr.uniform(0.055, 0.075) * a["s"]
    sl, x, y = cv.win(cx - rad - 0.01, cy - rad - 0.01, cx + rad + 0.01, cy + rad + 0.01)
    r = np.hypot(x - cx, y - cy)
    inside = _ramp(rad - r, 0.005)
    gas = inside * _ramp(cy + fr.uniform(-0.2, 0.3) * rad - y, 0.004)  # air over an air-fluid level
    wall = _ramp(0.006 - np.abs(r - rad), 0.004)
    cv.base[sl] += _F32(0.15) * wall - _F32(0.38) * gas
    cv.box("Hernia", cx - rad, cy - rad, cx + rad, cy + rad)


def _cardiomegaly(cv, a, fr, ir):
    cv.box("Cardiomegaly", *a["heart_box"])  # the enlarged heart itself is drawn with the anatomy


_DRAW = {
    "Atelectasis": _atelectasis, "Cardiomegaly": _cardiomegaly, "Effusion": _effusion,
    "Infiltration": _infiltration, "Mass": _mass, "Nodule": _nodule, "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax, "Consolidation": _consolidation, "Edema": _edema,
    "Emphysema": _emphysema, "Fibrosis": _fibrosis, "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def render(size: int, labels, seed: int = 0, patient: int = 1, index: int = 0, view: str = "PA"):
    """Draw one image: returns (uint8 array size x size, boxes [(label, x, y, w, h)] in pixels).

    ``labels`` is a 0/1 vector in NIH order. The result depends only on the arguments:
    anatomy on (seed, patient), finding placement on (seed, patient, finding), positional
    jitter on (seed, index) and exposure and noise on (seed, index) through a separate stream,
    so the same image with and without a finding differs only where the finding is.
    """
    has = [PATHOLOGIES[k] for k in np.flatnonzero(labels)]
    pr = np.random.default_rng((seed, 1, patient))
    ir = np.random.default_rng((seed, 2, index))
    a = _anatomy(pr, ir, set(has), view)
    cv = _Canvas(size)
    _draw_anatomy(cv, a, ir)
    for name in has:
        _DRAW[name](cv, a, np.random.default_rng((seed, 3, patient, _K[name])), ir)
    img = cv.base
    img += cv.marks
    # exposure: heel effect and contrast per column, quantum noise, then gamma through a lookup table
    er = np.random.default_rng((seed, 4, index))
    scale = (_F32(1) + _F32(er.uniform(-0.06, 0.06)) * (cv.c - _F32(0.5))) * _F32(er.uniform(0.9, 1.12) * 4095)
    img *= scale[None, :]
    img += _F32(er.uniform(-0.04, 0.04) * 4095)
    # noise: triangular (sum of two uniform bytes, std ~104), cheaper than normal and as good here
    noise = np.frombuffer(er.bytes(2 * img.size), np.uint8).reshape(2, *img.shape)
    sigma = er.uniform(0.004, 0.012) * 4095 / 104.2
    img += (noise[0].astype(_F32) + noise[1] - _F32(255)) * _F32(sigma)
    lut = np.round(np.linspace(0, 1, 4096) ** er.uniform(0.8, 1.2) * 255).astype(np.uint8)
    out = lut[np.clip(img, 0, 4095).astype(np.uint16)]
    return out, cv.boxes
