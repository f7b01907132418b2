//! [`Canvas`]: an RGB888 pixel buffer whose size is chosen at run time, usable as an
//! embedded-graphics [`DrawTarget`] so text and primitives draw straight into it.
//!
//! Pixels are stored row-major and interleaved (`r, g, b`), like [`crate::frame::Frame`].
//! Drawing outside the canvas is clipped, never an error.

use std::convert::Infallible;

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::{Dimensions, DrawTarget, OriginDimensions, Pixel, Size};
use embedded_graphics::primitives::Rectangle;

use super::DisplayError;
use crate::frame::MAX_SIDE;

/// A runtime-sized RGB888 image that embedded-graphics can draw on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canvas {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Canvas {
    /// A black canvas of `width` x `height` pixels; each side must be between 1 and
    /// [`MAX_SIDE`].
    pub fn new(width: u32, height: u32) -> Result<Canvas, DisplayError> {
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(DisplayError::CanvasSize { width, height });
        }
        Ok(Canvas {
            width,
            height,
            rgb: vec![0; width as usize * height as usize * 3],
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Interleaved RGB bytes, row-major, `width * height * 3` long.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// Mutable access to the RGB bytes, for renderers that fill whole rows.
    pub(crate) fn rgb_mut(&mut self) -> &mut [u8] {
        &mut self.rgb
    }

    /// The RGB bytes of row `y` (`width * 3` long), or `None` below the canvas.
    pub fn row(&self, y: u32) -> Option<&[u8]> {
        if y >= self.height {
            return None;
        }
        let stride = self.width as usize * 3;
        let start = y as usize * stride;
        Some(&self.rgb[start..start + stride])
    }

    /// The colour at (x, y), or `None` outside the canvas.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// Index of the first byte of (x, y), for coordinates that may lie outside.
    fn index(&self, x: i32, y: i32) -> Option<usize> {
        let (x, y) = (u32::try_from(x).ok()?, u32::try_from(y).ok()?);
        (x < self.width && y < self.height)
            .then(|| (y as usize * self.width as usize + x as usize) * 3)
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(point, color) in pixels {
            if let Some(i) = self.index(point.x, point.y) {
                self.rgb[i..i + 3].copy_from_slice(&[color.r(), color.g(), color.b()]);
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let area = area.intersection(&self.bounding_box());
        let Some(bottom_right) = area.bottom_right() else {
            return Ok(());
        };
        let rgb = [color.r(), color.g(), color.b()];
        // The intersection with the canvas has non-negative coordinates inside it.
        let (x0, x1) = (area.top_left.x as usize, bottom_right.x as usize);
        for y in area.top_left.y as usize..=bottom_right.y as usize {
            let row = y * self.width as usize * 3;
            for px in self.rgb[row + x0 * 3..row + (x1 + 1) * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&rgb);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::prelude::{Point, Primitive};
    use embedded_graphics::primitives::PrimitiveStyle;
    use embedded_graphics::Drawable;

    #[test]
    fn rejects_empty_and_absurd_sizes() {
        assert!(matches!(
            Canvas::new(0, 4),
            Err(DisplayError::CanvasSize {
                width: 0,
                height: 4
            })
        ));
        assert!(Canvas::new(4, MAX_SIDE + 1).is_err());
    }

    #[test]
    fn draws_pixels_and_clips_outside() {
        let mut c = Canvas::new(3, 2).unwrap();
        c.draw_iter([
            Pixel(Point::new(2, 1), Rgb888::new(1, 2, 3)),
            Pixel(Point::new(-1, 0), Rgb888::WHITE),
            Pixel(Point::new(3, 0), Rgb888::WHITE),
            Pixel(Point::new(0, 2), Rgb888::WHITE),
        ])
        .unwrap();
        let mut expected = vec![0; 18];
        expected[15..18].copy_from_slice(&[1, 2, 3]);
        assert_eq!(c.rgb(), expected.as_slice());
        assert_eq!(c.pixel(2, 1), Some([1, 2, 3]));
        assert_eq!(c.pixel(3, 1), None);
        assert_eq!(c.row(1), Some(&expected[9..18]));
        assert_eq!(c.row(2), None);
    }

    #[test]
    fn fill_solid_is_clipped_to_the_canvas() {
        let mut c = Canvas::new(4, 3).unwrap();
        Rectangle::new(Point::new(2, -5), Size::new(10, 7))
            .into_styled(PrimitiveStyle::with_fill(Rgb888::new(9, 8, 7)))
            .draw(&mut c)
            .unwrap();
        for y in 0..3 {
            for x in 0..4 {
                let want = if x >= 2 && y <= 1 {
                    [9, 8, 7]
                } else {
                    [0, 0, 0]
                };
                assert_eq!(c.pixel(x, y), Some(want), "({x}, {y})");
            }
        }
        // Entirely outside: nothing drawn, no panic.
        c.fill_solid(
            &Rectangle::new(Point::new(-9, -9), Size::new(3, 3)),
            Rgb888::WHITE,
        )
        .unwrap();
        assert_eq!(c.pixel(0, 0), Some([0, 0, 0]));
    }
}
