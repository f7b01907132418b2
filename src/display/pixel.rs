//! Screen pixel formats and packing RGB888 rows into them.
//!
//! Two formats are supported, as found on Linux framebuffers and DRM dumb buffers:
//! - RGB565: 16 bits, red in bits 11..16, green in 5..11, blue in 0..5; channels are
//!   truncated to their top 5 or 6 bits.
//! - XRGB8888: 32 bits, blue in bits 0..8, green in 8..16, red in 16..24; the top byte is
//!   written as 0xff, so drivers that read it as alpha show the pixel opaque.
//!
//! Pixels are stored in the CPU's byte order, as the kernel expects for both device kinds.

use std::fmt;

/// Where one colour channel sits in a pixel: bit offset from the least significant bit and
/// bit length (the kernel's `fb_bitfield`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Offset of the channel's least significant bit.
    pub offset: u32,
    /// Number of bits.
    pub length: u32,
}

/// A pixel layout as a device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bits per pixel.
    pub bits_per_pixel: u32,
    /// Red channel.
    pub red: Channel,
    /// Green channel.
    pub green: Channel,
    /// Blue channel.
    pub blue: Channel,
}

impl fmt::Display for Layout {
    /// `16 bpp, red 11:5, green 5:6, blue 0:5` (offset:length).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bpp, red {}:{}, green {}:{}, blue {}:{}",
            self.bits_per_pixel,
            self.red.offset,
            self.red.length,
            self.green.offset,
            self.green.length,
            self.blue.offset,
            self.blue.length
        )
    }
}

/// A supported screen pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 16-bit 5:6:5 RGB.
    Rgb565,
    /// 32-bit 8:8:8 RGB with an unused top byte.
    Xrgb8888,
}

impl PixelFormat {
    /// The format with this layout, or `None` when it is not one of the supported ones.
    pub fn from_layout(layout: &Layout) -> Option<PixelFormat> {
        let ch = |offset, length| Channel { offset, length };
        match (layout.bits_per_pixel, layout.red, layout.green, layout.blue) {
            (16, r, g, b) if r == ch(11, 5) && g == ch(5, 6) && b == ch(0, 5) => {
                Some(PixelFormat::Rgb565)
            }
            (32, r, g, b) if r == ch(16, 8) && g == ch(8, 8) && b == ch(0, 8) => {
                Some(PixelFormat::Xrgb8888)
            }
            _ => None,
        }
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb565 => 2,
            PixelFormat::Xrgb8888 => 4,
        }
    }

    /// Packs interleaved RGB888 pixels into `out`, one pixel per `bytes_per_pixel` bytes;
    /// converts as many pixels as both slices hold.
    pub fn pack_row(self, rgb: &[u8], out: &mut [u8]) {
        let src = rgb.chunks_exact(3);
        match self {
            PixelFormat::Rgb565 => {
                for (px, dst) in src.zip(out.chunks_exact_mut(2)) {
                    dst.copy_from_slice(&rgb565(px[0], px[1], px[2]).to_ne_bytes());
                }
            }
            PixelFormat::Xrgb8888 => {
                for (px, dst) in src.zip(out.chunks_exact_mut(4)) {
                    dst.copy_from_slice(&xrgb8888(px[0], px[1], px[2]).to_ne_bytes());
                }
            }
        }
    }
}

/// One RGB565 pixel value.
fn rgb565(r: u8, g: u8, b: u8) -> u16 {
    (u16::from(r) >> 3) << 11 | (u16::from(g) >> 2) << 5 | u16::from(b) >> 3
}

/// One XRGB8888 pixel value, top byte 0xff.
fn xrgb8888(r: u8, g: u8, b: u8) -> u32 {
    0xff00_0000 | u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(bpp: u32, r: (u32, u32), g: (u32, u32), b: (u32, u32)) -> Layout {
        let ch = |(offset, length)| Channel { offset, length };
        Layout {
            bits_per_pixel: bpp,
            red: ch(r),
            green: ch(g),
            blue: ch(b),
        }
    }

    #[test]
    fn recognises_the_two_formats_by_bitfields() {
        assert_eq!(
            PixelFormat::from_layout(&layout(16, (11, 5), (5, 6), (0, 5))),
            Some(PixelFormat::Rgb565)
        );
        assert_eq!(
            PixelFormat::from_layout(&layout(32, (16, 8), (8, 8), (0, 8))),
            Some(PixelFormat::Xrgb8888)
        );
        // BGR order, 24-bit packed and 5:5:5 are not supported.
        assert_eq!(
            PixelFormat::from_layout(&layout(32, (0, 8), (8, 8), (16, 8))),
            None
        );
        assert_eq!(
            PixelFormat::from_layout(&layout(24, (16, 8), (8, 8), (0, 8))),
            None
        );
        assert_eq!(
            PixelFormat::from_layout(&layout(16, (10, 5), (5, 5), (0, 5))),
            None
        );
    }

    #[test]
    fn layout_names_itself() {
        assert_eq!(
            layout(24, (16, 8), (8, 8), (0, 8)).to_string(),
            "24 bpp, red 16:8, green 8:8, blue 0:8"
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn packs_rgb565_exactly() {
        let rgb = [
            255, 0, 0, // red
            0, 255, 0, // green
            0, 0, 255, // blue
            255, 255, 255, // white
            0x12, 0x34, 0x56, // truncated: 0x12>>3=2, 0x34>>2=13, 0x56>>3=10
        ];
        let mut out = [0xaa; 10];
        PixelFormat::Rgb565.pack_row(&rgb, &mut out);
        // 0xf800, 0x07e0, 0x001f, 0xffff, (2 << 11 | 13 << 5 | 10) = 0x11aa; little-endian.
        assert_eq!(
            out,
            [0x00, 0xf8, 0xe0, 0x07, 0x1f, 0x00, 0xff, 0xff, 0xaa, 0x11]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn packs_xrgb8888_exactly() {
        let rgb = [0x12, 0x34, 0x56, 255, 0, 0];
        let mut out = [0; 8];
        PixelFormat::Xrgb8888.pack_row(&rgb, &mut out);
        assert_eq!(out, [0x56, 0x34, 0x12, 0xff, 0x00, 0x00, 0xff, 0xff]);
    }

    #[test]
    fn packs_only_what_both_sides_hold() {
        let mut out = [7; 6];
        PixelFormat::Rgb565.pack_row(&[255, 255, 255], &mut out);
        assert_eq!(out, [0xff, 0xff, 7, 7, 7, 7]);
        assert_eq!(PixelFormat::Rgb565.bytes_per_pixel(), 2);
        assert_eq!(PixelFormat::Xrgb8888.bytes_per_pixel(), 4);
    }
}
