//! The micro-kernels of the direct convolution and the products (AVX2 + FMA, and AVX-512 where
//! the CPU has it), their weight layout, and how rows are split between threads.
//!
//! [`sum`] computes a tile of [`CO`] output channels × V vectors of 8 pixels: 4·V accumulators
//! (ymm0–ymm11, channel c in ymm 3c..3c+V), V input vectors (ymm12–14) and one weight
//! broadcast (ymm15), in a loop over the taps around a loop over the input channels. Each tap
//! of each input channel is one load of 8 pixels per vector and one broadcast per output
//! channel for 4·V FMAs, so at V = 3 the FMA units, not the loads, set the pace. It is written
//! in assembly because with intrinsics the compiler hoisted the loads of later taps and spilled
//! accumulators to the stack on every tap: 50 GFLOP/s over the U-Nets' layers against 58–60
//! for this loop, on a 78 GFLOP/s Zen 3 core (30 with the taps looped outside the channels).
//!
//! [`sum_wide`] is the same loop on AVX-512's 32 registers of 16 lanes, for a pair of tiles:
//! 8 output channels × V vectors of 16 pixels, 24 accumulators (zmm0–23), V input vectors
//! (zmm24–26) and two broadcasts (zmm27–28). On a Zen 5 core it ran the U-Nets' 3×3 layers
//! 1.5–2.1× faster than [`sum`], and unlike [`sum`] faster than tract's own AVX-512 kernels on
//! every layer (`cargo bench --bench conv`). [`each_tile`] picks one or the other; the packing
//! lays tiles out in whole pairs for both.

use std::arch::x86_64::*;

use tract_core::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};

use super::helper;
use crate::model::quantize::Grid;

/// Output channels per register tile.
pub const CO: usize = 4;
/// f32 lanes of one AVX register.
pub const LANES: usize = 8;
/// f32 lanes of one AVX-512 register: the vectors [`sum_wide`] counts its blocks in.
pub const WIDE_LANES: usize = 16;

/// The tile's sums: `[CO][6]` vectors of 8 lanes, of which the first 3 at most are used by
/// [`sum`] and 6 by [`sum_wide`] (3 of 16 lanes).
pub type Sums = [[__m256; 6]; CO];

/// An element-wise step applied to a tile's sums in registers before [`store`] writes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `max(x, 0)`.
    Relu,
    /// A quantization to 8-bit levels and back (the QDQ form's activations).
    Grid(Grid),
}

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether [`sum_wide`] can run too: AVX-512 F besides AVX2 and FMA (in tests, unless
/// `tests::each_width` runs the narrow pass on this thread).
pub fn wide() -> bool {
    #[cfg(test)]
    if tests::NARROW.get() {
        return false;
    }
    available() && is_x86_feature_detected!("avx512f")
}

/// Weights `kernel[o][i][t]` (`cout` × `cin` × `taps`, as OIHW kernels are laid out) packed
/// for [`sum`]: `[tile][taps][cin][CO]`, output channel o in tile o / CO, lane o % CO; zero for
/// the lanes past `cout`, in a whole number of tile pairs (as [`sum_wide`] reads them).
pub fn pack(kernel: &[f32], cout: usize, cin: usize, taps: usize) -> Arc<[f32]> {
    let mut packed = vec![0f32; tiles(cout) * taps * cin * CO];
    for o in 0..cout {
        let (tile, lane) = (o / CO, o % CO);
        for i in 0..cin {
            for t in 0..taps {
                packed[((tile * taps + t) * cin + i) * CO + lane] =
                    kernel[(o * cin + i) * taps + t];
            }
        }
    }
    packed.into()
}

/// The tiles [`pack`] and [`tile_bias`] lay `cout` channels out in: a whole number of pairs.
pub fn tiles(cout: usize) -> usize {
    cout.div_ceil(2 * CO) * 2
}

/// A bias (`[cout]`, or one value for all) laid out for [`sum`]: each channel's value on
/// `lanes` lanes in a row (4 for a transposed convolution's (dy, dx)), zero past the last to
/// fill the last tile pair.
pub fn tile_bias(bias: &[f32], cout: usize, lanes: usize) -> TractResult<Arc<[f32]>> {
    ensure!(
        bias.len() == cout || bias.len() == 1,
        "a bias of {} values for {cout} channels",
        bias.len()
    );
    let mut tiled = vec![0f32; tiles(cout * lanes) * CO];
    for (o, chunk) in tiled.chunks_exact_mut(lanes).take(cout).enumerate() {
        chunk.fill(bias[if bias.len() == 1 { 0 } else { o }]);
    }
    Ok(tiled.into())
}

/// [`sum`] for a block of V vectors: the assembly, compiled once for each block width.
///
/// # Safety
/// As for [`sum`], with `n` = V.
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_v<const V: usize>(
    input: *const f32,
    step: usize,
    taps: &[usize],
    cin: usize,
    weights: &[f32],
    bias: &[f32],
) -> Sums {
    debug_assert!(cin >= 1 && !taps.is_empty() && weights.len() >= taps.len() * cin * CO);
    debug_assert!(bias.len() >= CO);
    let mut acc = std::mem::MaybeUninit::<Sums>::uninit();
    std::arch::asm!(
        "vbroadcastss ymm0, dword ptr [{bias} + 0]",
        ".if {v} > 1", "vmovaps ymm1, ymm0", ".endif",
        ".if {v} > 2", "vmovaps ymm2, ymm0", ".endif",
        "vbroadcastss ymm3, dword ptr [{bias} + 4]",
        ".if {v} > 1", "vmovaps ymm4, ymm3", ".endif",
        ".if {v} > 2", "vmovaps ymm5, ymm3", ".endif",
        "vbroadcastss ymm6, dword ptr [{bias} + 8]",
        ".if {v} > 1", "vmovaps ymm7, ymm6", ".endif",
        ".if {v} > 2", "vmovaps ymm8, ymm6", ".endif",
        "vbroadcastss ymm9, dword ptr [{bias} + 12]",
        ".if {v} > 1", "vmovaps ymm10, ymm9", ".endif",
        ".if {v} > 2", "vmovaps ymm11, ymm9", ".endif",
        "2:",
        "mov {src}, {input}",
        "add {src}, qword ptr [{taps}]",
        "mov {n}, {cin}",
        "3:",
        "vmovups ymm12, [{src} + 0]",
        ".if {v} > 1", "vmovups ymm13, [{src} + 32]", ".endif",
        ".if {v} > 2", "vmovups ymm14, [{src} + 64]", ".endif",
        "vbroadcastss ymm15, dword ptr [{w0} + 0]",
        "vfmadd231ps ymm0, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm1, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm2, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w0} + 4]",
        "vfmadd231ps ymm3, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm4, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm5, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w0} + 8]",
        "vfmadd231ps ymm6, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm7, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm8, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w0} + 12]",
        "vfmadd231ps ymm9, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm10, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm11, ymm14, ymm15", ".endif",
        "add {src}, {step}",
        "add {w0}, 16",
        "dec {n}",
        "jnz 3b",
        "add {taps}, 8",
        "dec {t}",
        "jnz 2b",
        "vmovups [{acc} + 0], ymm0",
        ".if {v} > 1", "vmovups [{acc} + 32], ymm1", ".else", "vmovups [{acc} + 32], ymm0", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 64], ymm2", ".else", "vmovups [{acc} + 64], ymm0", ".endif",
        "vmovups [{acc} + 96], ymm0",
        "vmovups [{acc} + 128], ymm0",
        "vmovups [{acc} + 160], ymm0",
        "vmovups [{acc} + 192], ymm3",
        ".if {v} > 1", "vmovups [{acc} + 224], ymm4", ".else", "vmovups [{acc} + 224], ymm3", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 256], ymm5", ".else", "vmovups [{acc} + 256], ymm3", ".endif",
        "vmovups [{acc} + 288], ymm3",
        "vmovups [{acc} + 320], ymm3",
        "vmovups [{acc} + 352], ymm3",
        "vmovups [{acc} + 384], ymm6",
        ".if {v} > 1", "vmovups [{acc} + 416], ymm7", ".else", "vmovups [{acc} + 416], ymm6", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 448], ymm8", ".else", "vmovups [{acc} + 448], ymm6", ".endif",
        "vmovups [{acc} + 480], ymm6",
        "vmovups [{acc} + 512], ymm6",
        "vmovups [{acc} + 544], ymm6",
        "vmovups [{acc} + 576], ymm9",
        ".if {v} > 1", "vmovups [{acc} + 608], ymm10", ".else", "vmovups [{acc} + 608], ymm9", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 640], ymm11", ".else", "vmovups [{acc} + 640], ymm9", ".endif",
        "vmovups [{acc} + 672], ymm9",
        "vmovups [{acc} + 704], ymm9",
        "vmovups [{acc} + 736], ymm9",
        v = const V,
        acc = in(reg) acc.as_mut_ptr(),
        bias = in(reg) bias.as_ptr(),
        input = in(reg) input,
        taps = inout(reg) taps.as_ptr() => _,
        w0 = inout(reg) weights.as_ptr() => _,
        cin = in(reg) cin,
        step = in(reg) step,
        t = inout(reg) taps.len() => _,
        src = out(reg) _,
        n = out(reg) _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack),
    );
    // SAFETY: the assembly writes every vector: the block's V, then copies of the first.
    acc.assume_init()
}

/// The sums of one tile for a block of `n` (1, 2 or 3) vectors of 8 pixels from `input` on,
/// over `taps` (byte offsets from `input`) and `cin` input channels `step` bytes apart,
/// starting from `bias` (`[CO]`); `weights` is the tile's `[taps][cin][CO]`.
///
/// # Safety
/// AVX2 and FMA are available; `cin` ≥ 1 and `taps` is not empty; from `input`, every tap of
/// every channel can be read for `n·8` values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum(
    n: usize,
    input: *const f32,
    step: usize,
    taps: &[usize],
    cin: usize,
    weights: &[f32],
    bias: &[f32],
) -> Sums {
    match n {
        3 => sum_v::<3>(input, step, taps, cin, weights, bias),
        2 => sum_v::<2>(input, step, taps, cin, weights, bias),
        _ => sum_v::<1>(input, step, taps, cin, weights, bias),
    }
}

/// [`sum_wide`] for a block of V vectors of 16 pixels: the assembly, compiled once for each block
/// width. Channel c of the pair's 8 sums its V vectors in zmm(3c)..; zmm24–26 hold the input
/// vectors and zmm27–28 the weight broadcasts.
///
/// # Safety
/// As for [`sum_wide`], with `n` = V.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sum_wide_v<const V: usize>(
    input: *const f32,
    step: usize,
    taps: &[usize],
    cin: usize,
    weights: &[f32],
    bias: &[f32],
) -> [Sums; 2] {
    let tile = taps.len() * cin * CO;
    debug_assert!(cin >= 1 && tile > 0 && weights.len() >= 2 * tile && bias.len() >= 2 * CO);
    // Channel c's vectors of 16 lanes from byte 192·c on.
    let mut acc = std::mem::MaybeUninit::<[Sums; 2]>::uninit();
    std::arch::asm!(
        "vbroadcastss zmm0, dword ptr [{bias} + 0]",
        ".if {v} > 1", "vmovaps zmm1, zmm0", ".endif",
        ".if {v} > 2", "vmovaps zmm2, zmm0", ".endif",
        "vbroadcastss zmm3, dword ptr [{bias} + 4]",
        ".if {v} > 1", "vmovaps zmm4, zmm3", ".endif",
        ".if {v} > 2", "vmovaps zmm5, zmm3", ".endif",
        "vbroadcastss zmm6, dword ptr [{bias} + 8]",
        ".if {v} > 1", "vmovaps zmm7, zmm6", ".endif",
        ".if {v} > 2", "vmovaps zmm8, zmm6", ".endif",
        "vbroadcastss zmm9, dword ptr [{bias} + 12]",
        ".if {v} > 1", "vmovaps zmm10, zmm9", ".endif",
        ".if {v} > 2", "vmovaps zmm11, zmm9", ".endif",
        "vbroadcastss zmm12, dword ptr [{bias} + 16]",
        ".if {v} > 1", "vmovaps zmm13, zmm12", ".endif",
        ".if {v} > 2", "vmovaps zmm14, zmm12", ".endif",
        "vbroadcastss zmm15, dword ptr [{bias} + 20]",
        ".if {v} > 1", "vmovaps zmm16, zmm15", ".endif",
        ".if {v} > 2", "vmovaps zmm17, zmm15", ".endif",
        "vbroadcastss zmm18, dword ptr [{bias} + 24]",
        ".if {v} > 1", "vmovaps zmm19, zmm18", ".endif",
        ".if {v} > 2", "vmovaps zmm20, zmm18", ".endif",
        "vbroadcastss zmm21, dword ptr [{bias} + 28]",
        ".if {v} > 1", "vmovaps zmm22, zmm21", ".endif",
        ".if {v} > 2", "vmovaps zmm23, zmm21", ".endif",
        "2:",
        "mov {src}, {input}",
        "add {src}, qword ptr [{taps}]",
        "mov {n}, {cin}",
        "3:",
        "vmovups zmm24, [{src} + 0]",
        ".if {v} > 1", "vmovups zmm25, [{src} + 64]", ".endif",
        ".if {v} > 2", "vmovups zmm26, [{src} + 128]", ".endif",
        "vbroadcastss zmm27, dword ptr [{w0} + 0]",
        "vfmadd231ps zmm0, zmm24, zmm27",
        ".if {v} > 1", "vfmadd231ps zmm1, zmm25, zmm27", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm2, zmm26, zmm27", ".endif",
        "vbroadcastss zmm28, dword ptr [{w0} + 4]",
        "vfmadd231ps zmm3, zmm24, zmm28",
        ".if {v} > 1", "vfmadd231ps zmm4, zmm25, zmm28", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm5, zmm26, zmm28", ".endif",
        "vbroadcastss zmm27, dword ptr [{w0} + 8]",
        "vfmadd231ps zmm6, zmm24, zmm27",
        ".if {v} > 1", "vfmadd231ps zmm7, zmm25, zmm27", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm8, zmm26, zmm27", ".endif",
        "vbroadcastss zmm28, dword ptr [{w0} + 12]",
        "vfmadd231ps zmm9, zmm24, zmm28",
        ".if {v} > 1", "vfmadd231ps zmm10, zmm25, zmm28", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm11, zmm26, zmm28", ".endif",
        "vbroadcastss zmm27, dword ptr [{w1} + 0]",
        "vfmadd231ps zmm12, zmm24, zmm27",
        ".if {v} > 1", "vfmadd231ps zmm13, zmm25, zmm27", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm14, zmm26, zmm27", ".endif",
        "vbroadcastss zmm28, dword ptr [{w1} + 4]",
        "vfmadd231ps zmm15, zmm24, zmm28",
        ".if {v} > 1", "vfmadd231ps zmm16, zmm25, zmm28", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm17, zmm26, zmm28", ".endif",
        "vbroadcastss zmm27, dword ptr [{w1} + 8]",
        "vfmadd231ps zmm18, zmm24, zmm27",
        ".if {v} > 1", "vfmadd231ps zmm19, zmm25, zmm27", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm20, zmm26, zmm27", ".endif",
        "vbroadcastss zmm28, dword ptr [{w1} + 12]",
        "vfmadd231ps zmm21, zmm24, zmm28",
        ".if {v} > 1", "vfmadd231ps zmm22, zmm25, zmm28", ".endif",
        ".if {v} > 2", "vfmadd231ps zmm23, zmm26, zmm28", ".endif",
        "add {src}, {step}",
        "add {w0}, 16",
        "add {w1}, 16",
        "dec {n}",
        "jnz 3b",
        "add {taps}, 8",
        "dec {t}",
        "jnz 2b",
        "vmovups [{acc} + 0], zmm0",
        ".if {v} > 1", "vmovups [{acc} + 64], zmm1", ".else", "vmovups [{acc} + 64], zmm0", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 128], zmm2", ".else", "vmovups [{acc} + 128], zmm0", ".endif",
        "vmovups [{acc} + 192], zmm3",
        ".if {v} > 1", "vmovups [{acc} + 256], zmm4", ".else", "vmovups [{acc} + 256], zmm3", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 320], zmm5", ".else", "vmovups [{acc} + 320], zmm3", ".endif",
        "vmovups [{acc} + 384], zmm6",
        ".if {v} > 1", "vmovups [{acc} + 448], zmm7", ".else", "vmovups [{acc} + 448], zmm6", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 512], zmm8", ".else", "vmovups [{acc} + 512], zmm6", ".endif",
        "vmovups [{acc} + 576], zmm9",
        ".if {v} > 1", "vmovups [{acc} + 640], zmm10", ".else", "vmovups [{acc} + 640], zmm9", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 704], zmm11", ".else", "vmovups [{acc} + 704], zmm9", ".endif",
        "vmovups [{acc} + 768], zmm12",
        ".if {v} > 1", "vmovups [{acc} + 832], zmm13", ".else", "vmovups [{acc} + 832], zmm12", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 896], zmm14", ".else", "vmovups [{acc} + 896], zmm12", ".endif",
        "vmovups [{acc} + 960], zmm15",
        ".if {v} > 1", "vmovups [{acc} + 1024], zmm16", ".else", "vmovups [{acc} + 1024], zmm15", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 1088], zmm17", ".else", "vmovups [{acc} + 1088], zmm15", ".endif",
        "vmovups [{acc} + 1152], zmm18",
        ".if {v} > 1", "vmovups [{acc} + 1216], zmm19", ".else", "vmovups [{acc} + 1216], zmm18", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 1280], zmm20", ".else", "vmovups [{acc} + 1280], zmm18", ".endif",
        "vmovups [{acc} + 1344], zmm21",
        ".if {v} > 1", "vmovups [{acc} + 1408], zmm22", ".else", "vmovups [{acc} + 1408], zmm21", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 1472], zmm23", ".else", "vmovups [{acc} + 1472], zmm21", ".endif",
        v = const V,
        acc = in(reg) acc.as_mut_ptr(),
        bias = in(reg) bias.as_ptr(),
        input = in(reg) input,
        taps = inout(reg) taps.as_ptr() => _,
        w0 = inout(reg) weights.as_ptr() => _,
        w1 = inout(reg) weights[tile..].as_ptr() => _,
        cin = in(reg) cin,
        step = in(reg) step,
        t = inout(reg) taps.len() => _,
        src = out(reg) _,
        n = out(reg) _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
        out("zmm28") _,
        options(nostack),
    );
    // SAFETY: as in `sum_v`, in vectors of 16 lanes.
    acc.assume_init()
}

/// The sums of a pair of tiles (2·[`CO`] output channels) for a block of `n` (1, 2 or 3)
/// vectors of 16 pixels, as [`sum`] computes one tile: `weights` is the pair's two
/// `[taps][cin][CO]` one after the other and `bias` its `[2·CO]`. Each half of the result is
/// one tile's, 2·n vectors of 8 lanes per channel, for [`store`].
///
/// # Safety
/// AVX-512 F, AVX2 and FMA are available ([`wide`]); `cin` ≥ 1 and `taps` is not empty; from
/// `input`, every tap of every channel can be read for `n·16` values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn sum_wide(
    n: usize,
    input: *const f32,
    step: usize,
    taps: &[usize],
    cin: usize,
    weights: &[f32],
    bias: &[f32],
) -> [Sums; 2] {
    match n {
        3 => sum_wide_v::<3>(input, step, taps, cin, weights, bias),
        2 => sum_wide_v::<2>(input, step, taps, cin, weights, bias),
        _ => sum_wide_v::<1>(input, step, taps, cin, weights, bias),
    }
}

/// The sums of each of the first `tiles` tiles of `weights` ([`pack`]ed, `tile` values a tile)
/// and `bias` (`[CO]` a tile) for a block of `n` vectors from `input`, handed to `each` with
/// the tile's index: by pairs through [`sum_wide`] (vectors of 16 lanes) where `wide`, else one
/// by one through [`sum`] (of 8).
///
/// # Safety
/// As for [`sum_wide`] where `wide`, else as for [`sum`]; `weights` and `bias` hold whole tile
/// pairs.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn each_tile(
    wide: bool,
    n: usize,
    input: *const f32,
    step: usize,
    taps: &[usize],
    cin: usize,
    weights: &[f32],
    bias: &[f32],
    tiles: usize,
    mut each: impl FnMut(usize, &mut Sums),
) {
    let tile = taps.len() * cin * CO;
    if wide {
        for first in (0..tiles).step_by(2) {
            let weights = &weights[first * tile..][..2 * tile];
            let bias = &bias[first * CO..][..2 * CO];
            let [mut low, mut high] = sum_wide(n, input, step, taps, cin, weights, bias);
            each(first, &mut low);
            if first + 1 < tiles {
                each(first + 1, &mut high);
            }
        }
    } else {
        for t in 0..tiles {
            let weights = &weights[t * tile..][..tile];
            each(
                t,
                &mut sum(n, input, step, taps, cin, weights, &bias[t * CO..][..CO]),
            );
        }
    }
}

/// Stores the first `n` vectors of the first `channels` of `sums` (after the steps of
/// `epilogue`, in order), of which the first `valid` values, at `out` and on, one plane of
/// `plane` values per channel.
///
/// # Safety
/// AVX2 is available; `out` is writable for `valid` values in each of `channels` planes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn store(
    sums: &Sums,
    n: usize,
    epilogue: &[Step],
    out: *mut f32,
    plane: usize,
    channels: usize,
    valid: usize,
) {
    for (c, lane) in sums.iter().enumerate().take(channels) {
        let dst = out.add(c * plane);
        for (v, &a) in lane.iter().take(n).enumerate() {
            let a = epilogue.iter().fold(a, |a, step| match step {
                Step::Relu => _mm256_max_ps(a, _mm256_setzero_ps()),
                Step::Grid(grid) => grid.round_avx2(a),
            });
            match valid.saturating_sub(v * LANES) {
                0 => break,
                left if left >= LANES => _mm256_storeu_ps(dst.add(v * LANES), a),
                left => _mm256_maskstore_ps(dst.add(v * LANES), first_lanes(left), a),
            }
        }
    }
}

/// A mask of the first `n` (< 8) lanes, for `_mm256_maskstore_ps`.
#[target_feature(enable = "avx2")]
unsafe fn first_lanes(n: usize) -> __m256i {
    let below = _mm256_set1_epi32(n as i32);
    _mm256_cmpgt_epi32(below, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// The blocks a row of `vectors` vectors is cut into, as (first vector, vectors): blocks of 3,
/// and 4 left as 2 + 2 rather than 3 + 1 (a block of 1 has too few accumulators to keep the
/// FMA units busy).
pub fn blocks(vectors: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut v = 0;
    std::iter::from_fn(move || {
        let n = match vectors.checked_sub(v)? {
            0 => return None,
            4 | 2 => 2,
            1 => 1,
            _ => 3,
        };
        v += n;
        Some((v - n, n))
    })
}

/// Runs `band(from, to)` over `0..rows`: in one band per thread of the calling thread's tract
/// executor when it has more than one, else in one band on this thread. Two bands run on this
/// thread and the spinning [`helper`] (the common case: two cores), more on the executor's
/// pool.
pub fn in_bands(rows: usize, band: impl Fn(usize, usize) + Sync) {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() == 2 && rows > 1 => {
            let half = rows / 2;
            helper::split(|| band(0, half), || band(half, rows));
        }
        Executor::MultiThread(pool) if pool.current_num_threads() > 2 && rows > 1 => {
            let bands = pool.current_num_threads().min(rows);
            let band = &band;
            pool.scope(|s| {
                for b in 0..bands {
                    s.spawn(move |_| band(rows * b / bands, rows * (b + 1) / bands));
                }
            });
        }
        _ => band(0, rows),
    }
}

/// An output's base pointer, shared by bands that write disjoint parts of it.
pub struct Output(pub *mut f32);
// SAFETY: the bands of one run write disjoint rows of the output, which outlives the run.
unsafe impl Sync for Output {}

impl Output {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    pub fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
pub mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Set while [`each_width`] runs its narrow pass: [`wide`] answers false.
        pub static NARROW: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `test` with 16-lane blocks where AVX-512 is available, then with 8-lane ones (for
    /// the operators that choose in the calling thread), naming the width it runs.
    pub fn each_width(mut test: impl FnMut(&str)) {
        if wide() {
            test("16 lanes");
        }
        NARROW.set(true);
        test("8 lanes");
        NARROW.set(false);
    }

    #[test]
    fn rows_are_cut_into_blocks_of_three_and_two() {
        let cut = |n| blocks(n).map(|(_, v)| v).collect::<Vec<_>>();
        assert_eq!(cut(0), [0usize; 0]);
        assert_eq!(cut(1), [1]);
        assert_eq!(cut(2), [2]);
        assert_eq!(cut(4), [2, 2]);
        assert_eq!(cut(5), [3, 2]);
        assert_eq!(cut(7), [3, 2, 2]);
        assert_eq!(cut(16), [3, 3, 3, 3, 2, 2]);
        assert_eq!(blocks(7).map(|(v, _)| v).collect::<Vec<_>>(), [0, 3, 5]);
    }
}
