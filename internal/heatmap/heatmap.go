// Package heatmap draws anomaly maps (patch distances, or the students'
// per-patch errors) over a frame, for snapshots and score --heatmap, and
// finds the worst region. It is apart from the detector so that the
// detector (and the GPU check built from its tests) needs no OpenCV.
package heatmap

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"unsafe"

	"gocv.io/x/gocv"
)

// minSide is the smallest longer side of a heatmap image: model
// inputs can be tiny (the demo's are 64 px), and a heatmap must be readable.
const minSide = 256

// Map is an anomaly map on a grid of Cols x Rows cells stretched over the
// image (the model's square patch grid, or a tiled frame's stitched map),
// row by row, and the values its colours span: Lo and below is the
// coldest, Hi and above the hottest.
type Map struct {
	Cols, Rows int
	Values     []float64
	Lo, Hi     float64
	// Blur is the sigma, in cells, of the Gaussian blur Full applies:
	// PatchCore's 4 px at a 224 px input, so 4/224 of the model's grid,
	// whether the map is one input's grid or a tiled frame's stitched one.
	Blur float64
	// Normal is the value above which a patch is unlike normal ones (for
	// the region; NaN: only the worst patch makes the region).
	Normal float64
	// Unboxed draws no region box: a frame judged normal, whose box read
	// as a detection on every frame of the console's live view.
	Unboxed bool
}

// FromPatchDistances is the map of a bundle with a patch feature space: each
// patch's distance to its nearest normal patch, on a fixed scale set by
// normal, the distance 99.9% of normal images' patches stay under: up to
// half of it the coldest colour, normal itself a cool blue, twice it the
// hottest. A normal frame shows no hot spot, unlike a map scaled to its own
// range, where every frame has one.
// grid is the model's patches a side; cols and rows shape a stitched map
// (0: the model's square grid).
func FromPatchDistances(dist []float32, cols, rows, grid int, normal float64) (Map, error) {
	if cols == 0 && rows == 0 {
		cols, rows = grid, grid
	}
	if cols*rows != len(dist) || cols <= 0 || rows <= 0 || grid <= 0 {
		return Map{}, fmt.Errorf("heatmap: %d patch distances are not a grid of %dx%d (the model's %d a side)", len(dist), cols, rows, grid)
	}
	m := Map{Cols: cols, Rows: rows, Values: make([]float64, len(dist)), Lo: normal / 2, Hi: 2 * normal, Blur: blurCells(grid), Normal: normal}
	for i, d := range dist {
		m.Values[i] = float64(d)
	}
	return m, nil
}

// FromTokenErrors is the map of a bundle without a patch feature space: the
// students' per-token errors ([blocks * tokens], class token first in each
// block) averaged over blocks, scaled to their own range (their normal range
// is not known).
func FromTokenErrors(tokenErrors []float32, blocks int) (Map, error) {
	tokens := len(tokenErrors) / max(blocks, 1)
	grid := int(math.Round(math.Sqrt(float64(tokens - 1))))
	if grid*grid+1 != tokens {
		return Map{}, fmt.Errorf("heatmap: %d tokens per block is not a square grid plus one", tokens)
	}
	m := Map{Cols: grid, Rows: grid, Values: make([]float64, grid*grid), Lo: math.Inf(1), Hi: math.Inf(-1), Blur: blurCells(grid), Normal: math.NaN()}
	for i := range m.Values {
		for b := range blocks {
			m.Values[i] += float64(tokenErrors[b*tokens+1+i]) / float64(blocks)
		}
		m.Lo, m.Hi = math.Min(m.Lo, m.Values[i]), math.Max(m.Hi, m.Values[i])
	}
	return m, nil
}

// blurCells is PatchCore's blur (sigma 4 px at a 224 px input) in cells of
// a model grid of grid patches a side.
func blurCells(grid int) float64 { return 4 * float64(grid) / 224 }

// ForResult is a detector result's map: its patch distances (on a grid
// of cols x rows, 0 for the model's square one of grid a side) on the
// scale of normal (the bundle's normal patch distance) when it has them,
// else its token errors ([blocks * tokens]).
func ForResult(patchDistances []float32, cols, rows, grid int, normal float64, tokenErrors []float32, blocks int) (Map, error) {
	if patchDistances != nil {
		return FromPatchDistances(patchDistances, cols, rows, grid, normal)
	}
	return FromTokenErrors(tokenErrors, blocks)
}

// Region is the worst region of a map in the coordinates of a width x
// height image the model saw stretched to its square input: the bounding
// box of the patches above Normal connected (4-neighbours) to the worst
// patch, or the worst patch alone when none is above Normal.
func (m Map) Region(width, height int) image.Rectangle {
	worst := 0
	for i, v := range m.Values {
		if v > m.Values[worst] {
			worst = i
		}
	}
	g := m.Cols
	minR, maxR, minC, maxC := worst/g, worst/g, worst%g, worst%g
	if m.Values[worst] > m.Normal { // NaN: false
		seen := map[int]bool{worst: true}
		stack := []int{worst}
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			r, c := p/g, p%g
			minR, maxR, minC, maxC = min(minR, r), max(maxR, r), min(minC, c), max(maxC, c)
			for _, q := range [][2]int{{r - 1, c}, {r + 1, c}, {r, c - 1}, {r, c + 1}} {
				if q[0] < 0 || q[0] >= m.Rows || q[1] < 0 || q[1] >= g {
					continue
				}
				n := q[0]*g + q[1]
				if !seen[n] && m.Values[n] > m.Normal {
					seen[n] = true
					stack = append(stack, n)
				}
			}
		}
	}
	return image.Rect(minC*width/g, minR*height/m.Rows, (maxC+1)*width/g, (maxR+1)*height/m.Rows)
}

// Full is the map at width x height: bilinear upsampling of the patch
// grid, then a Gaussian blur of Blur cells (PatchCore's 4 px at 224: a
// tiled frame's map is blurred as each tile's would be, not as a whole
// frame shrunk to one input), in the map's own units (float32, row by row).
func (m Map) Full(width, height int) ([]float32, error) {
	small := make([]float32, len(m.Values))
	for i, v := range m.Values {
		small[i] = float32(v)
	}
	grid, err := gocv.NewMatFromBytes(m.Rows, m.Cols, gocv.MatTypeCV32F, unsafeBytes(small))
	if err != nil {
		return nil, err
	}
	defer grid.Close()
	big := gocv.NewMat()
	defer big.Close()
	gocv.Resize(grid, &big, image.Pt(width, height), 0, 0, gocv.InterpolationLinear)
	cell := math.Max(float64(width)/float64(m.Cols), float64(height)/float64(m.Rows))
	if sigma := m.Blur * cell; sigma > 0 {
		gocv.GaussianBlur(big, &big, image.Pt(0, 0), sigma, sigma, gocv.BorderReflect101)
	}
	out := make([]float32, width*height)
	data, err := big.DataPtrFloat32()
	if err != nil {
		return nil, err
	}
	copy(out, data)
	return out, nil
}

// JPEG draws a packed BGR image (OpenCV's order) of width x height with the
// anomaly map blended over it, the worst region boxed, and a caption (when
// given) in a dark band along the bottom, as a JPEG whose longer side is at
// most maxSide (and at least minSide). The image is the frame the model saw
// resized to its square input: the patch grid stretches back over it the
// same way.
func JPEG(bgrImage []byte, width, height int, m Map, maxSide int, caption string) ([]byte, error) {
	return render(bgrImage, width, height, &m, maxSide, caption)
}

// FrameJPEG is JPEG without the map: the frame alone, sized and captioned
// the same way.
func FrameJPEG(bgrImage []byte, width, height int, maxSide int, caption string) ([]byte, error) {
	return render(bgrImage, width, height, nil, maxSide, caption)
}

func render(bgrImage []byte, width, height int, m *Map, maxSide int, caption string) ([]byte, error) {
	if len(bgrImage) != width*height*3 {
		return nil, fmt.Errorf("heatmap: %d bytes for a %dx%d image", len(bgrImage), width, height)
	}
	outW, outH := width, height
	if long := max(width, height); long < minSide || long > max(maxSide, minSide) {
		side := max(minSide, min(long, maxSide))
		outW, outH = max(1, width*side/long), max(1, height*side/long)
	}
	bgr, err := gocv.NewMatFromBytes(height, width, gocv.MatTypeCV8UC3, bgrImage)
	if err != nil {
		return nil, err
	}
	defer bgr.Close()
	interp := gocv.InterpolationLinear
	if outW < width/2 {
		interp = gocv.InterpolationArea // linear interpolation aliases when shrinking a lot
	}
	frame := gocv.NewMat()
	defer frame.Close()
	gocv.Resize(bgr, &frame, image.Pt(outW, outH), 0, 0, interp)
	if m == nil {
		return encode(&frame, caption)
	}
	values, err := m.Full(outW, outH)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, len(values))
	if span := m.Hi - m.Lo; span > 0 {
		for i, v := range values {
			raw[i] = byte(255 * math.Max(0, math.Min(1, (float64(v)-m.Lo)/span)))
		}
	}
	gray, err := gocv.NewMatFromBytes(outH, outW, gocv.MatTypeCV8U, raw)
	if err != nil {
		return nil, err
	}
	defer gray.Close()
	colored := gocv.NewMat()
	defer colored.Close()
	gocv.ApplyColorMap(gray, &colored, gocv.ColormapJet)

	blend := gocv.NewMat()
	defer blend.Close()
	gocv.AddWeighted(frame, 0.6, colored, 0.4, 0, &blend)
	if !m.Unboxed {
		gocv.Rectangle(&blend, m.Region(outW, outH), color.RGBA{255, 255, 255, 0}, max(1, outW/320))
	}
	return encode(&blend, caption)
}

func encode(img *gocv.Mat, caption string) ([]byte, error) {
	if caption != "" {
		drawCaption(img, caption)
	}
	buf, err := gocv.IMEncode(gocv.JPEGFileExt, *img)
	if err != nil {
		return nil, fmt.Errorf("heatmap: encode JPEG: %w", err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}

// WriteTIFF writes a map of width x height float32 values (row by row) as
// a single-channel 32-bit float TIFF.
func WriteTIFF(path string, values []float32, width, height int) error {
	if len(values) != width*height {
		return fmt.Errorf("write %s: %d values for %dx%d", path, len(values), width, height)
	}
	m, err := gocv.NewMatFromBytes(height, width, gocv.MatTypeCV32F, unsafeBytes(values))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer m.Close()
	if !gocv.IMWrite(path, m) {
		return fmt.Errorf("write %s: OpenCV could not write the TIFF", path)
	}
	return nil
}

// unsafeBytes views float32s as their bytes (for a Mat over them).
func unsafeBytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

// drawCaption writes text in a dark band along the image's bottom, scaled
// to the image's width. OpenCV's Hershey fonts have ASCII only: other
// characters show as '?'.
func drawCaption(img *gocv.Mat, text string) {
	ascii := []rune(text)
	for i, r := range ascii {
		if r < 0x20 || r > 0x7e {
			ascii[i] = '?'
		}
	}
	text = string(ascii)
	w, h := img.Cols(), img.Rows()
	const font = gocv.FontHersheySimplex
	scale := 1.0
	size := gocv.GetTextSize(text, font, scale, 1)
	if limit := float64(w) * 0.96; float64(size.X) > limit {
		scale = limit / float64(size.X)
	}
	size = gocv.GetTextSize(text, font, scale, 1)
	band := size.Y*2 + 4
	gocv.Rectangle(img, image.Rect(0, h-band, w, h), color.RGBA{0, 0, 0, 0}, -1)
	gocv.PutText(img, text, image.Pt(w/50, h-band/2+size.Y/2), font, scale, color.RGBA{255, 255, 255, 0}, 1)
}
