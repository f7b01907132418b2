//! Direct convolutions and matrix products for x86-64 with AVX2 and FMA, swapped into
//! decluttered graphs for tract's, on the micro-kernel of [`kernel`]: [`direct`] for 3×3,
//! stride 1, padding 1 convolutions (with the channel concatenation, ReLU and int8 roundings
//! around them), [`transposed`] for 2×2, stride 2 transposed convolutions, [`product`] for
//! products with a constant matrix, the transformers' linear layers and the like, and
//! [`batched`] for the attention products (see each).
//!
//! The U-Nets are made of these, and tract ran them at 23–37 GFLOP/s on this project's first
//! x86 machine (a Zen 3, 78 GFLOP/s peak per core): its direct spatial convolution for inputs of
//! up to 64 channels, im2col and a matrix product above that, the ReLU and the concatenations
//! as separate passes. Here the output is computed straight from the input in NCHW, with no
//! im2col buffer and no layout change: 48–71 GFLOP/s there, 2.9–4.5× tract's speed on the
//! U-Nets' 128-pixel rows and 1.5–1.75× on 64-pixel rows, but only 0.9–1.2× on 32- and
//! 16-pixel rows, where a block holds 2 vectors (`cargo bench --bench conv`). Where the CPU has
//! AVX-512, blocks are of 16-lane vectors and 8 output channels ([`kernel::sum_wide`]): on a
//! Zen 5 core, where tract's AVX-512 kernels outran the AVX2 ones here on 32- and 16-pixel rows,
//! this is 1.1–5.7× tract's speed on every U-Net layer, at 170–222 GFLOP/s. With more than one
//! thread in the graph's pool (`engine::graph_threads`), rows are split into one band per
//! thread.
//!
//! Only f32, 2D, NCHW, batch 1, one group convolutions are replaced, and only where the CPU has
//! AVX2 and FMA; every other convolution, and every convolution and product on other CPUs (Arm
//! cores run tract's own NEON kernels), keeps tract's operator. Summation order differs from
//! tract's and onnxruntime's, so results agree within float rounding (the parity tests'
//! tolerances).

#[cfg(target_arch = "x86_64")]
pub mod batched;
#[cfg(target_arch = "x86_64")]
pub mod direct;
#[cfg(target_arch = "x86_64")]
pub mod helper;
#[cfg(target_arch = "x86_64")]
pub mod kernel;
#[cfg(target_arch = "x86_64")]
pub mod product;
#[cfg(target_arch = "x86_64")]
pub mod transposed;

use tract_core::internal::*;

/// Replaces every eligible convolution and product of `model` (a decluttered model); returns
/// how many were replaced. Where the CPU lacks AVX2 and FMA, nothing is replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    #[cfg(target_arch = "x86_64")]
    if kernel::available() {
        let replaced = direct::replace(model)? + transposed::replace(model)?;
        return Ok(replaced + product::replace(model)? + batched::replace(model)?);
    }
    let _ = model;
    Ok(0)
}
