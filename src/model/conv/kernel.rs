//! The AVX2 + FMA micro-kernel of the direct convolution, its weight layout, and how rows are
//! split between threads.
//!
//! [`sum`] computes a tile of [`CO`] output channels × V vectors of 8 pixels: 4·V accumulators
//! (ymm0–ymm11, channel c in ymm 3c..3c+V), V input vectors (ymm12–14) and one weight
//! broadcast (ymm15), in a loop over the taps around a loop over the input channels. Each tap
//! of each input channel is one load of 8 pixels per vector and one broadcast per output
//! channel for 4·V FMAs, so at V = 3 the FMA units, not the loads, set the pace. It is written
//! in assembly because with intrinsics the compiler hoisted the loads of later taps and spilled
//! accumulators to the stack on every tap: 50 GFLOP/s over the U-Nets' layers against 58–60
//! for this loop, on a 78 GFLOP/s core (30 with the taps looped outside the channels).

use std::arch::x86_64::*;

use tract_core::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};

use crate::model::quantize::Grid;

/// Output channels per register tile.
pub const CO: usize = 4;
/// f32 lanes of one AVX register.
pub const LANES: usize = 8;

/// The tile's sums: `[CO][3]` vectors, of which the first V of each channel are used.
pub type Sums = [[__m256; 3]; CO];

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

/// Weights `kernel[o][i][t]` (`cout` × `cin` × `taps`, as OIHW kernels are laid out) packed
/// for [`sum`]: `[tile][taps][cin][CO]`, output channel o in tile o / CO, lane o % CO; zero for
/// the lanes past `cout` in the last tile.
pub fn pack(kernel: &[f32], cout: usize, cin: usize, taps: usize) -> Arc<[f32]> {
    let mut packed = vec![0f32; cout.div_ceil(CO) * taps * cin * CO];
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

/// A bias (`[cout]`, or one value for all) laid out for [`sum`]: one value per output channel,
/// zero past the last to fill the last tile.
pub fn tile_bias(bias: &[f32], cout: usize) -> TractResult<Arc<[f32]>> {
    ensure!(
        bias.len() == cout || bias.len() == 1,
        "a bias of {} values for {cout} channels",
        bias.len()
    );
    let mut tiled = vec![0f32; cout.div_ceil(CO) * CO];
    for (o, value) in tiled.iter_mut().take(cout).enumerate() {
        *value = bias[if bias.len() == 1 { 0 } else { o }];
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
    let mut acc = [[_mm256_setzero_ps(); 3]; CO];
    for (c, lane) in acc.iter_mut().enumerate() {
        *lane = [_mm256_set1_ps(bias[c]); 3];
    }
    std::arch::asm!(
        "vmovups ymm0, [{acc}]",
        ".if {v} > 1", "vmovups ymm1, [{acc} + 32]", ".endif",
        ".if {v} > 2", "vmovups ymm2, [{acc} + 64]", ".endif",
        "vmovups ymm3, [{acc} + 96]",
        ".if {v} > 1", "vmovups ymm4, [{acc} + 128]", ".endif",
        ".if {v} > 2", "vmovups ymm5, [{acc} + 160]", ".endif",
        "vmovups ymm6, [{acc} + 192]",
        ".if {v} > 1", "vmovups ymm7, [{acc} + 224]", ".endif",
        ".if {v} > 2", "vmovups ymm8, [{acc} + 256]", ".endif",
        "vmovups ymm9, [{acc} + 288]",
        ".if {v} > 1", "vmovups ymm10, [{acc} + 320]", ".endif",
        ".if {v} > 2", "vmovups ymm11, [{acc} + 352]", ".endif",
        "2:",
        "mov {src}, {input}",
        "add {src}, qword ptr [{taps}]",
        "mov {n}, {cin}",
        "3:",
        "vmovups ymm12, [{src}]",
        ".if {v} > 1", "vmovups ymm13, [{src} + 32]", ".endif",
        ".if {v} > 2", "vmovups ymm14, [{src} + 64]", ".endif",
        "vbroadcastss ymm15, dword ptr [{w}]",
        "vfmadd231ps ymm0, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm1, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm2, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w} + 4]",
        "vfmadd231ps ymm3, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm4, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm5, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w} + 8]",
        "vfmadd231ps ymm6, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm7, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm8, ymm14, ymm15", ".endif",
        "vbroadcastss ymm15, dword ptr [{w} + 12]",
        "vfmadd231ps ymm9, ymm12, ymm15",
        ".if {v} > 1", "vfmadd231ps ymm10, ymm13, ymm15", ".endif",
        ".if {v} > 2", "vfmadd231ps ymm11, ymm14, ymm15", ".endif",
        "add {src}, {step}",
        "add {w}, 16",
        "dec {n}",
        "jnz 3b",
        "add {taps}, 8",
        "dec {t}",
        "jnz 2b",
        "vmovups [{acc}], ymm0",
        ".if {v} > 1", "vmovups [{acc} + 32], ymm1", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 64], ymm2", ".endif",
        "vmovups [{acc} + 96], ymm3",
        ".if {v} > 1", "vmovups [{acc} + 128], ymm4", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 160], ymm5", ".endif",
        "vmovups [{acc} + 192], ymm6",
        ".if {v} > 1", "vmovups [{acc} + 224], ymm7", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 256], ymm8", ".endif",
        "vmovups [{acc} + 288], ymm9",
        ".if {v} > 1", "vmovups [{acc} + 320], ymm10", ".endif",
        ".if {v} > 2", "vmovups [{acc} + 352], ymm11", ".endif",
        v = const V,
        acc = in(reg) acc.as_mut_ptr(),
        input = in(reg) input,
        taps = inout(reg) taps.as_ptr() => _,
        w = inout(reg) weights.as_ptr() => _,
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
    acc
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

/// Stores the first `n` vectors of the first `channels` of `sums` (after the steps of
/// `epilogue`, in order), of which the first `valid` values, at `out` and on, one plane of
/// `plane` values per channel.
///
/// # Safety
/// AVX2 is available; `out` is writable for `valid` values in each of `channels` planes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn store(
    mut sums: Sums,
    n: usize,
    epilogue: &[Step],
    out: *mut f32,
    plane: usize,
    channels: usize,
    valid: usize,
) {
    if !epilogue.is_empty() {
        for a in sums.iter_mut().flatten() {
            for step in epilogue {
                *a = match step {
                    Step::Relu => _mm256_max_ps(*a, _mm256_setzero_ps()),
                    Step::Grid(grid) => grid.round_avx2(*a),
                };
            }
        }
    }
    for (c, lane) in sums.iter().enumerate().take(channels) {
        let dst = out.add(c * plane);
        let mut tmp = [0f32; 3 * LANES];
        let whole = valid == n * LANES;
        for (v, a) in lane.iter().take(n).enumerate() {
            let at = if whole { dst } else { tmp.as_mut_ptr() };
            _mm256_storeu_ps(at.add(v * LANES), *a);
        }
        if !whole {
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, valid);
        }
    }
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
/// executor when it has more than one, else in one band on this thread.
pub fn in_bands(rows: usize, band: impl Fn(usize, usize) + Sync) {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 && rows > 1 => {
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
mod tests {
    use super::*;

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
