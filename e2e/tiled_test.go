package e2e

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/synth"
)

// Tiled inspection end to end, on trays of washers (384x256, small
// defects 8-20 px wide) with a random teacher taking 64 px: the tiled
// bundle sees each 64 px tile at native resolution, the whole-frame one
// the frame shrunk 6x. Then the daemon runs the tiled bundle on
// 1920x1080 frames (mosaics of such trays).
func TestTiledInspection(t *testing.T) {
	dir := t.TempDir()
	data, teacher := filepath.Join(dir, "data"), filepath.Join(dir, "vit.safetensors")
	tiled, whole := filepath.Join(dir, "tiled.tfy"), filepath.Join(dir, "whole.tfy")
	train := filepath.Join(data, "train", "good")
	for _, args := range [][]string{
		{"synth", "--tray", "384x256", "--dataset", data, "--count", "40", "--test-count", "10"},
		{"random-vit", "--dim", "64", "--depth", "4", "--heads", "4", "--patch", "8", "--image-size", "64", "--out", teacher},
		{"fit", "--teacher", teacher, "--normal", train, "--out", tiled, "--epochs", "2", "--tile", "64", "--coreset", "0.03", "--threshold-quantile", "0.95"},
		{"fit", "--teacher", teacher, "--normal", train, "--out", whole, "--epochs", "2", "--threshold-quantile", "0.95"},
	} {
		if r := runBinary(t, nil, args...); r.code != 0 {
			t.Fatalf("%v: %s", args, r.stderr)
		}
	}

	// inspect: the tiling and the promise per frame.
	var info struct {
		Tiling *struct {
			Tile          int     `json:"tile"`
			Overlap       float64 `json:"overlap"`
			Frames        int     `json:"frames"`
			TilesPerFrame [2]int  `json:"tiles_per_frame"`
		} `json:"tiling"`
		Calibration struct {
			Images   int     `json:"images"`
			Expected float64 `json:"expected_false_alarm_rate"`
			Method   string  `json:"method"`
		} `json:"calibration"`
	}
	r := runBinary(t, nil, "inspect", tiled)
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || info.Tiling == nil {
		t.Fatalf("inspect: %v\n%s", err, r.stdout)
	}
	// The overlap by default: two of the teacher's 8 px patches. 384 = 8
	// tiles of 64 overlapping by at least 16 px, 256 = 5.
	if ti := info.Tiling; ti.Tile != 64 || ti.Overlap != 0.25 || ti.Frames != 40 || ti.TilesPerFrame != [2]int{40, 40} {
		t.Errorf("tiling %+v", *ti)
	}
	if c := info.Calibration; c.Images != 40 || !strings.Contains(c.Method, "worst tile") {
		t.Errorf("calibration over %d (%s), want the 40 frames' worst tiles", c.Images, c.Method)
	}

	// eval --dataset: the tiled bundle finds where small defects are; the
	// whole frame, shrunk, barely.
	type figures struct {
		AUROC      float64  `json:"auroc"`
		AUROCPatch *float64 `json:"auroc_patch"`
		PixelAUROC *float64 `json:"pixel_auroc"`
		AUPRO      *float64 `json:"aupro"`
	}
	evaluate := func(bundle string) figures {
		var rep struct {
			Overall figures `json:"overall"`
		}
		r := runBinary(t, nil, "eval", "--model", bundle, "--dataset", data, "--json")
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.Overall.PixelAUROC == nil {
			t.Fatalf("eval %s: %v\n%s%s", bundle, err, r.stdout, r.stderr)
		}
		return rep.Overall
	}
	ft, fw := evaluate(tiled), evaluate(whole)
	t.Logf("tiled: image AUROC %.3f (patch %.3f), pixel AUROC %.3f, AUPRO %.3f; whole frame: %.3f (%.3f), %.3f, %.3f",
		ft.AUROC, *ft.AUROCPatch, *ft.PixelAUROC, *ft.AUPRO, fw.AUROC, *fw.AUROCPatch, *fw.PixelAUROC, *fw.AUPRO)
	if *ft.PixelAUROC < 0.9 || *ft.PixelAUROC < *fw.PixelAUROC+0.1 || *ft.AUPRO < *fw.AUPRO+0.2 {
		t.Errorf("tiled pixel AUROC %.3f and AUPRO %.3f, whole frame %.3f and %.3f", *ft.PixelAUROC, *ft.AUPRO, *fw.PixelAUROC, *fw.AUPRO)
	}
	// The frame's combined score keeps its patch evidence (summed, as
	// bundles of format 2 did, 0.55-0.66), and the tiles tell frames with a
	// small defect from normal ones where the whole frame cannot (measured:
	// 0.510 whole; tiled, 3x3 neighbourhoods side by side with the bank fitted at four phases, 0.995,
	// each token alone, as format 4 bundles did, 0.853, averaged over 3x3,
	// as format 3 bundles did, 0.766).
	if ft.AUROC < *ft.AUROCPatch-0.01 {
		t.Errorf("tiled image AUROC %.3f combined, %.3f the patch space alone", ft.AUROC, *ft.AUROCPatch)
	}
	if ft.AUROC < 0.95 || ft.AUROC < fw.AUROC+0.2 {
		t.Errorf("image AUROC %.3f tiled, %.3f the whole frame", ft.AUROC, fw.AUROC)
	}

	// score --json: the frame's result from its worst tile, the region on
	// the defect in the frame's coordinates, the map at its resolution.
	maps := filepath.Join(dir, "maps")
	stain := filepath.Join(data, "test", synth.Stain)
	r = runBinary(t, nil, "score", "--model", tiled, "--json", "--anomaly-maps", maps, stain)
	if r.code != 0 {
		t.Fatalf("score: %s", r.stderr)
	}
	onDefect := 0
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for _, l := range lines {
		var s struct {
			Path       string `json:"path"`
			Tiles      int    `json:"tiles"`
			WorstTile  *int   `json:"worst_tile"`
			AnomalyMap string `json:"anomaly_map"`
			Region     *struct{ X, Y, Width, Height int }
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil || s.Region == nil || s.WorstTile == nil {
			t.Fatalf("score line %q: %v", l, err)
		}
		if s.Tiles != 40 || *s.WorstTile < 0 || *s.WorstTile >= 40 {
			t.Errorf("%s: %d tiles, worst %d", s.Path, s.Tiles, *s.WorstTile)
		}
		m := gocv.IMRead(s.AnomalyMap, gocv.IMReadUnchanged)
		if m.Cols() != 384 || m.Rows() != 256 || m.Type() != gocv.MatTypeCV32F {
			t.Errorf("%s: map %dx%d of type %v, want 384x256 float32", s.AnomalyMap, m.Cols(), m.Rows(), m.Type())
		}
		m.Close()
		box := maskBox(t, filepath.Join(data, "ground_truth", synth.Stain, strings.TrimSuffix(filepath.Base(s.Path), ".png")+"_mask.png"))
		if image.Rect(s.Region.X, s.Region.Y, s.Region.X+s.Region.Width, s.Region.Y+s.Region.Height).Overlaps(box) {
			onDefect++
		}
	}
	t.Logf("the region lies on the stain in %d of %d frames", onDefect, len(lines))
	if onDefect < 2*len(lines)/3 { // measured: 9 of 10
		t.Errorf("the region lies on the stain in %d of %d frames", onDefect, len(lines))
	}

	// Unseen normal frames: false alarms within the promise (loosely: 60
	// frames measure a rate of a few percent to about 3%).
	unseen := filepath.Join(dir, "unseen")
	if r := runBinary(t, nil, "synth", "--tray", "384x256", "--out", unseen, "--count", "60", "--seed", "77"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	var ev struct {
		FalseAlarmRate float64 `json:"false_alarm_rate"`
		Expected       float64 `json:"expected_false_alarm_rate"`
	}
	r = runBinary(t, nil, "eval", "--model", tiled, "--normal", unseen, "--anomalous", stain, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil {
		t.Fatalf("eval: %v %s", err, r.stderr)
	}
	t.Logf("unseen normal frames: %.3f false alarms, %.3f promised", ev.FalseAlarmRate, ev.Expected)
	if ev.FalseAlarmRate > 3*ev.Expected+0.02 {
		t.Errorf("false alarms on unseen normal frames %.3f, promised %.3f", ev.FalseAlarmRate, ev.Expected)
	}

	// Nonsense is refused by name.
	small := filepath.Join(dir, "small.png")
	writeTray(t, small, 48, 48, synth.Normal, 1)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"score", "--model", tiled, small}, "smaller than one tile"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--tile", "300"}, "smaller than one tile"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--tile", "64", "--tile-overlap", "0.95"}, "--tile-overlap"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--tile", "64", "--patch-blocks", "none"}, "--tile needs the patch feature space"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--patch-blocks", "none", "--image-weight", "0.2"}, "shape the patch feature space"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--patch-neighbourhood", "2"}, "--patch-neighbourhood"},
		{[]string{"fit", "--teacher", teacher, "--normal", train, "--out", filepath.Join(dir, "x.tfy"), "--image-weight", "1"}, "--image-weight"},
	} {
		if r := runBinary(t, nil, c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	cfg := filepath.Join(dir, "cropped.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "cameras:\n  - {name: cam, source: %s, model: %s, roi: \"0,0,50,300\"}\n", unseen, tiled), 0o644)
	if r := runBinary(t, nil, "run", "--config", cfg, "--check-config"); r.code == 0 || !strings.Contains(r.stderr, "cameras[0].roi") || !strings.Contains(r.stderr, "smaller than one tile") {
		t.Errorf("check-config of a roi narrower than a tile: exit %d, %q", r.code, r.stderr)
	}

	t.Run("daemon at 1920x1080", func(t *testing.T) { tiledDaemon(t, tiled) })
}

// tiledDaemon runs the tiled bundle on 1920x1080 frames: a mosaic of 5x4
// trays like the ones it was fitted on, one with a stain at a known
// place (920 tiles a frame). A triggered camera judges two parts: their
// score messages, the events and the part results carry the frame's
// region in its coordinates, on the stain among the 920 tiles' 58,880
// patches, and the console's live view is the whole frame.
func tiledDaemon(t *testing.T, bundle string) {
	frames := t.TempDir()
	stainBox := writeMosaic(t, filepath.Join(frames, "frame.png"), synth.Stain, 100)
	t.Logf("the stain lies at %v", stainBox)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-tiled")
	port := freePort(t)
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: parts, source: %s, model: %s, loop: true, pace: true, fps_limit: 2, trigger: {frames: 1, deadline: 1m}}
mqtt: {broker: %s}
detector: {max_batch: 1}
metrics: {address: "127.0.0.1:%d"}
state_directory: %s
`, frames, bundle, b.url(), port, t.TempDir()))
	type region struct{ X, Y, Width, Height int }
	inFrame := func(r *region) bool {
		return r != nil && r.X >= 0 && r.Y >= 0 && r.Width > 0 && r.Height > 0 && r.X+r.Width <= 1920 && r.Y+r.Height <= 1080
	}
	var frameRegion *region // both parts see the same frame
	eventually(t, "the camera online", time.Minute, func() bool {
		av := sub.on("transformaly/parts/availability")
		return len(av) > 0 && string(av[len(av)-1].Payload) == "online"
	})
	for _, id := range []string{"p1", "p2"} {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/trigger/parts", port), "text/plain", strings.NewReader(id))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		eventually(t, "the result of "+id, 2*time.Minute, func() bool { return len(sub.on("transformaly/parts/result")) >= map[string]int{"p1": 1, "p2": 2}[id] })
	}
	for _, m := range sub.on("transformaly/parts/result") {
		var r struct {
			Verdict string
			Frames  int
			Region  *region
		}
		json.Unmarshal(m.Payload, &r)
		if r.Verdict != "ng" || r.Frames != 1 || !inFrame(r.Region) ||
			!image.Rect(r.Region.X, r.Region.Y, r.Region.X+r.Region.Width, r.Region.Y+r.Region.Height).Overlaps(stainBox) {
			t.Errorf("part result %s: want ng, the region on the stain at %v", m.Payload, stainBox)
		}
		if frameRegion == nil {
			frameRegion = r.Region
		}
	}
	scores := sub.on("transformaly/parts/score")
	for _, m := range scores {
		var s struct{ Region *region }
		json.Unmarshal(m.Payload, &s)
		if !inFrame(s.Region) || *s.Region != *frameRegion {
			t.Errorf("score message %s: want the parts' region %+v", m.Payload, *frameRegion)
		}
	}
	if len(scores) != 2 {
		t.Errorf("%d score messages for 2 parts", len(scores))
	}
	for _, m := range sub.on("transformaly/parts/event") {
		var e struct{ Region *region }
		json.Unmarshal(m.Payload, &e)
		if !inFrame(e.Region) || *e.Region != *frameRegion {
			t.Errorf("event %s: want the peak frame's region %+v", m.Payload, *frameRegion)
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/cameras/parts/live.mjpeg", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	part, err := multipart.NewReader(resp.Body, params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	live, err := jpeg.DecodeConfig(part)
	if err != nil || live.Width != 800 || live.Height != 450 {
		t.Errorf("live view %dx%d (%v), want the 1920x1080 frame at 800x450", live.Width, live.Height, err)
	}
}

// writeTray writes a Tray scene as a PNG.
func writeTray(t *testing.T, path string, w, h int, kind string, seed uint64) {
	t.Helper()
	img, _ := synth.Tray(w, h, kind, seed)
	savePNG(t, path, img)
}

func savePNG(t *testing.T, path string, img image.Image) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

// writeMosaic writes a 1920x1080 frame of 5x4 trays of 384x256, the one
// at column 3, row 2 of kind, and returns the bounding box of its defect
// in the frame (empty for Normal).
func writeMosaic(t *testing.T, path, kind string, seed uint64) image.Rectangle {
	t.Helper()
	frame := image.NewNRGBA(image.Rect(0, 0, 1920, 1080))
	draw.Draw(frame, frame.Rect, image.NewUniform(color.NRGBA{60, 60, 65, 255}), image.Point{}, draw.Src)
	var box image.Rectangle
	for r := range 4 {
		for c := range 5 {
			k := synth.Normal
			if c == 3 && r == 2 {
				k = kind
			}
			img, mask := synth.Tray(384, 256, k, seed*100+uint64(r*5+c))
			at := image.Pt(c*384, r*256)
			draw.Draw(frame, img.Rect.Add(at), img, image.Point{}, draw.Src)
			for y := range 256 {
				for x := range 384 {
					if mask.GrayAt(x, y).Y > 127 {
						box = box.Union(image.Rect(x, y, x+1, y+1).Add(at))
					}
				}
			}
		}
	}
	savePNG(t, path, frame)
	return box
}

// maskBox is the bounding box of a mask file's defect pixels.
func maskBox(t *testing.T, path string) image.Rectangle {
	t.Helper()
	m := gocv.IMRead(path, gocv.IMReadGrayScale)
	defer m.Close()
	if m.Empty() {
		t.Fatalf("mask %s unreadable", path)
	}
	var box image.Rectangle
	for y := range m.Rows() {
		for x := range m.Cols() {
			if m.GetUCharAt(y, x) > 127 {
				box = box.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	return box
}
