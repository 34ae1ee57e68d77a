package daemon

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A mark copies the part's kept frame where it says (false rejects into
// the camera's normal images, true defects into their own folder), a new
// mark moves it, marks survive a restart, and a part whose frame is gone
// is refused.
func TestReviewMarksMoveFramesAndSurviveRestarts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDirectory = t.TempDir()
	at := time.Date(2026, 12, 7, 1, 2, 3, 456e6, time.UTC)
	name := ngImageName(at, "part/7")
	if name != "20261207T010203.456Z_part_7" {
		t.Errorf("NG image name %q", name)
	}
	frame := filepath.Join(cfg.NGImagesDirectory(), "line1", "images", name+".png")
	os.MkdirAll(filepath.Dir(frame), 0o750)
	os.WriteFile(frame, []byte("png"), 0o644)

	r, err := openReviews(cfg)
	if err != nil {
		t.Fatal(err)
	}
	normalCopy := filepath.Join(cfg.NormalImagesDirectory(), "line1", "line1-ng-"+name+".png")
	defectCopy := filepath.Join(cfg.TrueDefectsDirectory(), "line1", name+".png")
	if err := r.mark("line1", name, FalseReject); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(normalCopy); err != nil {
		t.Errorf("false reject not among the normal images: %v", err)
	}
	if err := r.mark("line1", name, TrueDefect); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(normalCopy); !os.IsNotExist(err) {
		t.Error("a part marked true defect after false reject is still among the normal images")
	}
	if data, err := os.ReadFile(defectCopy); err != nil || string(data) != "png" {
		t.Errorf("true defect copy: %q %v", data, err)
	}
	if err := r.mark("line1", "gone", FalseReject); err == nil {
		t.Error("a part whose frame is not kept was marked")
	}
	if err := r.mark("line1", name, "maybe"); err == nil {
		t.Error("a mark that is neither was taken")
	}
	again, err := openReviews(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m := again.get("line1", name); m != TrueDefect {
		t.Errorf("after a restart the mark is %q", m)
	}
	if fr, td := again.counts("line1"); fr != 0 || td != 1 {
		t.Errorf("counts %d false rejects, %d true defects; want 0 and 1", fr, td)
	}
}
