package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// Review marks: an operator's word on an NG part, given on the console.
const (
	// FalseReject: the part was good; its frame joins the camera's normal
	// images for the next fit (as collect --ng-images copies them).
	FalseReject = "false_reject"
	// TrueDefect: the part was bad; its frame is kept as a labelled
	// anomalous image for evaluation (eval --anomalous).
	TrueDefect = "true_defect"
)

// reviews keeps the marks in state_directory/reviews.json (camera -> NG
// image name -> mark), so they survive restarts, and puts each marked
// frame where its mark says.
type reviews struct {
	path                      string
	ngDir, normalDir, trueDir string

	mu    sync.Mutex
	marks map[string]map[string]string
}

// openReviews reads the marks an earlier run left.
func openReviews(cfg Config) (*reviews, error) {
	r := &reviews{path: filepath.Join(cfg.StateDirectory, "reviews.json"), ngDir: cfg.NGImagesDirectory(),
		normalDir: cfg.NormalImagesDirectory(), trueDir: cfg.TrueDefectsDirectory(), marks: map[string]map[string]string{}}
	marks, err := ReadReviews(cfg)
	if err != nil {
		return nil, err
	}
	r.marks = marks
	return r, nil
}

// ReadReviews reads state_directory/reviews.json (none yet: no marks).
func ReadReviews(cfg Config) (map[string]map[string]string, error) {
	path := filepath.Join(cfg.StateDirectory, "reviews.json")
	marks := map[string]map[string]string{}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return marks, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &marks)
	}
	if err != nil {
		return nil, fmt.Errorf("review marks %s: %w", path, err)
	}
	return marks, nil
}

// TrueDefectsDirectory is where frames marked true defect are kept, one
// folder per camera.
func (c Config) TrueDefectsDirectory() string { return filepath.Join(c.StateDirectory, "true_defects") }

// ngImageName is the name an NG part's frame is kept under (without the
// extension): its trigger time and its part id, made safe for a path.
func ngImageName(triggerTime time.Time, partID string) string {
	return triggerTime.UTC().Format("20060102T150405.000Z") + "_" + strings.Trim(unsafeName.ReplaceAllString(partID, "_"), ".")
}

// reviewedCopy is where a marked frame goes.
func (r *reviews) reviewedCopy(camera, name, mark string) string {
	if mark == FalseReject {
		return filepath.Join(r.normalDir, camera, camera+"-ng-"+name+".png")
	}
	return filepath.Join(r.trueDir, camera, name+".png")
}

// mark records an operator's mark on a kept NG frame and copies the frame
// where the mark says, removing the copy of an earlier, other mark.
func (r *reviews) mark(camera, name, mark string) error {
	if mark != FalseReject && mark != TrueDefect {
		return fmt.Errorf("mark %q: %s or %s", mark, FalseReject, TrueDefect)
	}
	data, err := os.ReadFile(filepath.Join(r.ngDir, camera, "images", name+".png"))
	if err != nil {
		return fmt.Errorf("the part's frame is not kept (ng_images off, or removed past ng_images.max_mb): %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.marks[camera][name]; old != "" && old != mark {
		if err := os.Remove(r.reviewedCopy(camera, name, old)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the copy of the earlier mark: %w", err)
		}
	}
	dst := r.reviewedCopy(camera, name, mark)
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	if err := atomicfile.Write(dst, data); err != nil {
		return err
	}
	if r.marks[camera] == nil {
		r.marks[camera] = map[string]string{}
	}
	r.marks[camera][name] = mark
	out, err := json.MarshalIndent(r.marks, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(r.path, out)
}

// get is a frame's mark ("" when none).
func (r *reviews) get(camera, name string) string {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.marks[camera][name]
}

// counts are a camera's marks of each kind.
func (r *reviews) counts(camera string) (falseRejects, trueDefects int) {
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.marks[camera] {
		if m == FalseReject {
			falseRejects++
		} else {
			trueDefects++
		}
	}
	return falseRejects, trueDefects
}
