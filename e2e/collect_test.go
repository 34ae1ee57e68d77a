package e2e

import (
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// collect saves a camera's frames through the daemon's own capture
// settings, so images to fit on are cropped and rotated like the frames the
// daemon will score; a source that ends early is an error naming how far it
// got.
func TestCollectSavesFramesAsTheDaemonSeesThem(t *testing.T) {
	f := getDaemonFixture(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	// The 96x96 video, cropped to its middle 96x48 band and turned upright.
	os.WriteFile(config, []byte(fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, roi: "0,24,96,48", rotate: 90, model: not-fitted-yet.tfy}
`, f.video)), 0o644)
	out := filepath.Join(dir, "normal")
	r := runBinary(t, nil, "collect", "--config", config, "--out", out, "--count", "5", "--every", "0")
	if r.code != 0 {
		t.Fatalf("collect failed: %s", r.stderr)
	}
	files, _ := filepath.Glob(filepath.Join(out, "line1-*.png"))
	if len(files) != 5 {
		t.Fatalf("%d frames saved, want 5: %v", len(files), files)
	}
	for _, p := range files {
		fh, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.DecodeConfig(fh)
		fh.Close()
		if err != nil || img.Width != 48 || img.Height != 96 {
			t.Errorf("%s: %dx%d (%v), want the 48x96 upright crop", p, img.Width, img.Height, err)
		}
	}

	os.WriteFile(config, []byte(fmt.Sprintf("cameras:\n  - {name: line1, source: %s}\n", f.loop)), 0o644)
	r = runBinary(t, nil, "collect", "--config", config, "--out", out, "--count", "100000", "--every", "0")
	if r.code == 0 || !strings.Contains(r.stderr, "the source ended after") {
		t.Errorf("collecting more frames than the video has: exit %d, %s", r.code, r.stderr)
	}
	r = runBinary(t, nil, "collect", "--config", config, "--out", out, "--camera", "line9")
	if r.code == 0 || !strings.Contains(r.stderr, `no camera "line9"`) {
		t.Errorf("an unknown camera: exit %d, %s", r.code, r.stderr)
	}
}
