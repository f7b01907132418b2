"""Synthetic 3-D volumes with lesions and vessels, and the writers the SAM-3D tools and the
volume test fixtures use (NIfTI, DICOM series, PNG sweep).

A volume (`make_volume(seed, ...)`, deterministic for a seed) is a block of 48..96 voxels per
side, isotropic or anisotropic (e.g. 0.8 x 0.8 x 2.0 mm), holding
  - 1..3 ellipsoid lesions: semi-axes 4..14 mm, random orientation, darker or brighter than the
    background, soft (partial-volume) edges, faint internal texture;
  - 0..2 tubular vessels: curved tubes (quadratic Bezier + a wiggle), radius 1.5..4 mm, crossing
    the block from one face to the opposite one, kept clear of the lesions;
in one of two backgrounds:
  - "CT": soft tissue 20..60 HU, smooth bias +-10..30 HU, Gaussian noise 5..14 HU (slightly
    correlated); lesions -25..-70 HU (hypodense) or +40..+110 HU (hyperdense) from the tissue,
    vessels enhanced +120..+250 HU. Values in HU.
  - "US": ultrasound-like B-mode values 0..255: echogenicity (background 1, hypoechoic lesions
    0.15..0.4, hyperechoic 2.2..3.5, anechoic vessels 0.02..0.08) times multiplicative speckle
    (magnitude of a laterally correlated complex Gaussian field: Rayleigh, mean 1) times a depth
    attenuation and smooth bias, log-compressed (dynamic range 40..55 dB, random gain) to 0..255.
Arrays are indexed [i, j, k] = [x, y, z] (nibabel's order); voxel centres sit at index * spacing in
the volume's own frame; `affine` maps (i, j, k, 1) to RAS+ millimetres (as NIfTI).
Labels: `lesions` int16 instance ids 1..n (0 background), `vessels` uint8 instance ids 1..m (the
vessel mask is `vessels > 0`).

Writers:
  write_nifti(path, data, affine, ...)            .nii / .nii.gz, int16 (with scl_slope/scl_inter),
                                                  uint8, float32, float64, either byte order;
                                                  sform and/or qform
  write_dicom_series(folder, data, ...)           one CT Image Storage file per slice (Image Position
                                                  / Orientation (Patient), Pixel Spacing, Slice
                                                  Thickness, Spacing Between Slices, Rescale
                                                  Slope/Intercept), shuffled file names, Instance
                                                  Number running against the slice position
  write_png_sweep(folder, data, ...)              8-bit grey PNG per z slice + sweep.json

Command line:
  python volumes.py fixtures [--out tests/fixtures/volumes]
      writes the committed volume fixtures (good files, bad files, eval/ set, expected.json,
      fixtures.md; see `write_fixtures`)
  python volumes.py dataset --out DIR --count N --seed S
      writes N volumes as DIR/vNNN.nii.gz (+ vNNN_lesions.nii.gz instance labels, vNNN_vessels.nii.gz
      mask) and DIR/volumes.jsonl (file names, seed, dims, spacing, objects, voxel counts, mL)
  python volumes.py show --seed S          prints one volume's description

Needs numpy, nibabel, pydicom, pillow. Deterministic; offline.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent.parent
FIXTURES_DIR = REPO_DIR / "tests" / "fixtures" / "volumes"

SPACINGS = [
    (1.0, 1.0, 1.0),
    (0.8, 0.8, 2.0),
    (1.2, 1.2, 1.2),
    (0.7, 0.7, 1.5),
    (1.5, 1.5, 1.5),
    (0.9, 0.9, 3.0),
    (1.0, 1.0, 2.5),
    (2.0, 2.0, 2.0),
]


@dataclass
class Volume:
    data: np.ndarray  # float32 [X, Y, Z], HU (CT) or 0..255 (US)
    lesions: np.ndarray  # int16 instance ids
    vessels: np.ndarray  # uint8 instance ids (the vessel mask is vessels > 0)
    spacing: tuple  # mm, x y z
    affine: np.ndarray  # 4x4, voxel -> RAS mm
    modality: str  # "CT" or "US"
    objects: list = field(default_factory=list)  # per lesion / vessel description

    @property
    def shape(self):
        return self.data.shape

    def describe(self) -> dict:
        vox = float(np.prod(self.spacing))
        return {
            "modality": self.modality,
            "dims": list(self.shape),
            "spacing": [float(s) for s in self.spacing],
            "lesions": [
                {**o, "voxels": int((self.lesions == o["id"]).sum()),
                 "volume_ml": round(float((self.lesions == o["id"]).sum()) * vox / 1000.0, 4)}
                for o in self.objects if o["kind"] == "lesion"
            ],
            "vessels": [o for o in self.objects if o["kind"] == "vessel"],
            "vessel_voxels": int((self.vessels > 0).sum()),
        }


# ---------------------------------------------------------------------------------------------
# small numpy helpers


def smooth_axis(a: np.ndarray, axis: int, sigma_vox: float) -> np.ndarray:
    """Gaussian smoothing along one axis (reflect padding)."""
    if sigma_vox <= 0.05:
        return a
    r = max(1, int(math.ceil(2.5 * sigma_vox)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="reflect")
    out = np.zeros_like(a)
    n = a.shape[axis]
    for i, w in enumerate(k):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += w * p[tuple(sl)]
    return out


def smooth(a: np.ndarray, sigmas_vox) -> np.ndarray:
    for ax, s in enumerate(sigmas_vox):
        a = smooth_axis(a, ax, s)
    return a


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def smooth_field(rng, coords_unit, amplitude: float, terms: int = 3) -> np.ndarray:
    """A low-frequency random field (sum of cosines) over coordinates normalised to 0..1."""
    x, y, z = coords_unit
    f = np.zeros(x.shape, dtype=np.float64)
    for _ in range(terms):
        k = rng.uniform(0.3, 1.6, size=3) * rng.choice([-1, 1], size=3) * math.pi
        ph = rng.uniform(0, 2 * math.pi)
        f += np.cos(k[0] * x + k[1] * y + k[2] * z + ph)
    return amplitude * f / math.sqrt(terms)


def affine_for(spacing, rng=None, origin=None, flips=(-1, -1, 1), rotate_deg: float = 0.0) -> np.ndarray:
    """Voxel -> RAS affine: axis flips (radiological LPS-like storage by default), spacing, an
    optional rotation about z and an origin."""
    s = np.diag([flips[0] * spacing[0], flips[1] * spacing[1], flips[2] * spacing[2]])
    t = math.radians(rotate_deg)
    rz = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rz @ s
    if origin is None:
        origin = (0.0, 0.0, 0.0) if rng is None else tuple(np.round(rng.uniform(-120, 120, 3), 2))
    a[:3, 3] = origin
    return a


# ---------------------------------------------------------------------------------------------
# the generator


def _ellipsoid_r(coords, center, axes, rot):
    """sqrt of the ellipsoid quadratic form (1 on the surface) at every voxel."""
    d = np.stack([c - o for c, o in zip(coords, center)], axis=-1)  # [..., 3] mm
    local = d @ rot  # coordinates in the ellipsoid's frame
    return np.sqrt(((local / np.asarray(axes)) ** 2).sum(-1))


def _bezier(p0, p1, p2, n):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _tube_distance(shape, spacing, pts, radius_max):
    """Distance (mm) from every voxel centre to the nearest point of a densely sampled curve,
    computed in boxes around each curve point; +inf far away."""
    dist = np.full(shape, np.inf, dtype=np.float64)
    sp = np.asarray(spacing)
    reach = radius_max + 2.0
    for p in pts:
        lo = np.maximum(np.floor((p - reach) / sp).astype(int), 0)
        hi = np.minimum(np.ceil((p + reach) / sp).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        gx = np.arange(lo[0], hi[0]) * sp[0] - p[0]
        gy = np.arange(lo[1], hi[1]) * sp[1] - p[1]
        gz = np.arange(lo[2], hi[2]) * sp[2] - p[2]
        d = np.sqrt(gx[:, None, None] ** 2 + gy[None, :, None] ** 2 + gz[None, None, :] ** 2)
        box = dist[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.minimum(box, d, out=box)
    return dist


def make_volume(seed: int, modality: str | None = None, shape=None, spacing=None, n_lesions: int | None = None,
                n_vessels: int | None = None, lesion_axes=(4.0, 14.0), affine: np.ndarray | None = None) -> Volume:
    rng = np.random.default_rng(seed)
    modality = modality or ("CT" if rng.random() < 0.5 else "US")
    if spacing is None:
        spacing = SPACINGS[rng.integers(len(SPACINGS))]
    spacing = tuple(float(s) for s in spacing)
    if shape is None:
        # 48..96 voxels per side, fewer along a coarse axis so that no side exceeds 150 mm
        shape = []
        for s in spacing:
            n = int(rng.integers(48, 97))
            shape.append(int(max(24, min(n, round(150 / s)))))
        shape = tuple(shape)
    shape = tuple(int(n) for n in shape)
    if n_lesions is None:
        n_lesions = int(rng.integers(1, 4))
    if n_vessels is None:
        n_vessels = int(rng.choice([0, 1, 1, 2]))
    extent = np.array(shape) * np.array(spacing)
    coords = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    unit = [c / e for c, e in zip(coords, extent)]

    lesions = np.zeros(shape, dtype=np.int16)
    vessels = np.zeros(shape, dtype=np.uint8)
    lesion_w = []  # soft (partial-volume) weights per lesion
    objects = []
    placed = []
    for li in range(n_lesions):
        for _attempt in range(60):
            amax = min(lesion_axes[1], 0.3 * extent.min())
            amin = min(lesion_axes[0], 0.6 * amax)
            axes = np.sort(rng.uniform(amin, amax, size=3))[::-1]
            rot = random_rotation(rng)
            margin = axes[0] + 2.0
            if np.any(extent - 2 * margin <= 0):
                continue
            center = rng.uniform(margin, extent - margin)
            if all(np.linalg.norm(center - c) > a + axes[0] + 3.0 for c, a in placed):
                break
        else:
            continue
        placed.append((center, axes[0]))
        r = _ellipsoid_r(coords, center, axes, rot)
        inside = r <= 1.0
        if inside.sum() < 8:
            placed.pop()
            continue
        lid = len(placed)
        lesions[inside & (lesions == 0)] = lid
        edge_mm = 0.6
        w = 1.0 / (1.0 + np.exp(-np.clip((1.0 - r) * float(np.mean(axes)) / edge_mm, -30, 30)))
        bright = bool(rng.random() < 0.4)
        lesion_w.append((w, bright, rng.uniform(0, 1)))
        objects.append({
            "kind": "lesion", "id": lid, "center_mm": [round(float(c), 3) for c in center],
            "axes_mm": [round(float(a), 3) for a in axes], "rotation": np.round(rot, 5).tolist(),
            "contrast": "bright" if bright else "dark",
        })

    vessel_d = []
    for vi in range(n_vessels):
        for _attempt in range(40):
            radius = float(rng.uniform(1.5, 4.0))
            ax = int(rng.integers(3))
            p0 = rng.uniform(0.15, 0.85, 3) * extent
            p2 = rng.uniform(0.15, 0.85, 3) * extent
            p0[ax] = -3.0
            p2[ax] = extent[ax] + 3.0
            p1 = rng.uniform(0.1, 0.9, 3) * extent
            n = int(max(extent) / 0.4) + 50
            pts = _bezier(p0, p1, p2, n)
            # a wiggle perpendicular to the main axis
            amp = rng.uniform(0, 6.0)
            ph = rng.uniform(0, 2 * math.pi)
            perp = [a for a in range(3) if a != ax][int(rng.integers(2))]
            pts[:, perp] += amp * np.sin(np.linspace(0, 2 * math.pi * rng.uniform(0.5, 1.5), n) + ph)
            ok = all(
                np.min(np.linalg.norm(pts - c, axis=1)) > a + radius + 3.0 for c, a in placed
            )
            if ok:
                break
        else:
            continue
        d = _tube_distance(shape, spacing, pts, radius)
        vessels[d <= radius] = vi + 1
        vessel_d.append((d, radius, rng.uniform(0, 1)))
        objects.append({"kind": "vessel", "id": vi + 1, "radius_mm": round(radius, 3),
                        "axis": "xyz"[ax]})

    bias = smooth_field(rng, unit, 1.0)
    if modality == "CT":
        tissue = rng.uniform(20, 60)
        img = tissue + smooth_field(rng, unit, rng.uniform(10, 30))
        texture = smooth(rng.normal(size=shape), [2.0 / s for s in spacing])
        texture /= max(texture.std(), 1e-6)
        for w, bright, u in lesion_w:
            delta = rng.uniform(40, 110) if bright else -rng.uniform(25, 70)
            img = img + w * delta * (1.0 + 0.12 * texture)
        for d, radius, u in vessel_d:
            wv = 1.0 / (1.0 + np.exp(-np.clip((radius - d) / 0.5, -30, 30)))
            img = img + wv * rng.uniform(120, 250)
        noise = rng.normal(size=shape)
        noise = smooth(noise, [0.6, 0.6, 0.3])
        noise /= noise.std()
        img = img + noise * rng.uniform(5, 14)
    else:
        echo = np.ones(shape)
        for w, bright, u in lesion_w:
            level = rng.uniform(2.2, 3.5) if bright else rng.uniform(0.15, 0.4)
            echo = echo * (1 - w) + w * level
        for d, radius, u in vessel_d:
            wv = 1.0 / (1.0 + np.exp(-np.clip((radius - d) / 0.5, -30, 30)))
            echo = echo * (1 - wv) + wv * rng.uniform(0.02, 0.08)
        # speckle: laterally correlated complex Gaussian field -> Rayleigh magnitude, mean 1
        re = rng.normal(size=shape)
        im = rng.normal(size=shape)
        sig = [rng.uniform(0.6, 1.2) / spacing[0], rng.uniform(0.6, 1.2) / spacing[1], 0.3 / spacing[2]]
        speck = np.sqrt(smooth(re, sig) ** 2 + smooth(im, sig) ** 2)
        speck /= speck.mean()
        depth = np.exp(-rng.uniform(0.2, 1.0) * unit[1])  # attenuation along y (depth)
        env = echo * speck * depth * np.clip(1.0 + 0.25 * bias, 0.2, None)
        # log compression to 8-bit B-mode: dynamic range 40..55 dB, tissue around grey 120..160
        dr = rng.uniform(40, 55)
        gain_db = rng.uniform(-5, 5)
        db = 20 * np.log10(np.maximum(env, 1e-4))
        img = 255 * (db + gain_db + 0.55 * dr) / dr + rng.normal(0, 1.5, size=shape)
        img = np.clip(img, 0, 255)
    if affine is None:
        affine = affine_for(spacing, rng)
    return Volume(img.astype(np.float32), lesions, vessels, spacing, affine, modality, objects)


# ---------------------------------------------------------------------------------------------
# clicks


def interior_point(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple:
    """The mask voxel farthest (in mm) from the nearest voxel outside the mask (the mask's
    6-neighbour outer shell; outside the array counts as outside). Ties: lowest (x, y, z) in C
    order. Returns (x, y, z) voxel indices."""
    m = np.pad(mask.astype(bool), 1)
    shell = np.zeros_like(m)
    for ax in range(3):
        for sh in (1, -1):
            shell |= np.roll(m, sh, axis=ax)
    shell &= ~m
    inside = np.argwhere(m).astype(np.float64)
    out = np.argwhere(shell).astype(np.float64)
    if len(inside) == 0:
        raise ValueError("empty mask")
    sp = np.asarray(spacing, dtype=np.float64)
    a = inside * sp
    b = out * sp
    best = np.full(len(a), np.inf)
    for s in range(0, len(b), 2048):
        bb = b[s:s + 2048]
        d2 = (a * a).sum(1)[:, None] - 2 * a @ bb.T + (bb * bb).sum(1)[None, :]
        best = np.minimum(best, d2.min(1))
    i = int(np.argmax(best))  # first maximum = lowest C-order index among ties
    return tuple(int(v) - 1 for v in inside[i])


# ---------------------------------------------------------------------------------------------
# writers


def write_nifti(path, data, affine, dtype="int16", slope: float = 1.0, inter: float = 0.0, sform_code=1,
                qform_code=1, byteorder="<", pixdim=None, dims_override=None):
    """Writes `data` (physical values) as NIfTI-1. Integer dtypes store round((data - inter) / slope)
    with scl_slope / scl_inter in the header; float dtypes store the values with slope 1, inter 0
    (slope/inter then stay as given only if not 1/0). sform_code / qform_code 0 leaves that
    transform out. `pixdim` overrides pixdim[1..3] (e.g. zeros); `dims_override` patches dim[1..3]
    in the written header without changing the data (a header that lies)."""
    import nibabel as nib

    path = Path(path)
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        raw = np.clip(np.round((np.asarray(data, np.float64) - inter) / slope), info.min, info.max).astype(np_dtype)
    else:
        raw = np.asarray(data).astype(np_dtype)
        if slope != 1.0 or inter != 0.0:
            raw = ((np.asarray(data, np.float64) - inter) / slope).astype(np_dtype)
    raw = raw.astype(raw.dtype.newbyteorder(byteorder))
    hdr = nib.Nifti1Header(endianness=byteorder)
    img = nib.Nifti1Image(raw, affine, header=hdr)
    img.header.set_data_dtype(raw.dtype)
    img.set_sform(affine if sform_code else None, code=int(sform_code))
    img.set_qform(affine if qform_code else None, code=int(qform_code))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(slope, inter)
    if not qform_code:
        # set_qform(None) leaves pixdim alone; make it the column norms of the affine
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        img.header.set_zooms(tuple(zooms) + tuple(img.header.get_zooms()[3:]))
    img.to_filename(str(path))
    if pixdim is not None or dims_override is not None:
        _patch_header(path, pixdim=pixdim, dims=dims_override, byteorder=byteorder)
    return path


def _patch_header(path: Path, pixdim=None, dims=None, byteorder="<"):
    """Rewrites pixdim[1..3] and/or dim[1..3] in an existing NIfTI-1 file (gzip or not)."""
    raw = path.read_bytes()
    gz = path.suffix == ".gz"
    if gz:
        raw = gzip.decompress(raw)
    b = bytearray(raw)
    if dims is not None:
        for i, d in enumerate(dims):
            struct.pack_into(byteorder + "h", b, 40 + 2 * (i + 1), int(d))
    if pixdim is not None:
        for i, p in enumerate(pixdim):
            struct.pack_into(byteorder + "f", b, 76 + 4 * (i + 1), float(p))
    out = bytes(b)
    if gz:
        out = gzip.compress(out, mtime=0)
    path.write_bytes(out)


def _write_nifti2_huge(path: Path, dims):
    """A NIfTI-2 file with 4x4x4 int16 zeros whose header claims `dims`."""
    import nibabel as nib

    img = nib.Nifti2Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))
    img.header.set_data_dtype(np.int16)
    img.to_filename(str(path))
    b = bytearray(path.read_bytes())
    for i, d in enumerate(dims):  # NIfTI-2: dim is int64[8] at offset 16
        struct.pack_into("<q", b, 16 + 8 * (i + 1), int(d))
    path.write_bytes(bytes(b))


def _uid(*parts) -> str:
    """A deterministic UID under the UUID-derived root 2.25 (128-bit integer from sha256)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(h[:32], 16) >> 1}"


def write_dicom_series(folder, data, spacing, origin_lps=(0.0, 0.0, 0.0), orientation=(1, 0, 0, 0, 1, 0),
                       slope: float = 1.0, intercept: float = -1024.0, signed: bool = False, seed: int = 0,
                       description: str = "edgeseg synthetic CT series"):
    """One CT Image Storage file per z slice of `data` [X, Y, Z] (physical values, e.g. HU).
    Slice k: Rows = Y, Columns = X, pixel (row j, column i) = data[i, j, k]; Image Orientation
    (Patient) = `orientation` (row direction = +i, column direction = +j, LPS); Image Position
    (Patient) = origin + k * spacing_z * (row x column); Pixel Spacing = [spacing_y, spacing_x].
    Stored values round((v - intercept) / slope) as uint16 (or int16 with signed=True).
    File names are random hex (sorted order != slice order) and Instance Number counts down as the
    position along the normal goes up, so only Image Position (Patient) orders the slices.
    Returns the LPS affine (voxel (i, j, k) -> patient LPS mm) the series describes."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.dcm"):
        f.unlink()
    nx, ny, nz = data.shape
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    origin = np.asarray(origin_lps, dtype=np.float64)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    raw = np.clip(np.round((np.asarray(data, np.float64) - intercept) / slope), info.min, info.max).astype(dtype)
    rng = np.random.default_rng(seed)
    names = [hashlib.sha1(f"{seed}-{k}-{rng.random()}".encode()).hexdigest()[:12].upper() for k in range(nz)]
    study, series, frame = _uid("study", seed), _uid("series", seed), _uid("frame", seed)
    for k in range(nz):
        sop = _uid("sop", seed, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid("edgeseg-volumes")
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.PatientName = "Phantom^Synthetic"
        ds.PatientID = "EDGESEG-PHANTOM"
        ds.StudyDate = "20240101"
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = nz - k
        pos = origin + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.SpacingBetweenSlices = f"{spacing[2]:.4f}"
        ds.SliceLocation = f"{float(pos @ normal):.4f}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = np.ascontiguousarray(raw[:, :, k].T).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        pydicom.dcmwrite(folder / f"{names[k]}.dcm", ds, enforce_file_format=True)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[0]
    lps[:3, 1] = col * spacing[1]
    lps[:3, 2] = normal * spacing[2]
    lps[:3, 3] = origin
    return lps


def write_png_sweep(folder, data, spacing, lo: float = 0.0, hi: float = 255.0):
    """8-bit grey PNG per z slice (frame_000.png ...; image row = y, column = x) and sweep.json
    with the spacing and the intensity mapping (value = lo + png * (hi - lo) / 255)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("frame_*.png"):
        f.unlink()
    u8 = np.clip(np.round((np.asarray(data, np.float64) - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    for k in range(u8.shape[2]):
        Image.fromarray(np.ascontiguousarray(u8[:, :, k].T), mode="L").save(folder / f"frame_{k:03d}.png", optimize=True)
    meta = {"frames": int(u8.shape[2]), "width": int(u8.shape[0]), "height": int(u8.shape[1]),
            "spacing": [float(s) for s in spacing], "axis": "z", "file_pattern": "frame_%03d.png",
            "value_mapping": {"lo": lo, "hi": hi}}
    (folder / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n")
    return u8


# ---------------------------------------------------------------------------------------------
# fixtures


def _nib_props(path: Path, mask_path: Path | None = None) -> dict:
    import nibabel as nib

    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float64)
    hdr = img.header
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    props = {
        "file": path.name,
        "format": "nifti-1",
        "dims": [int(d) for d in img.shape],
        "pixdim": [float(p) for p in hdr["pixdim"][1:1 + len(img.shape)]],
        "datatype": str(img.get_data_dtype().name),
        "byteorder": "big" if img.get_data_dtype().byteorder == ">" else "little",
        "scl_slope": float(img.dataobj.slope),
        "scl_inter": float(img.dataobj.inter),
        "sform_code": int(scode),
        "qform_code": int(qcode),
        "affine": np.round(img.affine, 6).tolist(),
        "affine_source": "sform" if scode > 0 else ("qform" if qcode > 0 else "fallback (pixdim)"),
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": float(data.mean()),
    }
    if mask_path is not None:
        m = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        vox = abs(float(np.linalg.det(img.affine[:3, :3])))
        props["mask"] = mask_path.name
        props["mask_voxels"] = int(m.sum())
        props["mask_volume_ml"] = round(float(m.sum()) * vox / 1000.0, 4)
    return props


def write_fixtures(out: Path = FIXTURES_DIR) -> dict:
    """The committed volume fixtures (all deterministic). See fixtures.md (written here too)."""
    import nibabel as nib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    expected: dict = {"generator": "models/tools/volumes.py fixtures", "good": {}, "bad": {}, "eval": []}
    notes: list[str] = []

    # lesion.nii.gz: one dark CT lesion, anisotropic 0.8 x 0.8 x 2.0 mm, int16 stored HU + 1024
    # with scl_inter -1024, sform (code 1) and qform (code 1), rotated 12 degrees about z.
    aff = affine_for((0.8, 0.8, 2.0), origin=(-31.5, 24.0, -18.0), flips=(-1, -1, 1), rotate_deg=12.0)
    v = make_volume(101, modality="CT", shape=(64, 56, 32), spacing=(0.8, 0.8, 2.0), n_lesions=1, n_vessels=0,
                    lesion_axes=(7.0, 12.0), affine=aff)
    write_nifti(out / "lesion.nii.gz", v.data, aff, "int16", slope=1.0, inter=-1024.0, sform_code=1, qform_code=1)
    write_nifti(out / "lesion_mask.nii.gz", (v.lesions > 0).astype(np.float32), aff, "uint8", sform_code=1, qform_code=1)
    expected["good"]["lesion.nii.gz"] = _nib_props(out / "lesion.nii.gz", out / "lesion_mask.nii.gz")
    expected["good"]["lesion.nii.gz"]["point"] = list(interior_point(v.lesions > 0, v.spacing))
    expected["good"]["lesion_mask.nii.gz"] = _nib_props(out / "lesion_mask.nii.gz")
    notes.append("`lesion.nii.gz` / `lesion_mask.nii.gz`: CT-like 64x56x32, 0.8x0.8x2.0 mm, int16 stored HU+1024 "
                 "with scl_slope 1, scl_inter -1024; sform and qform (code 1) equal, flipped x/y and rotated 12 deg "
                 "about z; one dark lesion; the mask is uint8 0/1 on the same grid.")

    # lesion.nii: uncompressed, smaller, qform only (sform_code 0), float32 bright US-like lesion.
    aff2 = affine_for((1.2, 1.0, 1.5), origin=(10.0, -20.0, 5.0), flips=(1, 1, 1))
    v2 = make_volume(102, modality="US", shape=(40, 48, 32), spacing=(1.2, 1.0, 1.5), n_lesions=1, n_vessels=0,
                     lesion_axes=(6.0, 10.0), affine=aff2)
    write_nifti(out / "lesion.nii", v2.data, aff2, "int16", slope=0.5, inter=0.0, sform_code=0, qform_code=1)
    write_nifti(out / "lesion_nii_mask.nii.gz", (v2.lesions > 0).astype(np.float32), aff2, "uint8", sform_code=0,
                qform_code=1)
    expected["good"]["lesion.nii"] = _nib_props(out / "lesion.nii", out / "lesion_nii_mask.nii.gz")
    expected["good"]["lesion.nii"]["point"] = list(interior_point(v2.lesions > 0, v2.spacing))
    notes.append("`lesion.nii` (+ `lesion_nii_mask.nii.gz`): uncompressed, ultrasound-like 40x48x32, 1.2x1.0x1.5 mm, "
                 "int16 with scl_slope 0.5 (values 0..255 in steps of 0.5), qform only (sform_code 0).")

    # DICOM series: CT, 0.7 x 0.7 mm pixels, 2 mm slices, rescale slope 0.5 intercept -1024.
    sp3 = (0.7, 0.7, 2.0)
    v3 = make_volume(103, modality="CT", shape=(64, 64, 24), spacing=sp3, n_lesions=1, n_vessels=1,
                     lesion_axes=(6.0, 11.0), affine=np.eye(4))
    origin = (-22.4, -30.1, 112.5)
    lps = write_dicom_series(out / "series", v3.data, sp3, origin_lps=origin, slope=0.5, intercept=-1024.0, seed=103)
    stored = np.clip(np.round((v3.data.astype(np.float64) + 1024.0) / 0.5), 0, 65535)
    phys = stored * 0.5 - 1024.0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    write_nifti(out / "series_mask.nii.gz", (v3.lesions > 0).astype(np.float32), ras, "uint8")
    expected["good"]["series"] = {
        "file": "series/", "format": "dicom-series", "files": int(v3.shape[2]),
        "dims": list(v3.shape), "pixdim": list(sp3),
        "rows": int(v3.shape[1]), "columns": int(v3.shape[0]),
        "pixel_spacing": [sp3[1], sp3[0]], "slice_thickness": sp3[2], "spacing_between_slices": sp3[2],
        "rescale_slope": 0.5, "rescale_intercept": -1024.0, "bits_allocated": 16, "pixel_representation": 0,
        "first_slice_ipp": list(origin), "last_slice_ipp": [round(float(x), 4) for x in lps[:3, 3] + (v3.shape[2] - 1) * lps[:3, 2]],
        "image_orientation": [1, 0, 0, 0, 1, 0],
        "affine_lps": np.round(lps, 6).tolist(), "affine": np.round(ras, 6).tolist(),
        "min": float(phys.min()), "max": float(phys.max()), "mean": float(phys.mean()),
        "mask": "series_mask.nii.gz", "mask_voxels": int((v3.lesions > 0).sum()),
        "mask_volume_ml": round(float((v3.lesions > 0).sum()) * float(np.prod(sp3)) / 1000, 4),
        "point": list(interior_point(v3.lesions > 0, sp3)),
        "note": "voxel (i,j,k): i = column, j = row, k = slice index after sorting by Image Position (Patient) "
                "along the normal (ascending); Instance Number runs the other way; file names are random.",
    }
    notes.append("`series/`: DICOM CT series, 24 files of 64x64, Pixel Spacing 0.7\\0.7, Slice Thickness and "
                 "Spacing Between Slices 2.0, axial orientation, uint16 stored with Rescale Slope 0.5 / Intercept "
                 "-1024; random file names, Instance Number descending with position: sort by IPP. "
                 "`series_mask.nii.gz` is its lesion mask (RAS affine = diag(-1,-1,1) x the LPS geometry). "
                 "One lesion and one vessel.")

    # PNG sweep: ultrasound-like, 48x40 frames, 32 frames.
    v4 = make_volume(104, modality="US", shape=(48, 40, 32), spacing=(0.5, 0.5, 1.0), n_lesions=1, n_vessels=1,
                     lesion_axes=(4.0, 7.0), affine=np.eye(4))
    u8 = write_png_sweep(out / "sweep", v4.data, (0.5, 0.5, 1.0))
    write_nifti(out / "sweep_mask.nii.gz", (v4.lesions > 0).astype(np.float32), np.diag([0.5, 0.5, 1.0, 1.0]), "uint8")
    expected["good"]["sweep"] = {
        "file": "sweep/", "format": "png-stack", "files": 32, "dims": list(u8.shape), "pixdim": [0.5, 0.5, 1.0],
        "datatype": "uint8", "min": float(u8.min()), "max": float(u8.max()), "mean": float(u8.mean()),
        "mask": "sweep_mask.nii.gz", "mask_voxels": int((v4.lesions > 0).sum()),
        "mask_volume_ml": round(float((v4.lesions > 0).sum()) * 0.25 / 1000, 4),
        "point": list(interior_point(v4.lesions > 0, (0.5, 0.5, 1.0))),
    }
    notes.append("`sweep/`: 32 grey 8-bit PNG frames (frame_000.png = z 0), 48 wide x 40 high, ultrasound-like, "
                 "`sweep.json` gives spacing 0.5x0.5x1.0 mm; `sweep_mask.nii.gz` the lesion mask.")

    # odd-but-valid data types and byte orders
    small = make_volume(105, modality="CT", shape=(24, 20, 16), spacing=(1.5, 1.5, 2.5), n_lesions=1, n_vessels=0,
                        lesion_axes=(4.0, 7.0), affine=affine_for((1.5, 1.5, 2.5), origin=(0.0, 0.0, 0.0), flips=(1, 1, 1)))
    aff_s = small.affine
    write_nifti(out / "float64.nii", small.data, aff_s, "float64")
    write_nifti(out / "uint8.nii", np.clip(small.data + 100, 0, 255), aff_s, "uint8")
    write_nifti(out / "big_endian.nii", small.data, aff_s, "int16", byteorder=">")
    write_nifti(out / "float32.nii.gz", small.data, aff_s, "float32", sform_code=2, qform_code=0)
    write_nifti(out / "small_mask.nii.gz", (small.lesions > 0).astype(np.float32), aff_s, "uint8")
    for name in ("float64.nii", "uint8.nii", "big_endian.nii", "float32.nii.gz"):
        expected["good"][name] = _nib_props(out / name, out / "small_mask.nii.gz")
    notes.append("`float64.nii`, `uint8.nii` (HU + 100 clipped to 0..255), `big_endian.nii` (int16, '>' byte order), "
                 "`float32.nii.gz` (sform code 2, no qform): the same 24x20x16 CT-like volume, 1.5x1.5x2.5 mm; "
                 "`small_mask.nii.gz` its lesion mask.")

    # bad inputs
    full = (out / "lesion.nii.gz").read_bytes()
    (out / "truncated.nii.gz").write_bytes(full[: len(full) // 3])
    expected["bad"]["truncated.nii.gz"] = "gzip stream cut at one third: unexpected end of data"
    d4 = np.stack([small.data, small.data + 10], axis=-1)
    write_nifti(out / "4d.nii.gz", d4, aff_s, "int16")
    expected["bad"]["4d.nii.gz"] = "dim[0] = 4, dims 24x20x16x2: a 4-D (time) image, not one volume"
    write_nifti(out / "degenerate_spacing.nii", small.data, np.diag([1.0, 1.0, 1.0, 1.0]), "int16", sform_code=0,
                qform_code=0, pixdim=(0.0, 1.5, 2.5))
    expected["bad"]["degenerate_spacing.nii"] = "pixdim[1] = 0 with sform_code 0 and qform_code 0: no usable spacing"
    tiny = np.zeros((4, 4, 4), dtype=np.float32)
    # NIfTI-1 dims are int16: 32767 is the most a NIfTI-1 header can claim.
    write_nifti(out / "huge_dims.nii", tiny, np.eye(4), "int16", dims_override=(32767, 32767, 32767))
    expected["bad"]["huge_dims.nii"] = ("NIfTI-1 header dims 32767^3 int16 (7e13 bytes; int16 dims cannot say 100000) "
                                        "but the file holds 64 voxels: must fail before allocating")
    _write_nifti2_huge(out / "huge_dims_nifti2.nii", (100000, 100000, 100000))
    expected["bad"]["huge_dims_nifti2.nii"] = ("NIfTI-2 header (540-byte, int64 dims) claiming 100000^3 int16 "
                                               "(2e15 bytes), 64 voxels of data: must fail before allocating "
                                               "(or as unsupported NIfTI-2)")
    notes.append("Bad inputs: `truncated.nii.gz` (first third of lesion.nii.gz), `4d.nii.gz` (24x20x16x2), "
                 "`degenerate_spacing.nii` (pixdim[1] = 0, no sform/qform), `huge_dims.nii` (NIfTI-1 header says "
                 "32767^3 int16, 480 bytes of file), `huge_dims_nifti2.nii` (NIfTI-2 header says 100000^3).")

    # held-out eval set
    ev = out / "eval"
    ev.mkdir(exist_ok=True)
    lines = []
    specs = [
        (201, "CT", (64, 64, 32), (0.8, 0.8, 2.0), 1, 1),
        (202, "US", (56, 56, 48), (1.0, 1.0, 1.0), 2, 0),
        (203, "CT", (48, 48, 48), (1.5, 1.5, 1.5), 2, 1),
        (204, "US", (64, 48, 40), (0.7, 0.7, 1.5), 1, 1),
        (205, "CT", (56, 56, 40), (1.0, 1.0, 2.5), 3, 0),
        (206, "US", (48, 56, 40), (1.2, 1.2, 1.2), 1, 2),
    ]
    for n, (seed, mod, shp, sp, nl, nv) in enumerate(specs):
        vv = make_volume(seed, modality=mod, shape=shp, spacing=sp, n_lesions=nl, n_vessels=nv,
                         affine=affine_for(sp, np.random.default_rng(seed)))
        target = 1
        mask = vv.lesions == target
        vname, mname = f"v{n}.nii.gz", f"v{n}_mask.nii.gz"
        if mod == "CT":
            write_nifti(ev / vname, vv.data, vv.affine, "int16", slope=1.0, inter=-1024.0)
        else:
            write_nifti(ev / vname, vv.data, vv.affine, "int16", slope=0.25, inter=0.0)
        write_nifti(ev / mname, mask.astype(np.float32), vv.affine, "uint8")
        pt = interior_point(mask, sp)
        lines.append({"volume": vname, "mask": mname, "points": [list(pt)]})
        props = _nib_props(ev / vname, ev / mname)
        props.update({"modality": mod, "lesions": int(vv.lesions.max()), "vessels": int(len([o for o in vv.objects if o["kind"] == "vessel"])),
                      "target_lesion": target, "point": list(pt)})
        expected["eval"].append(props)
    (ev / "samples.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    notes.append("`eval/`: 6 held-out volumes v0..v5 (.nii.gz, int16; CT with scl_inter -1024, US with scl_slope 0.25) "
                 "with the mask of lesion 1 (`vN_mask.nii.gz`) and `samples.jsonl` lines {volume, mask, points}: "
                 "one click, the mask voxel farthest (mm) from the mask's outside, as [x, y, z] voxel indices of "
                 "the input. Volumes may hold further lesions and vessels that are not the target.")

    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    _write_fixtures_md(out, expected, notes)
    return expected


def _write_fixtures_md(out: Path, expected: dict, notes: list[str]):
    rows = ["| file | format | dims | spacing (mm) | stored type | values after scaling (min / max / mean) | mask voxels | mask mL |",
            "|---|---|---|---|---|---|---|---|"]
    for name, p in expected["good"].items():
        rows.append(
            f"| `{name}` | {p['format']} | {'x'.join(str(d) for d in p['dims'])} | "
            f"{' x '.join(f'{s:g}' for s in p['pixdim'][:3])} | {p.get('datatype', 'uint16 + rescale')}"
            f"{' (big-endian)' if p.get('byteorder') == 'big' else ''} | "
            f"{p['min']:.2f} / {p['max']:.2f} / {p['mean']:.3f} | {p.get('mask_voxels', '')} | {p.get('mask_volume_ml', '')} |")
    for p in expected["eval"]:
        rows.append(
            f"| `eval/{p['file']}` | nifti-1 ({p['modality']}) | {'x'.join(str(d) for d in p['dims'])} | "
            f"{' x '.join(f'{s:g}' for s in p['pixdim'][:3])} | {p['datatype']} | "
            f"{p['min']:.2f} / {p['max']:.2f} / {p['mean']:.3f} | {p['mask_voxels']} | {p['mask_volume_ml']} |")
    bad = [f"| `{k}` | {v} |" for k, v in expected["bad"].items()]
    text = (
        "# Volume fixtures\n\n"
        "Made by `python models/tools/volumes.py fixtures` (deterministic; re-running rewrites every file\n"
        "byte for byte). `expected.json` holds, per good file, what nibabel reports: dims, pixdim, data type,\n"
        "byte order, scl_slope / scl_inter, sform / qform codes, the 4x4 affine nibabel uses (sform when\n"
        "sform_code > 0, else qform), min / max / mean of the data after scaling, and the mask voxel count and\n"
        "volume; for the DICOM series the same from the Rescale tags and Image Position / Orientation\n"
        "(Patient), with the LPS and the equivalent RAS affine. Masks are uint8 0/1 NIfTI on the same grid.\n"
        "`point` is the mask voxel farthest (in mm) from the mask's outside, [x, y, z] voxel indices.\n\n"
        + "\n".join(f"- {n}" for n in notes) + "\n\n## Good files\n\n" + "\n".join(rows)
        + "\n\n## Bad files (each must give an error naming the file, never a panic)\n\n| file | what is wrong |\n|---|---|\n"
        + "\n".join(bad) + "\n"
    )
    (out / "fixtures.md").write_text(text)


def write_dataset(out: Path, count: int, seed: int):
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(count):
        v = make_volume(seed * 100003 + n)
        name = f"v{n:03d}"
        if v.modality == "CT":
            write_nifti(out / f"{name}.nii.gz", v.data, v.affine, "int16", slope=1.0, inter=-1024.0)
        else:
            write_nifti(out / f"{name}.nii.gz", v.data, v.affine, "int16", slope=0.25, inter=0.0)
        write_nifti(out / f"{name}_lesions.nii.gz", v.lesions.astype(np.float32), v.affine, "int16")
        write_nifti(out / f"{name}_vessels.nii.gz", (v.vessels > 0).astype(np.float32), v.affine, "uint8")
        lines.append({"volume": f"{name}.nii.gz", "lesion_labels": f"{name}_lesions.nii.gz",
                      "vessel_mask": f"{name}_vessels.nii.gz", "seed": seed * 100003 + n, **v.describe()})
    (out / "volumes.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    print(f"wrote {count} volumes to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default=str(FIXTURES_DIR))
    d = sub.add_parser("dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--count", type=int, default=20)
    d.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("show")
    s.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "fixtures":
        exp = write_fixtures(Path(args.out))
        total = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
        print(f"wrote {len(exp['good'])} good, {len(exp['bad'])} bad, {len(exp['eval'])} eval files to {args.out} "
              f"({total / 1e6:.2f} MB)")
    elif args.cmd == "dataset":
        write_dataset(Path(args.out), args.count, args.seed)
    else:
        v = make_volume(args.seed)
        print(json.dumps(v.describe(), indent=1))


if __name__ == "__main__":
    main()
