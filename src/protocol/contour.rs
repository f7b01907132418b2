//! Contour polygons, the geometry behind mask encoding 2: the outer boundary of each connected
//! region traced on the pixel-corner lattice, simplified with Douglas–Peucker until the payload
//! fits a byte budget, and the scan-line fill a receiver uses to turn polygons back into a mask.
//!
//! Conventions (the specification in `docs/serial-protocol.md` repeats them):
//! - A vertex `(x, y)` is a pixel corner: pixel `(px, py)` spans `px..px+1` × `py..py+1`, so
//!   vertices range over `0..=width` × `0..=height`.
//! - Regions are 8-connected (pixels touching at a corner belong together); one polygon per
//!   region, its outer boundary only. Holes are not sent, and a region lying inside another
//!   region's hole is covered by the enclosing polygon, so it is not sent either.
//! - Fill: a pixel is set when its centre `(px + ½, py + ½)` lies inside at least one polygon,
//!   each polygon taken by the even-odd rule. An unsimplified outline fills back to exactly its
//!   region with holes filled.

use crate::frame::Mask;

use super::ProtocolError;

/// One closed polygon: its vertices in order, the last joined back to the first.
pub type Polygon = Vec<(u16, u16)>;

/// Most polygons in one payload, and most vertices in one polygon (the u16 count fields).
pub const MAX_COUNT: usize = u16::MAX as usize;

/// Payload bytes of a contour payload holding `polygons`: a u16 polygon count, then per polygon a
/// u16 vertex count and four bytes per vertex.
pub fn contour_payload_len(polygons: &[Polygon]) -> usize {
    2 + polygons.iter().map(|p| 2 + 4 * p.len()).sum::<usize>()
}

/// The exact outer boundary of every region of `mask` that is not inside another region, in
/// raster order of each region's first pixel. Vertices are the corners where the boundary turns,
/// starting at the top-left corner of the region's first pixel and running clockwise on screen
/// (x right, y down).
pub fn outlines(mask: &Mask) -> Vec<Polygon> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let bits = mask.bits();
    let mut covered = vec![false; w * h];
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if bits[i] && !covered[i] {
                // The first pixel of a region not yet covered: the pixels above and to the left
                // are clear, so its top edge lies on the region's outer boundary.
                let polygon = trace(mask, x as i64, y as i64);
                fill_polygon(&mut covered, w, h, &polygon);
                out.push(polygon);
            }
        }
    }
    out
}

/// Follows the outer boundary from the top-left corner of pixel `(px, py)`, keeping the region on
/// the right. At a corner where two set pixels touch diagonally the boundary turns towards the
/// other one, which makes regions 8-connected.
fn trace(mask: &Mask, px: i64, py: i64) -> Polygon {
    let (w, h) = (i64::from(mask.width()), i64::from(mask.height()));
    let set = |x: i64, y: i64| x >= 0 && y >= 0 && x < w && y < h && mask.get(x as u32, y as u32);
    let start = (px, py);
    let (mut x, mut y) = start;
    let (mut dx, mut dy) = (1i64, 0i64);
    let mut polygon = vec![(px as u16, py as u16)];
    // Every edge of the lattice is walked at most once in each direction.
    let limit = 4 * (w + 1) * (h + 1);
    for _ in 0..limit {
        x += dx;
        y += dy;
        // With y down, the right-hand side of direction (dx, dy) is (-dy, dx). The pixel ahead on
        // that side has its centre at vertex + (direction + side) / 2.
        let (rx, ry) = (-dy, dx);
        let ahead = |sx: i64, sy: i64| set((2 * x + dx + sx - 1) / 2, (2 * y + dy + sy - 1) / 2);
        let (ndx, ndy) = if ahead(-rx, -ry) {
            (dy, -dx) // the pixel ahead on the left is set: turn left
        } else if ahead(rx, ry) {
            (dx, dy) // only the pixel ahead on the right is set: straight on
        } else {
            (-dy, dx) // neither: turn right
        };
        if (x, y) == start && (ndx, ndy) == (1, 0) {
            break;
        }
        if (ndx, ndy) != (dx, dy) {
            polygon.push((x as u16, y as u16));
        }
        (dx, dy) = (ndx, ndy);
    }
    polygon
}

/// Douglas–Peucker simplification of a closed polygon: keeps the fewest vertices such that no
/// dropped vertex lies farther than `tolerance` pixels from the simplified boundary. A tolerance
/// of 0 (or less) returns the polygon unchanged. The result may have fewer than three vertices
/// when the whole polygon is within the tolerance of a line; such a polygon encloses nothing.
pub fn simplify(polygon: &[(u16, u16)], tolerance: f64) -> Polygon {
    let n = polygon.len();
    if n <= 3 || tolerance.is_nan() || tolerance <= 0.0 {
        return polygon.to_vec();
    }
    let p = |i: usize| {
        let (x, y) = polygon[i % n];
        (f64::from(x), f64::from(y))
    };
    // Anchor the closed ring at vertex 0 and the vertex farthest from it, then simplify both
    // halves as open chains (index n stands for vertex 0 again).
    let far = (1..n)
        .max_by(|&a, &b| dist2(p(0), p(a)).total_cmp(&dist2(p(0), p(b))))
        .unwrap_or(1);
    let mut keep = vec![false; n + 1];
    keep[0] = true;
    keep[far] = true;
    keep[n] = true;
    let mut stack = vec![(0, far), (far, n)];
    while let Some((a, b)) = stack.pop() {
        let mut best = (0.0, a);
        for i in a + 1..b {
            let d = segment_distance(p(i), p(a), p(b));
            if d > best.0 {
                best = (d, i);
            }
        }
        if best.0 > tolerance {
            keep[best.1] = true;
            stack.push((a, best.1));
            stack.push((best.1, b));
        }
    }
    (0..n).filter(|&i| keep[i]).map(|i| polygon[i]).collect()
}

fn dist2(a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)
}

/// Distance from `p` to the segment `a`–`b`.
fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let len2 = vx * vx + vy * vy;
    if len2 == 0.0 {
        return dist2(p, a).sqrt();
    }
    let t = (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / len2).clamp(0.0, 1.0);
    dist2(p, (a.0 + t * vx, a.1 + t * vy)).sqrt()
}

/// Twice the absolute area enclosed by a polygon (shoelace formula).
fn doubled_area(polygon: &[(u16, u16)]) -> i64 {
    let n = polygon.len();
    let sum: i64 = (0..n)
        .map(|i| {
            let (x0, y0) = polygon[i];
            let (x1, y1) = polygon[(i + 1) % n];
            i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0)
        })
        .sum();
    sum.abs()
}

/// The outlines of `mask` (see [`outlines`]) simplified until the contour payload fits in
/// `max_payload` bytes: exact outlines when they fit, else Douglas–Peucker with tolerances
/// 0.75, 1, 1.5, 2, 3, 4, … pixels (the first that fits), dropping polygons that collapse to
/// fewer than three vertices. If even the coarsest tolerance (the mask's longer side) does not
/// fit, the smallest polygons are dropped until the rest fit; a budget under 2 bytes gives no
/// polygon (the payload is then the 2-byte count). The result never holds more than
/// [`MAX_COUNT`] polygons or vertices per polygon, whatever the budget.
pub fn contours(mask: &Mask, max_payload: usize) -> Vec<Polygon> {
    let exact = outlines(mask);
    let fits = |polygons: &[Polygon]| {
        contour_payload_len(polygons) <= max_payload
            && polygons.len() <= MAX_COUNT
            && polygons.iter().all(|p| p.len() <= MAX_COUNT)
    };
    if fits(&exact) {
        return exact;
    }
    let longest = f64::from(mask.width().max(mask.height()));
    let mut tolerance = 0.75;
    let mut simplified;
    loop {
        simplified = exact
            .iter()
            .map(|p| simplify(p, tolerance))
            .filter(|p| p.len() >= 3)
            .collect::<Vec<_>>();
        if fits(&simplified) || tolerance >= longest {
            break;
        }
        // 0.75, 1, 1.5, 2, 3, 4, 6, 8, …
        tolerance = if tolerance < 1.0 {
            1.0
        } else if tolerance.log2().fract() == 0.0 {
            tolerance * 1.5
        } else {
            tolerance * 4.0 / 3.0
        };
    }
    if !fits(&simplified) {
        // Keep the largest polygons that fit, in their original order.
        let mut order: Vec<usize> = (0..simplified.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(doubled_area(&simplified[i])));
        let mut keep = vec![false; simplified.len()];
        let (mut bytes, mut count) = (2usize, 0usize);
        for i in order {
            let cost = 2 + 4 * simplified[i].len();
            if count < MAX_COUNT && simplified[i].len() <= MAX_COUNT && bytes + cost <= max_payload
            {
                keep[i] = true;
                bytes += cost;
                count += 1;
            }
        }
        let mut index = 0;
        simplified.retain(|_| {
            index += 1;
            keep[index - 1]
        });
    }
    simplified
}

/// Checks that every polygon has at least three vertices, all within `0..=width` ×
/// `0..=height`.
pub(super) fn check_polygons(
    width: u16,
    height: u16,
    polygons: &[Polygon],
) -> Result<(), ProtocolError> {
    for (i, polygon) in polygons.iter().enumerate() {
        if polygon.len() < 3 {
            return Err(ProtocolError::Contour {
                polygon: i,
                reason: "fewer than three vertices",
            });
        }
        if polygon.iter().any(|&(x, y)| x > width || y > height) {
            return Err(ProtocolError::Contour {
                polygon: i,
                reason: "vertex outside the mask",
            });
        }
    }
    Ok(())
}

/// The mask that `polygons` describe at `width` × `height`: a pixel is set when its centre lies
/// inside at least one polygon (even-odd rule per polygon). This is how a receiver gets the area
/// of a contour message (`area()` of the result). Errors name the first polygon with fewer than
/// three vertices or a vertex outside the mask, or a zero width or height.
pub fn polygons_to_mask(
    width: u16,
    height: u16,
    polygons: &[Polygon],
) -> Result<Mask, ProtocolError> {
    if width == 0 || height == 0 {
        return Err(ProtocolError::Contour {
            polygon: 0,
            reason: "zero-size mask",
        });
    }
    check_polygons(width, height, polygons)?;
    let (w, h) = (usize::from(width), usize::from(height));
    let mut bits = vec![false; w * h];
    for polygon in polygons {
        fill_polygon(&mut bits, w, h, polygon);
    }
    Mask::new(u32::from(width), u32::from(height), bits).map_err(|_| ProtocolError::Contour {
        polygon: 0,
        reason: "zero-size mask",
    })
}

/// Sets the pixels of a `w` × `h` bitmap whose centres lie inside `polygon` (even-odd rule):
/// per row, the x positions where the edges cross the row's centre line, sorted, taken in pairs.
fn fill_polygon(bits: &mut [bool], w: usize, h: usize, polygon: &[(u16, u16)]) {
    let n = polygon.len();
    if n < 3 {
        return;
    }
    let ys = polygon.iter().map(|&(_, y)| usize::from(y));
    let (top, bottom) = (ys.clone().min().unwrap_or(0), ys.max().unwrap_or(0).min(h));
    if top >= bottom {
        return;
    }
    let mut crossings: Vec<Vec<f64>> = vec![Vec::new(); bottom - top];
    for i in 0..n {
        let (x0, y0) = polygon[i];
        let (x1, y1) = polygon[(i + 1) % n];
        if y0 == y1 {
            continue;
        }
        let (ya, yb) = (usize::from(y0.min(y1)), usize::from(y0.max(y1)).min(h));
        let slope = (f64::from(x1) - f64::from(x0)) / (f64::from(y1) - f64::from(y0));
        for y in ya..yb {
            let cy = y as f64 + 0.5;
            crossings[y - top].push(f64::from(x0) + (cy - f64::from(y0)) * slope);
        }
    }
    for (row, xs) in crossings.iter_mut().enumerate() {
        xs.sort_by(f64::total_cmp);
        let line = &mut bits[(top + row) * w..(top + row + 1) * w];
        for pair in xs.chunks_exact(2) {
            // Pixels whose centre x + ½ lies in [pair[0], pair[1]).
            let first = (pair[0] - 0.5).ceil().clamp(0.0, w as f64) as usize;
            let end = (pair[1] - 0.5).ceil().clamp(0.0, w as f64) as usize;
            if first < end {
                line[first..end].fill(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixels set in `mask` or enclosed by it: everything not 4-connected to the border through
    /// clear pixels.
    fn holes_filled(mask: &Mask) -> Mask {
        let (w, h) = (mask.width() as usize, mask.height() as usize);
        let bits = mask.bits();
        let mut outside = vec![false; w * h];
        let mut stack: Vec<usize> = (0..w * h)
            .filter(|&i| {
                let (x, y) = (i % w, i / w);
                (x == 0 || y == 0 || x == w - 1 || y == h - 1) && !bits[i]
            })
            .collect();
        while let Some(i) = stack.pop() {
            if outside[i] || bits[i] {
                continue;
            }
            outside[i] = true;
            let (x, y) = (i % w, i / w);
            if x > 0 {
                stack.push(i - 1);
            }
            if x + 1 < w {
                stack.push(i + 1);
            }
            if y > 0 {
                stack.push(i - w);
            }
            if y + 1 < h {
                stack.push(i + w);
            }
        }
        let filled = outside.iter().map(|&o| !o).collect();
        Mask::new(mask.width(), mask.height(), filled).unwrap()
    }

    fn disc(size: u32, cx: f64, cy: f64, r: f64) -> Mask {
        let bits = (0..size * size)
            .map(|i| {
                let (x, y) = (f64::from(i % size) + 0.5, f64::from(i / size) + 0.5);
                (x - cx).powi(2) + (y - cy).powi(2) <= r * r
            })
            .collect();
        Mask::new(size, size, bits).unwrap()
    }

    #[test]
    fn a_rectangle_is_four_corners_clockwise() {
        let mask = Mask::from_ascii(
            "
            ....
            .##.
            .##.
            ....",
        );
        assert_eq!(outlines(&mask), vec![vec![(1, 1), (3, 1), (3, 3), (1, 3)]]);
    }

    #[test]
    fn an_l_shape_traces_every_turn() {
        let mask = Mask::from_ascii(
            "
            #..
            ###",
        );
        let outline = outlines(&mask);
        assert_eq!(
            outline,
            vec![vec![(0, 0), (1, 0), (1, 1), (3, 1), (3, 2), (0, 2)]]
        );
        assert_eq!(polygons_to_mask(3, 2, &outline).unwrap(), mask);
    }

    #[test]
    fn diagonal_neighbours_are_one_region() {
        let mask = Mask::from_ascii(
            "
            #..
            .#.
            ..#",
        );
        let outline = outlines(&mask);
        assert_eq!(outline.len(), 1, "{outline:?}");
        assert_eq!(polygons_to_mask(3, 3, &outline).unwrap(), mask);
    }

    #[test]
    fn holes_are_filled_and_nested_regions_are_not_sent() {
        let mask = Mask::from_ascii(
            "
            #######..
            #.....#..
            #.###.#.#
            #.#.#.#..
            #.###.#..
            #.....#..
            #######..",
        );
        let outline = outlines(&mask);
        // The ring and the single pixel at the right; the small ring inside the big one's hole
        // is covered by the big one's polygon.
        assert_eq!(outline.len(), 2, "{outline:?}");
        let back = polygons_to_mask(9, 7, &outline).unwrap();
        assert_eq!(back, holes_filled(&mask));
        assert_eq!(back.area(), 7 * 7 + 1);
    }

    #[test]
    fn separate_regions_come_in_raster_order() {
        let mask = Mask::from_ascii(
            "
            ..##
            #...
            #..#",
        );
        let outline = outlines(&mask);
        assert_eq!(
            outline,
            vec![
                vec![(2, 0), (4, 0), (4, 1), (2, 1)],
                vec![(0, 1), (1, 1), (1, 3), (0, 3)],
                vec![(3, 2), (4, 2), (4, 3), (3, 3)],
            ]
        );
    }

    #[test]
    fn exact_outlines_fill_back_to_the_mask_with_holes_filled() {
        // Random masks of varying density, from a fixed linear congruential generator.
        let mut state = 0x2545_f491_u64;
        for case in 0..200 {
            let (w, h) = (1 + case % 13, 1 + (case * 7) % 11);
            let density = (case % 5) as u64 * 20 + 10;
            let bits = (0..w * h)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 33) % 100 < density
                })
                .collect();
            let mask = Mask::new(w, h, bits).unwrap();
            let outline = outlines(&mask);
            let back = polygons_to_mask(w as u16, h as u16, &outline).unwrap();
            assert_eq!(
                back,
                holes_filled(&mask),
                "case {case}:\n{}\n{outline:?}",
                mask.to_ascii()
            );
        }
    }

    #[test]
    fn a_simplified_disc_keeps_its_area() {
        let mask = disc(128, 64.0, 60.0, 40.0);
        let exact = outlines(&mask);
        assert_eq!(exact.len(), 1);
        for tolerance in [0.75, 1.0, 2.0] {
            let simple: Vec<Polygon> = exact.iter().map(|p| simplify(p, tolerance)).collect();
            assert!(
                simple[0].len() < exact[0].len() / 2,
                "{tolerance}: {} of {}",
                simple[0].len(),
                exact[0].len()
            );
            let back = polygons_to_mask(128, 128, &simple).unwrap();
            let (a, b) = (mask.area() as f64, back.area() as f64);
            assert!(
                (a - b).abs() / a < 0.03,
                "tolerance {tolerance}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn simplification_stays_within_its_tolerance() {
        let mask = disc(64, 30.0, 33.0, 20.0);
        let exact = &outlines(&mask)[0];
        let tolerance = 1.5;
        let simple = simplify(exact, tolerance);
        let point = |(x, y): (u16, u16)| (f64::from(x), f64::from(y));
        for &v in exact {
            let nearest = (0..simple.len())
                .map(|i| {
                    let (a, b) = (simple[i], simple[(i + 1) % simple.len()]);
                    segment_distance(point(v), point(a), point(b))
                })
                .fold(f64::INFINITY, f64::min);
            assert!(nearest <= tolerance + 1e-9, "{v:?} is {nearest} away");
        }
        assert_eq!(simplify(exact, 0.0), *exact);
    }

    #[test]
    fn contours_respect_the_byte_budget() {
        let mask = disc(200, 100.0, 100.0, 80.0);
        let exact_len = contour_payload_len(&outlines(&mask));
        assert_eq!(contours(&mask, exact_len), outlines(&mask));
        for budget in [2000, 400, 100, 40] {
            let polygons = contours(&mask, budget);
            assert!(contour_payload_len(&polygons) <= budget, "{budget}");
            let back = polygons_to_mask(200, 200, &polygons).unwrap();
            let (a, b) = (mask.area() as f64, back.area() as f64);
            assert!((a - b).abs() / a < 0.15, "budget {budget}: {a} vs {b}");
        }
        assert_eq!(contours(&mask, 1), Vec::<Polygon>::new());
    }

    #[test]
    fn a_tight_budget_keeps_the_largest_regions() {
        let mut mask = disc(100, 30.0, 30.0, 25.0).bits().to_vec();
        // Twenty single pixels along the bottom row.
        for x in 0..20 {
            mask[99 * 100 + 5 * x] = true;
        }
        let mask = Mask::new(100, 100, mask).unwrap();
        assert_eq!(outlines(&mask).len(), 21);
        let polygons = contours(&mask, 60);
        assert!(contour_payload_len(&polygons) <= 60);
        assert!(!polygons.is_empty());
        let back = polygons_to_mask(100, 100, &polygons).unwrap();
        assert!(back.get(30, 30), "the disc survives");
    }

    #[test]
    fn bad_polygons_are_errors() {
        assert!(matches!(
            polygons_to_mask(4, 4, &[vec![(0, 0), (1, 1)]]),
            Err(ProtocolError::Contour { polygon: 0, .. })
        ));
        assert!(matches!(
            polygons_to_mask(
                4,
                4,
                &[vec![(0, 0), (1, 0), (1, 1)], vec![(0, 0), (5, 0), (5, 1)]]
            ),
            Err(ProtocolError::Contour { polygon: 1, .. })
        ));
        assert!(polygons_to_mask(0, 4, &[]).is_err());
        // A polygon running along the mask's far edges is fine.
        let full = polygons_to_mask(4, 4, &[vec![(0, 0), (4, 0), (4, 4), (0, 4)]]).unwrap();
        assert_eq!(full.area(), 16);
    }
}
