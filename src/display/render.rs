//! Drawing one processed frame onto a [`Canvas`]: the frame, its mask and two lines of text.
//!
//! - The frame is fitted into the canvas with its aspect ratio kept and centred; the bars left
//!   over are black. Scaling is nearest-neighbour, sampling the source pixel under the centre
//!   of each canvas pixel, so a frame of the canvas's size is copied exactly.
//! - The mask is scaled the same way, then drawn like the overlay PNG (`crate::output`): a
//!   40 % fill in the mask colour and an opaque one-pixel contour. A contour pixel is a mask
//!   pixel with a 4-neighbour outside the mask; the edge of the drawn image counts as outside.
//!   The contour is found after scaling, so it stays one canvas pixel wide.
//! - The label (the prompt) is written at the top left and the status line (`30.0 fps  42 ms`)
//!   at the bottom left, in an embedded-graphics mono font on a solid background: 6x10 on
//!   canvases under 480 rows, 10x20 from 480 rows up. Text that does not fit is clipped.

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyleBuilder};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::Point;
use embedded_graphics::text::{Baseline, Text};
use embedded_graphics::Drawable;

use super::canvas::Canvas;
use super::DisplayError;
use crate::frame::{Frame, Mask};
use crate::output::{on_contour, paint};

/// Canvases with at least this many rows get the large font.
const LARGE_FONT_ROWS: u32 = 480;

/// Colours used by [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Mask fill (blended at 40 %) and contour colour.
    pub mask: [u8; 3],
    /// Text colour.
    pub text: [u8; 3],
    /// Colour of the character cells behind the text.
    pub text_background: [u8; 3],
}

impl Style {
    /// The mask in `mask`, white text on black.
    pub fn new(mask: [u8; 3]) -> Style {
        Style {
            mask,
            text: [255, 255, 255],
            text_background: [0, 0, 0],
        }
    }
}

/// What [`render`] draws.
#[derive(Debug, Clone, Copy)]
pub struct Scene<'a> {
    /// The frame, full size.
    pub frame: &'a Frame,
    /// The mask, at the frame's size.
    pub mask: &'a Mask,
    /// Label written at the top left (the prompt).
    pub label: &'a str,
    /// Processed frames per second, for the status line.
    pub fps: f64,
    /// End-to-end latency in milliseconds, for the status line.
    pub latency_ms: f64,
}

/// Where the frame lands on the canvas: the drawn rectangle's offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Left edge of the drawn frame, in canvas pixels.
    pub x: u32,
    /// Top edge of the drawn frame, in canvas pixels.
    pub y: u32,
    /// Width of the drawn frame (at least 1).
    pub width: u32,
    /// Height of the drawn frame (at least 1).
    pub height: u32,
}

impl Placement {
    /// The largest rectangle with the frame's aspect ratio (rounded to whole pixels) that fits
    /// the canvas, centred. All sizes are at least 1.
    pub fn fit(frame_width: u32, frame_height: u32, canvas_width: u32, canvas_height: u32) -> Self {
        let (fw, fh) = (
            u64::from(frame_width.max(1)),
            u64::from(frame_height.max(1)),
        );
        let (cw, ch) = (
            u64::from(canvas_width.max(1)),
            u64::from(canvas_height.max(1)),
        );
        // Width-limited when cw / fw <= ch / fh.
        let (w, h) = if cw * fh <= ch * fw {
            (cw, ((fh * cw + fw / 2) / fw).clamp(1, ch))
        } else {
            (((fw * ch + fh / 2) / fh).clamp(1, cw), ch)
        };
        // w <= cw and h <= ch, both from u32 values.
        let (w, h) = (w as u32, h as u32);
        Placement {
            x: (canvas_width.max(1) - w) / 2,
            y: (canvas_height.max(1) - h) / 2,
            width: w,
            height: h,
        }
    }
}

/// For each of `dst` output positions, the source index (of `src`) under its centre.
fn sample_positions(src: u32, dst: u32) -> Vec<usize> {
    let (src, dst) = (u64::from(src), u64::from(dst));
    // (2i + 1) * src / (2 dst) < src for i < dst, and it fits usize as src <= u32::MAX.
    (0..dst)
        .map(|i| ((2 * i + 1) * src / (2 * dst)) as usize)
        .collect()
}

/// The status line: `30.0 fps  42 ms`; a value that is not a finite non-negative number is
/// shown as `--`.
pub fn status_line(fps: f64, latency_ms: f64) -> String {
    let shown = |v: f64, decimals: usize| {
        if v.is_finite() && v >= 0.0 {
            format!("{v:.decimals$}")
        } else {
            "--".to_string()
        }
    };
    format!("{} fps  {} ms", shown(fps, 1), shown(latency_ms, 0))
}

/// The font and margin used on a canvas of `height` rows.
pub fn text_font(height: u32) -> (&'static MonoFont<'static>, i32) {
    if height >= LARGE_FONT_ROWS {
        (&FONT_10X20, 6)
    } else {
        (&FONT_6X10, 2)
    }
}

/// Draws `scene` over the whole canvas. The mask must have the frame's size.
pub fn render(canvas: &mut Canvas, scene: &Scene<'_>, style: &Style) -> Result<(), DisplayError> {
    let (frame, mask) = (scene.frame, scene.mask);
    if mask.width() != frame.width() || mask.height() != frame.height() {
        return Err(DisplayError::MaskSize {
            frame_width: frame.width(),
            frame_height: frame.height(),
            mask_width: mask.width(),
            mask_height: mask.height(),
        });
    }
    draw_image(canvas, frame, mask, style.mask);
    draw_text(canvas, scene, style);
    Ok(())
}

/// The frame and mask, fitted and centred, over a black canvas.
fn draw_image(canvas: &mut Canvas, frame: &Frame, mask: &Mask, color: [u8; 3]) {
    let cw = canvas.width() as usize;
    let place = Placement::fit(
        frame.width(),
        frame.height(),
        canvas.width(),
        canvas.height(),
    );
    let xs = sample_positions(frame.width(), place.width);
    let ys = sample_positions(frame.height(), place.height);
    let (w, h) = (xs.len(), ys.len());
    let fw = frame.width() as usize;

    let bits = mask.bits();
    let inside: Vec<bool> = ys
        .iter()
        .flat_map(|&sy| xs.iter().map(move |&sx| bits[sy * fw + sx]))
        .collect();
    let at = |x: usize, y: usize| inside[y * w + x];

    let src = frame.rgb();
    let out = canvas.rgb_mut();
    out.fill(0);
    for (y, &sy) in ys.iter().enumerate() {
        let row = (place.y as usize + y) * cw + place.x as usize;
        for (x, &sx) in xs.iter().enumerate() {
            let s = (sy * fw + sx) * 3;
            let d = (row + x) * 3;
            let px = &mut out[d..d + 3];
            px.copy_from_slice(&src[s..s + 3]);
            if !at(x, y) {
                continue;
            }
            paint(px, color, on_contour(at, x, y, w, h));
        }
    }
}

/// The label at the top left and the status line at the bottom left.
fn draw_text(canvas: &mut Canvas, scene: &Scene<'_>, style: &Style) {
    let (font, margin) = text_font(canvas.height());
    let [r, g, b] = style.text;
    let [br, bg, bb] = style.text_background;
    let text_style = MonoTextStyleBuilder::new()
        .font(font)
        .text_color(Rgb888::new(r, g, b))
        .background_color(Rgb888::new(br, bg, bb))
        .build();
    let bottom = i32::try_from(canvas.height()).unwrap_or(i32::MAX) - margin;
    let status = status_line(scene.fps, scene.latency_ms);
    // Drawing on a canvas cannot fail (its error type is `Infallible`).
    let Ok(_) = Text::with_baseline(
        scene.label,
        Point::new(margin, margin),
        text_style,
        Baseline::Top,
    )
    .draw(canvas);
    let Ok(_) = Text::with_baseline(
        &status,
        Point::new(margin, bottom),
        text_style,
        Baseline::Bottom,
    )
    .draw(canvas);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::blend;
    use embedded_graphics::prelude::{Dimensions, PointsIter};

    const RED: [u8; 3] = [255, 0, 0];

    /// A frame whose pixel (x, y) is (10 x, 10 y, 77), so every pixel's source is visible.
    fn gradient(width: u32, height: u32) -> Frame {
        let rgb = (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [(10 * x) as u8, (10 * y) as u8, 77]))
            .collect();
        Frame::from_rgb(width, height, rgb).unwrap()
    }

    /// A mask with the rectangle [x0, x1) x [y0, y1) set.
    fn rect_mask(width: u32, height: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
        let bits = (0..height)
            .flat_map(|y| (0..width).map(move |x| x >= x0 && x < x1 && y >= y0 && y < y1))
            .collect();
        Mask::new(width, height, bits).unwrap()
    }

    fn scene<'a>(frame: &'a Frame, mask: &'a Mask, label: &'a str) -> Scene<'a> {
        Scene {
            frame,
            mask,
            label,
            fps: 29.97,
            latency_ms: 41.6,
        }
    }

    /// Rows covered by the text in the small font: the label's and the status line's cells.
    fn in_text_rows(y: u32, height: u32) -> bool {
        y < 2 + 10 || y >= height - 2 - 10
    }

    #[test]
    fn status_line_formats_and_guards_values() {
        assert_eq!(status_line(29.97, 41.6), "30.0 fps  42 ms");
        assert_eq!(status_line(f64::NAN, -1.0), "-- fps  -- ms");
        assert_eq!(status_line(f64::INFINITY, 0.0), "-- fps  0 ms");
    }

    #[test]
    fn placement_fits_and_centres() {
        let same = Placement::fit(64, 48, 64, 48);
        assert_eq!((same.x, same.y, same.width, same.height), (0, 0, 64, 48));
        // 4:3 into 16:9: height-limited, bars left and right.
        let p = Placement::fit(640, 480, 1920, 1080);
        assert_eq!((p.x, p.y, p.width, p.height), (240, 0, 1440, 1080));
        // Wide into tall: width-limited, bars top and bottom.
        let p = Placement::fit(200, 100, 100, 100);
        assert_eq!((p.x, p.y, p.width, p.height), (0, 25, 100, 50));
        // Degenerate extremes keep at least one pixel.
        let p = Placement::fit(16_384, 1, 10, 10);
        assert_eq!((p.width, p.height), (10, 1));
    }

    #[test]
    fn sampling_copies_equal_sizes_and_doubles_exactly() {
        assert_eq!(sample_positions(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(sample_positions(3, 6), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(sample_positions(6, 3), vec![1, 3, 5]);
    }

    #[test]
    fn same_size_render_matches_overlay_pixel_by_pixel() {
        let (w, h) = (24, 40);
        let frame = gradient(w, h);
        let mask = rect_mask(w, h, 5, 14, 15, 24);
        let mut canvas = Canvas::new(w, h).unwrap();
        render(&mut canvas, &scene(&frame, &mask, "p"), &Style::new(RED)).unwrap();

        // Chosen points: inside the fill, on the contour, outside.
        let f = frame.pixel(8, 18);
        assert_eq!(
            canvas.pixel(8, 18),
            Some([blend(f[0], 255), blend(f[1], 0), blend(f[2], 0)])
        );
        assert_eq!(canvas.pixel(5, 18), Some(RED), "left edge of the mask");
        assert_eq!(canvas.pixel(14, 23), Some(RED), "bottom-right corner");
        assert_eq!(
            canvas.pixel(4, 18),
            Some(frame.pixel(4, 18)),
            "just outside"
        );
        assert_eq!(canvas.pixel(20, 20), Some(frame.pixel(20, 20)));

        // Every pixel outside the text rows, against the overlay rule.
        for y in (0..h).filter(|&y| !in_text_rows(y, h)) {
            for x in 0..w {
                let f = frame.pixel(x, y);
                let inside = mask.get(x, y);
                let edge = inside
                    && (!mask.get(x - 1, y)
                        || !mask.get(x + 1, y)
                        || !mask.get(x, y - 1)
                        || !mask.get(x, y + 1));
                let want = if edge {
                    RED
                } else if inside {
                    [blend(f[0], 255), blend(f[1], 0), blend(f[2], 0)]
                } else {
                    f
                };
                assert_eq!(canvas.pixel(x, y), Some(want), "({x}, {y})");
            }
        }
    }

    #[test]
    fn mask_at_the_frame_border_is_closed_along_it() {
        let frame = gradient(8, 30);
        let mask = rect_mask(8, 30, 0, 12, 8, 18);
        let mut canvas = Canvas::new(8, 30).unwrap();
        render(&mut canvas, &scene(&frame, &mask, ""), &Style::new(RED)).unwrap();
        assert_eq!(canvas.pixel(0, 14), Some(RED));
        assert_eq!(canvas.pixel(7, 15), Some(RED));
        let f = frame.pixel(3, 14);
        assert_eq!(
            canvas.pixel(3, 14),
            Some([blend(f[0], 255), blend(f[1], 0), blend(f[2], 0)])
        );
    }

    #[test]
    fn upscaled_render_letterboxes_and_keeps_a_thin_contour() {
        // 10x10 frame on an 80x40 canvas: drawn 40x40 at x = 20, canvas column 20 + 4 sx + k
        // and row 4 sy + k (k < 4) show source (sx, sy). Mask columns 2..8 and rows 4..8 land
        // on canvas columns 28..52 and rows 16..32.
        let frame = gradient(10, 10);
        let mask = Mask::from_ascii(
            "..........
             ..........
             ..........
             ..........
             ..######..
             ..######..
             ..######..
             ..######..
             ..........
             ..........",
        );
        let mut canvas = Canvas::new(80, 40).unwrap();
        render(&mut canvas, &scene(&frame, &mask, ""), &Style::new(RED)).unwrap();
        assert_eq!(canvas.pixel(5, 22), Some([0, 0, 0]), "left bar");
        assert_eq!(canvas.pixel(19, 22), Some([0, 0, 0]), "left bar");
        assert_eq!(canvas.pixel(60, 22), Some([0, 0, 0]), "right bar");
        assert_eq!(canvas.pixel(20, 22), Some(frame.pixel(0, 5)));
        assert_eq!(
            canvas.pixel(27, 22),
            Some(frame.pixel(1, 5)),
            "left of mask"
        );
        assert_eq!(canvas.pixel(28, 22), Some(RED), "contour, one pixel wide");
        let f = frame.pixel(2, 5);
        let fill = Some([blend(f[0], 255), blend(f[1], 0), blend(f[2], 0)]);
        assert_eq!(canvas.pixel(29, 22), fill, "fill next to the contour");
        assert_eq!(canvas.pixel(31, 22), fill);
        assert_eq!(canvas.pixel(40, 16), Some(RED), "top contour");
        assert_eq!(
            canvas.pixel(40, 15),
            Some(frame.pixel(5, 3)),
            "above the mask"
        );
        assert_eq!(canvas.pixel(51, 22), Some(RED), "right contour");
        assert_eq!(
            canvas.pixel(52, 22),
            Some(frame.pixel(8, 5)),
            "right of mask"
        );
    }

    #[test]
    fn text_is_drawn_where_embedded_graphics_puts_it() {
        let (w, h) = (96, 64);
        let frame = Frame::from_gray(w, h, &vec![128; (w * h) as usize]).unwrap();
        let mask = rect_mask(w, h, 0, 0, 0, 0);
        let mut canvas = Canvas::new(w, h).unwrap();
        let style = Style {
            mask: RED,
            text: [255, 255, 0],
            text_background: [0, 0, 64],
        };
        render(&mut canvas, &scene(&frame, &mask, "liver"), &style).unwrap();

        // The expected text, drawn alone on a blank canvas with the same style.
        let mut reference = Canvas::new(w, h).unwrap();
        let text_style = MonoTextStyleBuilder::new()
            .font(&FONT_6X10)
            .text_color(Rgb888::new(255, 255, 0))
            .background_color(Rgb888::new(0, 0, 64))
            .build();
        let label = Text::with_baseline("liver", Point::new(2, 2), text_style, Baseline::Top);
        let status = Text::with_baseline(
            "30.0 fps  42 ms",
            Point::new(2, 62),
            text_style,
            Baseline::Bottom,
        );
        label.draw(&mut reference).unwrap();
        status.draw(&mut reference).unwrap();

        let mut yellow = 0;
        for text in [&label, &status] {
            let area = text.bounding_box();
            for p in area.points() {
                let (x, y) = (p.x as u32, p.y as u32);
                assert_eq!(canvas.pixel(x, y), reference.pixel(x, y), "({x}, {y})");
                let px = canvas.pixel(x, y).unwrap();
                assert!(
                    px == [255, 255, 0] || px == [0, 0, 64],
                    "({x}, {y}): {px:?}"
                );
                yellow += usize::from(px == [255, 255, 0]);
            }
        }
        assert!(yellow > 40, "glyphs are drawn ({yellow} text pixels)");
        // "liver" is 5 cells of 6 pixels from x = 2: the next column is frame again.
        assert_eq!(canvas.pixel(32, 5), Some([128, 128, 128]));
        assert_eq!(canvas.pixel(31, 5), Some([0, 0, 64]));
    }

    #[test]
    fn large_canvases_get_the_large_font() {
        assert_eq!(text_font(479).0.character_size.height, 10);
        assert_eq!(text_font(480).0.character_size.height, 20);
    }

    #[test]
    fn mask_of_another_size_is_an_error() {
        let frame = gradient(8, 8);
        let mask = rect_mask(8, 7, 0, 0, 1, 1);
        let mut canvas = Canvas::new(8, 8).unwrap();
        let err = render(&mut canvas, &scene(&frame, &mask, ""), &Style::new(RED)).unwrap_err();
        assert!(matches!(err, DisplayError::MaskSize { mask_height: 7, .. }));
    }
}
