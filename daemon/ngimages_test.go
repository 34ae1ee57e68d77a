package daemon

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transformaly/transformaly/internal/heatmap"
)

// The NG folder stays under its cap, oldest parts out first, also counting
// what an earlier run left there.
func TestNGImagesKeepTheNewestUnderTheCap(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "line1", "images", "earlier-run.png")
	os.MkdirAll(filepath.Dir(old), 0o755)
	if err := os.WriteFile(old, make([]byte, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(old, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour))

	a, err := openNGArchive(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Noise compresses badly: each pair is about 0.3 MB.
	const side = 320
	bgr := make([]byte, side*side*3)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range bgr {
		bgr[i] = byte(rng.Uint32())
	}
	anomaly, err := heatmap.FromTokenErrors(make([]float32, 2*17), 2)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 12, 4, 8, 0, 0, 0, time.UTC)
	for i := range 6 {
		r := PartResult{Camera: "line1", PartID: "../part/" + string(rune('a'+i)), Verdict: VerdictNG, TriggerTime: start.Add(time.Duration(i) * time.Second)}
		a.keep(r, &partImage{bgr: bgr, width: side, height: side, anomaly: anomaly, caption: "line1"}, nil)
		time.Sleep(50 * time.Millisecond) // the queue holds 8; pace it like a line
	}
	a.close()

	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the earlier run's file is still there (%v): the oldest goes first", err)
	}
	var total int64
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			total += info.Size()
		}
		return err
	})
	if total > 1<<20 {
		t.Errorf("%d bytes kept under a 1 MB cap", total)
	}
	newest := "20261204T080005.000Z__part_f" // no way out of the folder
	for _, p := range []string{filepath.Join(dir, "line1", "images", newest+".png"), filepath.Join(dir, "line1", "maps", newest+".jpg")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the newest part's file: %v", err)
		}
	}
	if imgs, _ := filepath.Glob(filepath.Join(dir, "line1", "images", "*.png")); len(imgs) == 0 || len(imgs) == 6 {
		t.Errorf("%d of 6 parts' images kept: want the newest few", len(imgs))
	}
}
