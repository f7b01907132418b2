//! NIfTI-1 single files (`.nii`, and `.nii.gz` recognised by the gzip magic): read one 3D
//! volume, write masks and probability maps.
//!
//! Reading:
//! - the byte order is the one in which `sizeof_hdr` reads 348; 540 (NIfTI-2) is refused;
//! - the magic must be `n+1` (a single file); `ni1` (a header/image pair) is refused;
//! - `dim[0]` is 3, or 4 with `dim[4]` volumes: a 4D file with more than one volume needs a
//!   volume index below `dim[4]`;
//! - datatypes u8, i8, u16, i16, u32, i32, u64, i64, f32 and f64 become `f32` through
//!   `scl_slope`/`scl_inter` (a slope of 0 or NaN means no scaling, as nibabel); RGB, complex,
//!   binary and 128-bit types are refused by code;
//! - the spacing is `pixdim[1..=3]`, which must be finite and positive; spatial units of
//!   metres or microns (`xyzt_units`) are converted to mm, in the affine too;
//! - the affine is nibabel's `get_best_affine`: the sform when `sform_code > 0`, else the
//!   qform (quaternion, `qfac` = sign of `pixdim[0]`, NIfTI's `quatern_to_mat44`) when
//!   `qform_code > 0`, else the Analyze-style base affine (`diag(-dx, dy, dz)`, centred on the
//!   volume);
//! - sizes are checked against [`MAX_SIDE`](super::MAX_SIDE) and
//!   [`MAX_VOXELS`](super::MAX_VOXELS) from the header, before any voxel is read; voxels are
//!   then streamed in chunks (a gzip stream is decompressed only up to the chosen volume), so
//!   a cut file or a cut gzip stream is reported with the bytes it needs and holds.
//!
//! Writing ([`write_mask`], [`write_probability`]): little-endian NIfTI-1, `n+1`, voxels at
//! byte 352, `pixdim[1..=3]` = the spacing, units mm, sform (code 1) = the affine, and qform
//! (code 1) from its rotation by NIfTI's `mat44_to_quatern` (polar decomposition, so an
//! oblique affine is kept as well as a quaternion can); gzip-compressed when the name ends in
//! `.gz`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{check_grid, check_spacing, det3, grid_voxels, linear, Mat3, Volume, VolumeError};
use crate::input::read_up_to;

/// Bytes of a NIfTI-1 header.
const HEADER_BYTES: usize = 348;
/// Where a written file's voxels start: the header and an empty extension flag.
const WRITE_OFFSET: usize = 352;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Bytes read and converted at a time.
const CHUNK_BYTES: usize = 1 << 20;

/// Whether `head` starts a NIfTI file: the gzip magic, or a `sizeof_hdr` of 348 (or 540,
/// NIfTI-2, refused later with a clear message) in either byte order.
pub(crate) fn sniff(head: &[u8]) -> bool {
    if head.starts_with(&GZIP_MAGIC) {
        return true;
    }
    let Some(&[a, b, c, d]) = head.get(..4) else {
        return false;
    };
    let (le, be) = (
        i32::from_le_bytes([a, b, c, d]),
        i32::from_be_bytes([a, b, c, d]),
    );
    [348, 540].contains(&le) || [348, 540].contains(&be)
}

/// Voxel types this module reads (and the two it writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    fn from_code(code: i16) -> Result<DataType, String> {
        Ok(match code {
            2 => DataType::U8,
            256 => DataType::I8,
            512 => DataType::U16,
            4 => DataType::I16,
            768 => DataType::U32,
            8 => DataType::I32,
            1280 => DataType::U64,
            1024 => DataType::I64,
            16 => DataType::F32,
            64 => DataType::F64,
            _ => {
                let name = match code {
                    1 => "binary",
                    32 => "complex64",
                    128 => "RGB24",
                    1536 => "float128",
                    1792 => "complex128",
                    2048 => "complex256",
                    2304 => "RGBA32",
                    _ => "unknown",
                };
                return Err(format!(
                    "datatype {code} ({name}) is not supported (supported: uint8, int8, uint16, \
                     int16, uint32, int32, uint64, int64, float32, float64)"
                ));
            }
        })
    }

    fn code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::I16 => 4,
            DataType::U32 => 768,
            DataType::I32 => 8,
            DataType::U64 => 1280,
            DataType::I64 => 1024,
            DataType::F32 => 16,
            DataType::F64 => 64,
        }
    }

    fn bytes(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    /// Appends the values of `raw` (whole values, in the file's byte order) to `out` through
    /// `v * slope + inter`.
    fn convert(self, raw: &[u8], big: bool, scale: Scale, out: &mut Vec<f32>) {
        fn push<const N: usize>(
            raw: &[u8],
            out: &mut Vec<f32>,
            scale: Scale,
            value: impl Fn([u8; N]) -> f64,
        ) {
            out.extend(raw.chunks_exact(N).map(|c| {
                let mut bytes = [0u8; N];
                bytes.copy_from_slice(c);
                scale.apply(value(bytes))
            }));
        }
        macro_rules! number {
            ($t:ty) => {
                |b| {
                    if big {
                        <$t>::from_be_bytes(b) as f64
                    } else {
                        <$t>::from_le_bytes(b) as f64
                    }
                }
            };
        }
        match self {
            DataType::U8 => push::<1>(raw, out, scale, |b| f64::from(b[0])),
            DataType::I8 => push::<1>(raw, out, scale, |b| f64::from(b[0] as i8)),
            DataType::U16 => push::<2>(raw, out, scale, number!(u16)),
            DataType::I16 => push::<2>(raw, out, scale, number!(i16)),
            DataType::U32 => push::<4>(raw, out, scale, number!(u32)),
            DataType::I32 => push::<4>(raw, out, scale, number!(i32)),
            DataType::U64 => push::<8>(raw, out, scale, number!(u64)),
            DataType::I64 => push::<8>(raw, out, scale, number!(i64)),
            DataType::F32 => push::<4>(raw, out, scale, number!(f32)),
            DataType::F64 => push::<8>(raw, out, scale, number!(f64)),
        }
    }
}

/// `scl_slope` and `scl_inter`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scale {
    slope: f64,
    inter: f64,
}

impl Scale {
    fn apply(self, v: f64) -> f32 {
        (v * self.slope + self.inter) as f32
    }
}

/// The parts of a NIfTI-1 header this reader uses, checked.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    big: bool,
    dims: [usize; 3],
    volumes: usize,
    datatype: DataType,
    /// `pixdim[1..=3]` in mm.
    spacing: [f64; 3],
    vox_offset: u64,
    scale: Scale,
    affine: [[f64; 4]; 4],
}

/// Reads fields of a header in its byte order.
struct Fields<'a> {
    bytes: &'a [u8; HEADER_BYTES],
    big: bool,
}

impl Fields<'_> {
    fn four(&self, at: usize) -> [u8; 4] {
        let b = &self.bytes[at..at + 4];
        [b[0], b[1], b[2], b[3]]
    }

    fn i16(&self, at: usize) -> i16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        if self.big {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }

    fn i32(&self, at: usize) -> i32 {
        if self.big {
            i32::from_be_bytes(self.four(at))
        } else {
            i32::from_le_bytes(self.four(at))
        }
    }

    fn f32(&self, at: usize) -> f64 {
        f64::from(if self.big {
            f32::from_be_bytes(self.four(at))
        } else {
            f32::from_le_bytes(self.four(at))
        })
    }

    fn f32s<const N: usize>(&self, at: usize) -> [f64; N] {
        std::array::from_fn(|i| self.f32(at + 4 * i))
    }
}

fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, String> {
    let sizeof = |big| Fields { bytes, big }.i32(0);
    let big = match (sizeof(false), sizeof(true)) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => {
            return Err(
                "this is a NIfTI-2 header (sizeof_hdr 540), which is not supported; \
                        save it as NIfTI-1"
                    .to_string(),
            )
        }
        (le, _) => return Err(format!("sizeof_hdr is {le}, expected 348")),
    };
    let f = Fields { bytes, big };
    match &bytes[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(
                "magic \"ni1\" marks a header/image pair (.hdr + .img), which this reader \
                        does not read; save it as a single .nii file"
                    .to_string(),
            )
        }
        other => {
            return Err(format!(
                "magic is {:?}, expected \"n+1\" (an Analyze 7.5 header is not NIfTI)",
                String::from_utf8_lossy(other).trim_end_matches('\0')
            ))
        }
    }

    let dim: [i16; 8] = std::array::from_fn(|i| f.i16(40 + 2 * i));
    let rank = dim[0];
    if rank != 3 && rank != 4 {
        return Err(format!(
            "dim[0] is {rank}: only 3D and 4D images are read (dim = {dim:?})"
        ));
    }
    let used = &dim[1..=rank as usize];
    if used.iter().any(|&d| d < 1) {
        return Err(format!(
            "dim[1..={rank}] is {used:?}, expected positive sizes"
        ));
    }
    let dims = [dim[1] as usize, dim[2] as usize, dim[3] as usize];
    let volumes = if rank == 4 { dim[4] as usize } else { 1 };

    let datatype = DataType::from_code(f.i16(70))?;
    let pixdim: [f64; 8] = f.f32s(76);
    let units = match bytes[123] & 0x07 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let raw_spacing = [pixdim[1], pixdim[2], pixdim[3]];
    check_spacing(raw_spacing).map_err(|_| {
        format!(
            "pixdim[1..=3] (voxel spacing) is {raw_spacing:?}, expected finite positive numbers"
        )
    })?;

    let vox_offset = f.f32(108);
    if !(vox_offset >= WRITE_OFFSET as f64 && vox_offset.fract() == 0.0) {
        return Err(format!(
            "vox_offset is {vox_offset}, expected a whole number of bytes from {WRITE_OFFSET}"
        ));
    }

    let (slope, inter) = (f.f32(112), f.f32(116));
    let scale = if slope == 0.0 || !slope.is_finite() {
        Scale {
            slope: 1.0,
            inter: 0.0,
        }
    } else if inter.is_finite() {
        Scale { slope, inter }
    } else {
        return Err(format!("scl_slope is {slope} but scl_inter is {inter}"));
    };

    let (qform_code, sform_code) = (f.i16(252), f.i16(254));
    let mut affine = if sform_code > 0 {
        let srow = |at| f.f32s::<4>(at);
        [srow(280), srow(296), srow(312), [0.0, 0.0, 0.0, 1.0]]
    } else if qform_code > 0 {
        let [b, c, d, x, y, z] = f.f32s(256);
        let qfac = if pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        quatern_to_mat44([b, c, d], [x, y, z], raw_spacing, qfac)
    } else {
        base_affine(dims, raw_spacing)
    };
    for row in &mut affine[..3] {
        for v in row.iter_mut() {
            *v *= units;
        }
    }
    Ok(Header {
        big,
        dims,
        volumes,
        datatype,
        spacing: raw_spacing.map(|s| s * units),
        vox_offset: vox_offset as u64,
        scale,
        affine,
    })
}

/// nibabel's base affine when neither form is set: voxel sizes with x flipped, the origin at
/// the centre of the volume.
fn base_affine(dims: [usize; 3], spacing: [f64; 3]) -> [[f64; 4]; 4] {
    let zoom = [-spacing[0], spacing[1], spacing[2]];
    let mut a = super::IDENTITY;
    for i in 0..3 {
        a[i][i] = zoom[i];
        a[i][3] = -(dims[i] as f64 - 1.0) / 2.0 * zoom[i];
    }
    a
}

/// NIfTI's `quatern_to_mat44`: rotation from the quaternion `(b, c, d)` (with `a` from unit
/// length; a 180° rotation when `b² + c² + d²` reaches 1), scaled by the voxel sizes, z
/// negated when `qfac` is negative.
fn quatern_to_mat44(q: [f64; 3], offset: [f64; 3], spacing: [f64; 3], qfac: f64) -> [[f64; 4]; 4] {
    let [mut b, mut c, mut d] = q;
    let norm2 = b * b + c * c + d * d;
    let mut a = 1.0 - norm2;
    if a < 1e-7 {
        let k = 1.0 / norm2.sqrt();
        (b, c, d) = (b * k, c * k, d * k);
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let [xd, yd, mut zd] = spacing;
    if qfac < 0.0 {
        zd = -zd;
    }
    [
        [
            (a * a + b * b - c * c - d * d) * xd,
            2.0 * (b * c - a * d) * yd,
            2.0 * (b * d + a * c) * zd,
            offset[0],
        ],
        [
            2.0 * (b * c + a * d) * xd,
            (a * a + c * c - b * b - d * d) * yd,
            2.0 * (c * d - a * b) * zd,
            offset[1],
        ],
        [
            2.0 * (b * d - a * c) * xd,
            2.0 * (c * d + a * b) * yd,
            (a * a + d * d - c * c - b * b) * zd,
            offset[2],
        ],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn inverse33(m: &Mat3) -> Mat3 {
    let det = det3(m);
    let c =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    [
        [
            c(1, 2, 1, 2) / det,
            -c(0, 2, 1, 2) / det,
            c(0, 1, 1, 2) / det,
        ],
        [
            -c(1, 2, 0, 2) / det,
            c(0, 2, 0, 2) / det,
            -c(0, 1, 0, 2) / det,
        ],
        [
            c(1, 2, 0, 1) / det,
            -c(0, 2, 0, 1) / det,
            c(0, 1, 0, 1) / det,
        ],
    ]
}

/// Largest row sum of absolute values.
fn row_norm(m: &Mat3) -> f64 {
    m.iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// Largest column sum of absolute values.
fn col_norm(m: &Mat3) -> f64 {
    (0..3)
        .map(|j| m.iter().map(|r| r[j].abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// NIfTI's `mat33_polar`: the orthogonal matrix nearest to `a` (Higham's iteration).
fn polar(a: Mat3) -> Mat3 {
    let mut x = a;
    let mut gam = det3(&x);
    while gam == 0.0 {
        gam = 0.00001 * (0.001 + row_norm(&x));
        for (i, row) in x.iter_mut().enumerate() {
            row[i] += gam;
        }
        gam = det3(&x);
    }
    let mut dif = 1.0;
    for _ in 0..=100 {
        let y = inverse33(&x);
        let (gam, gmi) = if dif > 0.3 {
            let alp = (row_norm(&x) * col_norm(&x)).sqrt();
            let bet = (row_norm(&y) * col_norm(&y)).sqrt();
            let gam = (bet / alp).sqrt();
            (gam, 1.0 / gam)
        } else {
            (1.0, 1.0)
        };
        let z: Mat3 =
            std::array::from_fn(|i| std::array::from_fn(|j| 0.5 * (gam * x[i][j] + gmi * y[j][i])));
        dif = (0..9)
            .map(|k| (z[k / 3][k % 3] - x[k / 3][k % 3]).abs())
            .sum();
        x = z;
        if dif < 3e-6 {
            break;
        }
    }
    x
}

/// NIfTI's `mat44_to_quatern`: the quaternion `(b, c, d)` and `qfac` of the rotation part of
/// `affine` (columns normalised, then the nearest orthogonal matrix; an improper one has its
/// third column negated and `qfac = -1`).
fn mat44_to_quatern(affine: &[[f64; 4]; 4]) -> ([f64; 3], f64) {
    let mut r = linear(affine);
    for j in 0..3 {
        let len = (0..3).map(|i| r[i][j] * r[i][j]).sum::<f64>().sqrt();
        if len == 0.0 {
            for (i, row) in r.iter_mut().enumerate() {
                row[j] = if i == j { 1.0 } else { 0.0 };
            }
        } else {
            for row in r.iter_mut() {
                row[j] /= len;
            }
        }
    }
    let mut r = polar(r);
    let qfac = if det3(&r) > 0.0 {
        1.0
    } else {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]] = r;
    let a = r11 + r22 + r33 + 1.0;
    let (b, c, d) = if a > 0.5 {
        let a = 0.5 * a.sqrt();
        (
            0.25 * (r32 - r23) / a,
            0.25 * (r13 - r31) / a,
            0.25 * (r21 - r12) / a,
        )
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        let (a, b, c, d) = if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (
                0.25 * (r32 - r23) / b,
                b,
                0.25 * (r12 + r21) / b,
                0.25 * (r13 + r31) / b,
            )
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (
                0.25 * (r13 - r31) / c,
                0.25 * (r12 + r21) / c,
                c,
                0.25 * (r23 + r32) / c,
            )
        } else {
            let d = 0.5 * zd.sqrt();
            (
                0.25 * (r21 - r12) / d,
                0.25 * (r13 + r31) / d,
                0.25 * (r23 + r32) / d,
                d,
            )
        };
        if a < 0.0 {
            (-b, -c, -d)
        } else {
            (b, c, d)
        }
    };
    ([b, c, d], qfac)
}

/// Reads one volume of a NIfTI-1 file (`.nii` or gzip-compressed); `volume_index` chooses
/// among the volumes of a 4D file (see the module docs).
pub fn read(path: &Path, volume_index: Option<usize>) -> Result<Volume, VolumeError> {
    let nifti = |reason: String| VolumeError::Nifti {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(VolumeError::io(path))?;
    let mut file = BufReader::new(file);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(VolumeError::io(path))?;
    let chained = io::Cursor::new(magic[..n].to_vec()).chain(file);
    let gzipped = magic == GZIP_MAGIC;
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(MultiGzDecoder::new(chained))
    } else {
        Box::new(chained)
    };
    // a corrupt gzip stream is a format error, not an I/O one
    let read_err = |e: io::Error| match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData if gzipped => {
            nifti(format!("corrupt gzip stream: {e}"))
        }
        _ => VolumeError::io(path)(e),
    };

    let mut bytes = [0u8; HEADER_BYTES];
    let got = read_up_to(&mut reader, &mut bytes).map_err(read_err)?;
    if got < HEADER_BYTES {
        return Err(VolumeError::Truncated {
            path: path.to_path_buf(),
            what: "header",
            expected: HEADER_BYTES as u64,
            found: got as u64,
        });
    }
    let header = parse_header(&bytes).map_err(nifti)?;
    let voxels = grid_voxels(header.dims).map_err(VolumeError::grid(path))?;
    let index = match (volume_index, header.volumes) {
        (None, 1) => 0,
        (Some(i), volumes) if i < volumes => i,
        (index, volumes) => {
            return Err(VolumeError::VolumeIndex {
                path: path.to_path_buf(),
                volumes,
                index,
            })
        }
    };

    let volume_bytes = (voxels * header.datatype.bytes()) as u64;
    let start = header.vox_offset + index as u64 * volume_bytes;
    let end = start + volume_bytes;
    let truncated = |found: u64| VolumeError::Truncated {
        path: path.to_path_buf(),
        what: "voxel data",
        expected: end,
        found,
    };
    let mut position = HEADER_BYTES as u64;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    while position < start {
        let want = (start - position).min(CHUNK_BYTES as u64) as usize;
        let got = read_up_to(&mut reader, &mut chunk[..want]).map_err(read_err)?;
        position += got as u64;
        if got < want {
            return Err(truncated(position));
        }
    }
    let mut data = Vec::with_capacity(voxels);
    while position < end {
        let want = (end - position).min(CHUNK_BYTES as u64) as usize;
        let got = read_up_to(&mut reader, &mut chunk[..want]).map_err(read_err)?;
        position += got as u64;
        if got < want {
            return Err(truncated(position));
        }
        // chunks hold whole values: CHUNK_BYTES is a multiple of every type's size
        header
            .datatype
            .convert(&chunk[..got], header.big, header.scale, &mut data);
    }
    Volume::new(header.dims, header.spacing, header.affine, data).map_err(VolumeError::grid(path))
}

/// Writes a mask as a uint8 NIfTI-1 file (`.nii`, or gzip-compressed when the name ends in
/// `.gz`) with the given geometry (see the module docs).
pub fn write_mask(
    path: &Path,
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    mask: &[u8],
) -> Result<(), VolumeError> {
    write(path, dims, spacing, affine, DataType::U8, mask.len(), mask)
}

/// Writes probabilities (or any values) as a float32 NIfTI-1 file, like [`write_mask`].
pub fn write_probability(
    path: &Path,
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    values: &[f32],
) -> Result<(), VolumeError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(
        path,
        dims,
        spacing,
        affine,
        DataType::F32,
        values.len(),
        &bytes,
    )
}

fn write(
    path: &Path,
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    datatype: DataType,
    values: usize,
    data: &[u8],
) -> Result<(), VolumeError> {
    check_grid(dims, spacing, affine, values).map_err(VolumeError::grid(path))?;
    let header = header_bytes(dims, spacing, affine, datatype);
    let write_err = |source| VolumeError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = BufWriter::new(File::create(path).map_err(write_err)?);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let result = if gz {
        let mut out = GzEncoder::new(file, Compression::default());
        out.write_all(&header)
            .and_then(|()| out.write_all(data))
            .and_then(|()| out.finish()?.flush())
    } else {
        let mut out = file;
        out.write_all(&header)
            .and_then(|()| out.write_all(data))
            .and_then(|()| out.flush())
    };
    result.map_err(write_err)
}

/// The 352 bytes before the voxels of a written file.
fn header_bytes(
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    datatype: DataType,
) -> Vec<u8> {
    let mut h = vec![0u8; WRITE_OFFSET];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &(HEADER_BYTES as i32).to_le_bytes());
    // dims are at most MAX_SIDE, well inside i16
    let dim = [
        3,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dim.iter().enumerate() {
        put(40 + 2 * i, &d.to_le_bytes());
    }
    put(70, &datatype.code().to_le_bytes());
    put(72, &((datatype.bytes() * 8) as i16).to_le_bytes());
    let (quatern, qfac) = mat44_to_quatern(affine);
    let pixdim = [qfac, spacing[0], spacing[1], spacing[2], 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pixdim.iter().enumerate() {
        put(76 + 4 * i, &(*p as f32).to_le_bytes());
    }
    put(108, &(WRITE_OFFSET as f32).to_le_bytes());
    put(112, &1f32.to_le_bytes());
    put(123, &[2]); // xyzt_units: mm
    put(148, b"edgeseg");
    put(252, &1i16.to_le_bytes()); // qform_code: scanner
    put(254, &1i16.to_le_bytes()); // sform_code: scanner
    let q = [
        quatern[0],
        quatern[1],
        quatern[2],
        affine[0][3],
        affine[1][3],
        affine[2][3],
    ];
    for (i, v) in q.iter().enumerate() {
        put(256 + 4 * i, &(*v as f32).to_le_bytes());
    }
    for (r, row) in affine[..3].iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put(280 + 16 * r + 4 * c, &(*v as f32).to_le_bytes());
        }
    }
    put(344, b"n+1\0");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{test_dir, GridError};
    use std::path::PathBuf;

    /// A NIfTI-1 header for tests, every field settable; defaults: 3D 4x3x2 uint8, 1 mm,
    /// little endian, no forms, voxels at 352.
    #[derive(Clone)]
    struct Spec {
        big: bool,
        sizeof: i32,
        magic: [u8; 4],
        dim: [i16; 8],
        datatype: i16,
        pixdim: [f32; 8],
        vox_offset: f32,
        slope: f32,
        inter: f32,
        units: u8,
        qform_code: i16,
        sform_code: i16,
        quatern: [f32; 6],
        srow: [[f32; 4]; 3],
    }

    impl Default for Spec {
        fn default() -> Spec {
            Spec {
                big: false,
                sizeof: 348,
                magic: *b"n+1\0",
                dim: [3, 4, 3, 2, 1, 1, 1, 1],
                datatype: 2,
                pixdim: [1.0; 8],
                vox_offset: 352.0,
                slope: 0.0,
                inter: 0.0,
                units: 2,
                qform_code: 0,
                sform_code: 0,
                quatern: [0.0; 6],
                srow: [[0.0; 4]; 3],
            }
        }
    }

    impl Spec {
        /// Header, extension flag and padding up to `vox_offset`, then `data`.
        fn bytes(&self, data: &[u8]) -> Vec<u8> {
            let mut h = vec![0u8; (self.vox_offset as usize).max(352)];
            let big = self.big;
            let mut put = |at: usize, le: &[u8]| {
                let mut b = le.to_vec();
                if big {
                    b.reverse();
                }
                h[at..at + b.len()].copy_from_slice(&b);
            };
            put(0, &self.sizeof.to_le_bytes());
            for (i, d) in self.dim.iter().enumerate() {
                put(40 + 2 * i, &d.to_le_bytes());
            }
            put(70, &self.datatype.to_le_bytes());
            for (i, p) in self.pixdim.iter().enumerate() {
                put(76 + 4 * i, &p.to_le_bytes());
            }
            put(108, &self.vox_offset.to_le_bytes());
            put(112, &self.slope.to_le_bytes());
            put(116, &self.inter.to_le_bytes());
            put(123, &[self.units]);
            put(252, &self.qform_code.to_le_bytes());
            put(254, &self.sform_code.to_le_bytes());
            for (i, q) in self.quatern.iter().enumerate() {
                put(256 + 4 * i, &q.to_le_bytes());
            }
            for (r, row) in self.srow.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    put(280 + 16 * r + 4 * c, &v.to_le_bytes());
                }
            }
            h[344..348].copy_from_slice(&self.magic);
            h.extend_from_slice(data);
            h
        }

        fn write(&self, dir: &Path, name: &str, data: &[u8]) -> PathBuf {
            let path = dir.join(name);
            let bytes = self.bytes(data);
            let bytes = if name.ends_with(".gz") {
                let mut gz = GzEncoder::new(Vec::new(), Compression::default());
                gz.write_all(&bytes).expect("compress");
                gz.finish().expect("compress")
            } else {
                bytes
            };
            std::fs::write(&path, bytes).expect("write fixture");
            path
        }
    }

    fn ramp(n: usize) -> Vec<u8> {
        (0..n as u8).collect()
    }

    fn err_text(result: Result<Volume, VolumeError>) -> String {
        let msg = result.expect_err("expected an error").to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn uint8_volume_with_the_base_affine_of_nibabel() {
        let dir = test_dir("nifti-u8");
        let spec = Spec {
            pixdim: [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0],
            ..Spec::default()
        };
        for name in ["a.nii", "a.nii.gz"] {
            let v = read(&spec.write(&dir, name, &ramp(24)), None).expect(name);
            assert_eq!(v.dims(), [4, 3, 2]);
            assert_eq!(v.spacing(), [2.0, 3.0, 4.0]);
            assert_eq!(v.get(3, 2, 1), 23.0);
            assert_eq!(v.get(1, 0, 1), 13.0);
            // nibabel: diag(-dx, dy, dz), origin at the centre ((dims - 1) / 2)
            assert_eq!(
                v.affine(),
                [
                    [-2.0, 0.0, 0.0, 3.0],
                    [0.0, 3.0, 0.0, -3.0],
                    [0.0, 0.0, 4.0, -2.0],
                    [0.0, 0.0, 0.0, 1.0]
                ]
            );
            assert!((v.voxel_volume_ml() - 0.024).abs() < 1e-12);
        }
    }

    #[test]
    fn every_datatype_in_both_byte_orders_through_slope_and_intercept() {
        let dir = test_dir("nifti-types");
        let values = [0.0f64, 1.0, 7.0, 100.0, 3.0, 42.0];
        let signed = [-3.0f64, 0.0, 7.0, -100.0, 3.0, 42.0];
        type Encode = fn(f64) -> Vec<u8>;
        let cases: [(i16, bool, Encode); 10] = [
            (2, false, |v| vec![v as u8]),
            (256, true, |v| vec![v as i8 as u8]),
            (512, false, |v| (v as u16).to_le_bytes().to_vec()),
            (4, true, |v| (v as i16).to_le_bytes().to_vec()),
            (768, false, |v| (v as u32).to_le_bytes().to_vec()),
            (8, true, |v| (v as i32).to_le_bytes().to_vec()),
            (1280, false, |v| (v as u64).to_le_bytes().to_vec()),
            (1024, true, |v| (v as i64).to_le_bytes().to_vec()),
            (16, true, |v| (v as f32).to_le_bytes().to_vec()),
            (64, true, |v| v.to_le_bytes().to_vec()),
        ];
        for (code, is_signed, encode) in cases {
            let source = if is_signed { signed } else { values };
            for big in [false, true] {
                let data: Vec<u8> = source
                    .iter()
                    .flat_map(|&v| {
                        let mut b = encode(v);
                        if big {
                            b.reverse();
                        }
                        b
                    })
                    .collect();
                let spec = Spec {
                    big,
                    dim: [3, 3, 2, 1, 1, 1, 1, 1],
                    datatype: code,
                    slope: 2.0,
                    inter: -1.0,
                    ..Spec::default()
                };
                let v = read(&spec.write(&dir, "t.nii", &data), None)
                    .unwrap_or_else(|e| panic!("datatype {code}, big {big}: {e}"));
                let want: Vec<f32> = source.iter().map(|&x| (x * 2.0 - 1.0) as f32).collect();
                assert_eq!(v.data(), want, "datatype {code}, big endian {big}");
            }
        }
    }

    #[test]
    fn slope_zero_or_nan_is_the_identity() {
        let dir = test_dir("nifti-slope");
        for slope in [0.0, f32::NAN] {
            let spec = Spec {
                slope,
                inter: 50.0,
                ..Spec::default()
            };
            let v = read(&spec.write(&dir, "s.nii", &ramp(24)), None).expect("identity");
            assert_eq!(v.get(3, 0, 0), 3.0);
        }
        let bad = Spec {
            slope: 2.0,
            inter: f32::INFINITY,
            ..Spec::default()
        };
        let msg = err_text(read(&bad.write(&dir, "s.nii", &ramp(24)), None));
        assert!(msg.contains("scl_slope is 2 but scl_inter is inf"), "{msg}");
    }

    #[test]
    fn sform_wins_over_qform_which_wins_over_pixdim() {
        let dir = test_dir("nifti-forms");
        let srow = [
            [0.0, -2.0, 0.0, 10.0],
            [3.0, 0.0, 0.0, 20.0],
            [0.0, 0.0, 4.0, 30.0],
        ];
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let spec = Spec {
            pixdim: [-1.0, 3.0, 2.0, 4.0, 1.0, 1.0, 1.0, 1.0],
            qform_code: 1,
            sform_code: 2,
            // 90 degrees about z: x → y, y → -x
            quatern: [0.0, 0.0, half, 5.0, 6.0, 7.0],
            srow,
            ..Spec::default()
        };
        let v = read(&spec.write(&dir, "f.nii", &ramp(24)), None).expect("sform");
        for (row, want) in v.affine().iter().zip(srow) {
            assert_eq!(
                row.map(|x| x as f32)[..],
                [want[0], want[1], want[2], want[3]]
            );
        }
        let qform_only = Spec {
            sform_code: 0,
            ..spec
        };
        let v = read(&qform_only.write(&dir, "f.nii", &ramp(24)), None).expect("qform");
        // columns: x → +y * 3, y → -x * 2, z → -z * 4 (qfac -1)
        let want = [
            [0.0, -2.0, 0.0, 5.0],
            [3.0, 0.0, 0.0, 6.0],
            [0.0, 0.0, -4.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for (row, want) in v.affine().iter().zip(want) {
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{:?}", v.affine());
            }
        }
    }

    #[test]
    fn metres_and_microns_become_millimetres() {
        let dir = test_dir("nifti-units");
        let spec = Spec {
            units: 1,
            pixdim: [1.0, 0.001, 0.002, 0.003, 1.0, 1.0, 1.0, 1.0],
            ..Spec::default()
        };
        let v = read(&spec.write(&dir, "m.nii", &ramp(24)), None).expect("metres");
        for (s, want) in v.spacing().iter().zip([1.0, 2.0, 3.0]) {
            assert!((s - want).abs() < 1e-4, "{:?}", v.spacing());
        }
        assert!((v.affine()[0][0] + 1.0).abs() < 1e-4);
        let microns = Spec {
            units: 3,
            pixdim: [1.0, 500.0, 500.0, 1000.0, 1.0, 1.0, 1.0, 1.0],
            ..Spec::default()
        };
        let v = read(&microns.write(&dir, "u.nii", &ramp(24)), None).expect("microns");
        assert_eq!(v.spacing(), [0.5, 0.5, 1.0]);
    }

    #[test]
    fn four_d_needs_an_index_within_its_volumes() {
        let dir = test_dir("nifti-4d");
        let spec = Spec {
            dim: [4, 2, 2, 1, 3, 1, 1, 1],
            ..Spec::default()
        };
        let data: Vec<u8> = (0..12).collect();
        for name in ["4d.nii", "4d.nii.gz"] {
            let path = spec.write(&dir, name, &data);
            let msg = err_text(read(&path, None));
            assert!(
                msg.ends_with("the file holds 3 volumes; choose one with --volume-index (0 to 2)"),
                "{msg}"
            );
            let v = read(&path, Some(2)).expect("volume 2");
            assert_eq!(v.dims(), [2, 2, 1]);
            assert_eq!(v.data(), [8.0, 9.0, 10.0, 11.0]);
            let msg = err_text(read(&path, Some(3)));
            assert!(
                msg.contains("volume index 3 is out of range: the file holds 3 volumes (0 to 2)"),
                "{msg}"
            );
        }
        // one volume in 4D needs no index, and index 0 of a 3D file is that volume
        let single = Spec {
            dim: [4, 2, 2, 1, 1, 1, 1, 1],
            ..Spec::default()
        };
        assert!(read(&single.write(&dir, "1.nii", &data[..4]), None).is_ok());
        let three = Spec::default().write(&dir, "3.nii", &ramp(24));
        assert!(read(&three, Some(0)).is_ok());
        let msg = err_text(read(&three, Some(1)));
        assert!(msg.contains("holds 1 volume (0 to 0)"), "{msg}");
    }

    #[test]
    fn truncated_files_say_what_they_need_and_hold() {
        let dir = test_dir("nifti-cut");
        let spec = Spec::default();
        let path = spec.write(&dir, "cut.nii", &ramp(20));
        let msg = err_text(read(&path, None));
        assert!(
            msg.ends_with("cut.nii: truncated voxel data: needs 376 bytes, found 372"),
            "{msg}"
        );

        let whole = spec.write(&dir, "whole.nii.gz", &ramp(24));
        let gz = std::fs::read(&whole).expect("read");
        let cut = dir.join("cut.nii.gz");
        std::fs::write(&cut, &gz[..gz.len() / 2]).expect("write");
        let err = read(&cut, None).expect_err("cut gzip");
        assert!(matches!(err, VolumeError::Truncated { .. }), "{err}");

        std::fs::write(dir.join("short.nii"), &spec.bytes(&[])[..100]).expect("write");
        let msg = err_text(read(&dir.join("short.nii"), None));
        assert!(
            msg.ends_with("truncated header: needs 348 bytes, found 100"),
            "{msg}"
        );

        let mut corrupt = gz.clone();
        for b in &mut corrupt[12..20] {
            *b ^= 0x5a;
        }
        std::fs::write(dir.join("corrupt.nii.gz"), corrupt).expect("write");
        let msg = err_text(read(&dir.join("corrupt.nii.gz"), None));
        assert!(
            msg.contains("corrupt gzip stream") || msg.contains("NIfTI-1"),
            "{msg}"
        );
    }

    #[test]
    fn bad_headers_are_refused_with_their_values() {
        let dir = test_dir("nifti-bad");
        let cases: Vec<(Spec, &str)> = vec![
            (
                Spec {
                    magic: *b"ni1\0",
                    ..Spec::default()
                },
                "magic \"ni1\" marks a header/image pair",
            ),
            (
                Spec {
                    magic: *b"\0\0\0\0",
                    ..Spec::default()
                },
                "expected \"n+1\"",
            ),
            (
                Spec {
                    sizeof: 540,
                    ..Spec::default()
                },
                "NIfTI-2",
            ),
            (
                Spec {
                    datatype: 128,
                    ..Spec::default()
                },
                "datatype 128 (RGB24) is not supported",
            ),
            (
                Spec {
                    datatype: 32,
                    ..Spec::default()
                },
                "datatype 32 (complex64)",
            ),
            (
                Spec {
                    dim: [2, 4, 3, 1, 1, 1, 1, 1],
                    ..Spec::default()
                },
                "dim[0] is 2",
            ),
            (
                Spec {
                    dim: [3, 4, -3, 2, 1, 1, 1, 1],
                    ..Spec::default()
                },
                "dim[1..=3] is [4, -3, 2]",
            ),
            (
                Spec {
                    vox_offset: 100.0,
                    ..Spec::default()
                },
                "vox_offset is 100",
            ),
        ];
        for (spec, needle) in cases {
            let msg = err_text(read(&spec.write(&dir, "bad.nii", &ramp(24)), None));
            assert!(msg.contains("bad.nii: NIfTI-1: "), "{msg}");
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let spec = Spec {
                pixdim: [1.0, 1.0, bad, 1.0, 1.0, 1.0, 1.0, 1.0],
                ..Spec::default()
            };
            let msg = err_text(read(&spec.write(&dir, "bad.nii", &ramp(24)), None));
            assert!(
                msg.contains("pixdim[1..=3] (voxel spacing) is [1.0, "),
                "{msg}"
            );
        }
    }

    #[test]
    fn huge_dims_fail_before_any_voxel_is_read() {
        let dir = test_dir("nifti-huge");
        for dim in [
            [3, 4096, 2, 2, 1, 1, 1, 1],
            [3, 2048, 2048, 128, 1, 1, 1, 1],
        ] {
            let spec = Spec {
                dim,
                ..Spec::default()
            };
            let err = read(&spec.write(&dir, "huge.nii.gz", &[]), None).expect_err("huge");
            assert!(
                matches!(
                    err,
                    VolumeError::Grid {
                        source: GridError::TooLarge { .. },
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn non_finite_values_are_refused() {
        let dir = test_dir("nifti-nan");
        let spec = Spec {
            dim: [3, 2, 1, 1, 1, 1, 1, 1],
            datatype: 16,
            ..Spec::default()
        };
        let data = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let msg = err_text(read(&spec.write(&dir, "nan.nii", &data), None));
        assert!(msg.contains("1 non-finite values"), "{msg}");
        assert!(msg.contains("voxel (1, 0, 0)"), "{msg}");
    }

    /// An oblique, left-handed affine: rotation about (1, 2, 3) by 0.5 rad, then x negated.
    fn oblique() -> [[f64; 4]; 4] {
        let (n, angle) = ([1.0f64, 2.0, 3.0], 0.5f64);
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        let [x, y, z] = n.map(|v| v / len);
        let (s, c) = angle.sin_cos();
        let t = 1.0 - c;
        let r = [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ];
        let spacing = [0.8, 0.9, 2.5];
        let mut a = crate::volume::IDENTITY;
        for i in 0..3 {
            for j in 0..3 {
                let flip = if j == 0 { -1.0 } else { 1.0 };
                a[i][j] = r[i][j] * spacing[j] * flip;
            }
        }
        a[0][3] = -12.5;
        a[1][3] = 40.0;
        a[2][3] = 7.25;
        a
    }

    fn assert_affine_close(a: [[f64; 4]; 4], b: [[f64; 4]; 4], tol: f64) {
        for (ra, rb) in a.iter().zip(b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn written_masks_read_back_with_sform_and_an_equal_qform() {
        let dir = test_dir("nifti-write");
        let (dims, spacing, affine) = ([4, 3, 2], [0.8, 0.9, 2.5], oblique());
        let mask: Vec<u8> = (0..24).map(|i| u8::from(i % 3 == 0)).collect();
        for name in ["m.nii", "m.nii.gz", "m.NII.GZ"] {
            let path = dir.join(name);
            write_mask(&path, dims, spacing, &affine, &mask).expect("write");
            let v = read(&path, None).expect("read back");
            assert_eq!(v.dims(), dims);
            assert_eq!(v.spacing().map(|s| s as f32), spacing.map(|s| s as f32));
            let want: Vec<f32> = mask.iter().map(|&m| f32::from(m)).collect();
            assert_eq!(v.data(), want);
            assert_affine_close(v.affine(), affine, 1e-5);
        }
        // the qform alone gives the same affine: clear sform_code and read again
        let path = dir.join("m.nii");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[254..256].copy_from_slice(&0i16.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        assert_affine_close(read(&path, None).expect("qform").affine(), affine, 1e-5);
        // a right-handed affine gives qfac 1, a left-handed one -1
        assert_eq!(mat44_to_quatern(&crate::volume::IDENTITY), ([0.0; 3], 1.0));
        assert_eq!(mat44_to_quatern(&affine).1, -1.0);
    }

    #[test]
    fn probabilities_round_trip_exactly() {
        let dir = test_dir("nifti-prob");
        let values: Vec<f32> = (0..24).map(|i| i as f32 / 23.0).collect();
        let path = dir.join("p.nii.gz");
        write_probability(
            &path,
            [2, 3, 4],
            [1.0, 1.0, 1.0],
            &crate::volume::IDENTITY,
            &values,
        )
        .expect("write");
        assert_eq!(read(&path, None).expect("read").data(), values);
    }

    #[test]
    fn writing_checks_its_inputs_and_names_the_file() {
        let dir = test_dir("nifti-write-bad");
        let id = crate::volume::IDENTITY;
        let msg = write_mask(&dir.join("a.nii"), [2, 2, 2], [1.0; 3], &id, &[0; 7])
            .expect_err("length")
            .to_string();
        assert!(
            msg.contains("a.nii: volume 2x2x2 needs 8 values, buffer has 7"),
            "{msg}"
        );
        let singular = [[0.0; 4]; 4];
        let err = write_mask(&dir.join("b.nii"), [2, 2, 2], [1.0; 3], &singular, &[0; 8]);
        assert!(err
            .expect_err("singular")
            .to_string()
            .contains("b.nii: affine"));
        let missing = dir.join("no/such/folder/c.nii");
        let msg = write_mask(&missing, [2, 2, 2], [1.0; 3], &id, &[0; 8])
            .expect_err("folder")
            .to_string();
        assert!(msg.contains("c.nii: cannot write"), "{msg}");
    }

    #[test]
    fn damaged_headers_never_panic() {
        let dir = test_dir("nifti-damaged");
        let spec = Spec {
            datatype: 4,
            sform_code: 1,
            srow: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ],
            ..Spec::default()
        };
        let good = spec.bytes(&[7u8; 48]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let path = dir.join("d.nii");
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % 352) as usize;
                bytes[at] = next() as u8;
            }
            std::fs::write(&path, &bytes).expect("write");
            // Ok or a one-line error; a panic fails the test
            if let Err(e) = read(&path, None) {
                assert!(!e.to_string().contains('\n'));
            }
        }
    }

    #[test]
    fn sniff_knows_gzip_and_both_byte_orders() {
        assert!(sniff(&[0x1f, 0x8b, 8]));
        assert!(sniff(&348i32.to_le_bytes()));
        assert!(sniff(&348i32.to_be_bytes()));
        assert!(sniff(&540i32.to_le_bytes()));
        assert!(!sniff(b"\x89PNG"));
        assert!(!sniff(&[1, 2]));
    }
}
