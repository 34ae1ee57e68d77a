package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

// A refit fits a candidate bundle for a camera from its normal images
// (saved from the console, reviewed false rejects, collected), with the
// live bundle's teacher and settings, in the background. It runs this
// binary's own `fit` as a child process under nice with one thread, so the
// live detector keeps its cores (a goroutine cannot be niced: Linux nices
// threads, and Go moves goroutines between them), a crash or the memory of
// a fit stays out of the daemon, and a cancel is fit's own Ctrl-C.
// Candidates live in <state_directory>/candidates/<camera>/<id>/: the
// bundle, the images it was fitted on and held out from (links), the fit's
// log and report.json.
const (
	refitNice = 10
	// refitHoldout is the share of the normal images kept out of the fit,
	// to compare candidate and live bundle on images neither saw.
	refitHoldout = 0.2
	// minRefitImages: fewer normal images cannot make a bundle whose
	// promise holds (the calibration needs about 2/rate images).
	minRefitImages = 40
)

// refitter runs one refit or comparison at a time for the whole daemon:
// each takes a core.
type refitter struct {
	dir       string // <state_directory>/candidates
	normalDir string // the cameras' normal images (one folder each)
	trueDir   string // the cameras' true defects (one folder each)

	mu   sync.Mutex
	jobs map[string]*console.RefitState // camera -> its latest job
	busy string                         // the camera whose job runs ("": none)
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// newRefitter keeps candidates in the state directory (its folders change
// only with a restart).
func newRefitter(cfg Config) *refitter {
	return &refitter{dir: filepath.Join(cfg.StateDirectory, "candidates"), normalDir: cfg.NormalImagesDirectory(),
		trueDir: cfg.TrueDefectsDirectory(), jobs: map[string]*console.RefitState{}}
}

// close cancels a running job and waits for it.
func (r *refitter) close() {
	r.mu.Lock()
	if r.stop != nil {
		r.stop()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// selfCommand is this binary run with args, niced, one thread, the same
// ONNX Runtime library.
func selfCommand(ctx context.Context, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary to run %s: %w", args[0], err)
	}
	args = append(args, "--threads", "1")
	if lib := ort.Library(); lib != "" {
		args = append(args, "--ort-lib", lib)
	}
	name := self
	if nice, err := exec.LookPath("nice"); err == nil {
		name, args = nice, append([]string{"-n", strconv.Itoa(refitNice), self}, args...)
	} else {
		slog.Warn("nice not found: the background job runs at the daemon's priority", "job", args[0])
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// A cancel is fit's Ctrl-C (it keeps finished epochs and cleans up),
	// then a kill if it takes longer.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the daemon
	return cmd, nil
}

// start runs job for camera in the background unless one runs already.
func (r *refitter) start(camera, kind string, job func(ctx context.Context, st *console.RefitState) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy != "" {
		return fmt.Errorf("a %s of camera %s is running: one background job at a time (cancel it first)", r.jobs[r.busy].Kind, r.busy)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &console.RefitState{ID: time.Now().UTC().Format("20060102T150405Z"), Kind: kind, State: "running", Started: time.Now().UTC()}
	r.jobs[camera], r.busy, r.stop = st, camera, cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		err := job(ctx, st)
		r.mu.Lock()
		defer r.mu.Unlock()
		switch {
		case ctx.Err() != nil:
			st.State, st.Error = "cancelled", ""
		case err != nil:
			st.State, st.Error = "failed", err.Error()
		default:
			st.State, st.Fraction, st.LeftS = "done", 1, 0
		}
		r.busy, r.stop = "", nil
		slog.Info("background job ended", "camera", camera, "job", kind, "state", st.State, "err", st.Error,
			"seconds", time.Since(st.Started).Round(time.Second).Seconds())
	}()
	return nil
}

// cancel stops camera's running job.
func (r *refitter) cancel(camera string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy != camera {
		return fmt.Errorf("camera %s has no job running", camera)
	}
	r.stop()
	return nil
}

// state is a copy of camera's latest job (nil: none).
func (r *refitter) state(camera string) *console.RefitState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.jobs[camera]; st != nil {
		c := *st
		return &c
	}
	return nil
}

func (r *refitter) update(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

// listImages lists the image files under dir, sorted, as fit and the
// folder cameras take them (capture.IsImageFile).
func listImages(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if capture.IsImageFile(p, d) {
			out = append(out, p)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

// refitArgs are fit's flags for a bundle like live: its teacher, blocks,
// patch space, tiling, normalisation and training settings.
func refitArgs(live string, info models.BundleInfo) ([]string, error) {
	teacher := info.Teacher.Path
	if !filepath.IsAbs(teacher) {
		if _, err := os.Stat(teacher); err != nil {
			teacher = filepath.Join(filepath.Dir(live), teacher) // fitted beside it
		}
	}
	if _, err := os.Stat(teacher); err != nil {
		return nil, fmt.Errorf("the bundle's teacher checkpoint %s (recorded in %s) is not on this machine: %w", info.Teacher.Path, live, err)
	}
	ints := func(xs []int) string {
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = strconv.Itoa(x)
		}
		return strings.Join(s, ",")
	}
	g := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	t := info.Training
	args := []string{"--teacher", teacher, "--blocks", ints(info.Blocks), "--epochs", strconv.Itoa(t.Epochs), "--batch-size", strconv.Itoa(t.BatchSize),
		"--lr", g(t.LR), "--seed", strconv.FormatUint(t.Seed, 10), "--val-fraction", g(t.ValFraction), "--whitening", g(t.Whitening)}
	if info.ThresholdQuantile > 0 {
		args = append(args, "--threshold-quantile", g(info.ThresholdQuantile))
	}
	if info.Patch == nil {
		args = append(args, "--patch-blocks", "none")
	} else {
		args = append(args, "--patch-blocks", ints(info.Patch.Blocks), "--patch-neighbourhood", strconv.Itoa(info.Patch.Neighbourhood), "--patch-pooling", info.Patch.Pooling,
			"--coreset", g(info.Patch.Coreset), "--image-weight", g(info.Patch.Combination.ImageWeight))
	}
	if info.Tiling != nil {
		args = append(args, "--tile", strconv.Itoa(info.Tiling.Size), "--tile-overlap", g(info.Tiling.Overlap))
	}
	if n := info.Teacher.Normalization; n != nil && math.Abs(n.Rescale-1.0/255) < 1e-9 { // --mean and --std are of x/255
		args = append(args, "--mean", fmt.Sprintf("%s,%s,%s", g(n.Mean[0]), g(n.Mean[1]), g(n.Mean[2])),
			"--std", fmt.Sprintf("%s,%s,%s", g(n.Std[0]), g(n.Std[1]), g(n.Std[2])))
	}
	return args, nil
}

// splitImages links each image into train or holdout (every fifth, by
// sorted name: the same images each time), so the fit sees train only.
func splitImages(images []string, train, holdout string) (nTrain, nHoldout int, err error) {
	for _, dir := range []string{train, holdout} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return 0, 0, err
		}
	}
	every := int(1 / refitHoldout)
	for i, p := range images {
		dir := train
		if i%every == every-1 {
			dir, nHoldout = holdout, nHoldout+1
		} else {
			nTrain++
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return 0, 0, err
		}
		if err := os.Symlink(abs, filepath.Join(dir, fmt.Sprintf("%05d%s", i, strings.ToLower(filepath.Ext(p))))); err != nil {
			return 0, 0, err
		}
	}
	return nTrain, nHoldout, nil
}

// refit fits a candidate for camera from its normal images.
func (r *refitter) refit(camera, live string) error {
	info, _, err := models.ReadBundle(live)
	if err != nil {
		return fmt.Errorf("the live bundle of camera %s: %w", camera, err)
	}
	args, err := refitArgs(live, info)
	if err != nil {
		return err
	}
	normalDir := filepath.Join(r.normalDir, camera)
	images, err := listImages(normalDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("normal images of camera %s: %w", camera, err)
	}
	if len(images) < minRefitImages {
		return fmt.Errorf("camera %s has %d normal images in %s; a refit needs at least %d (save frames as normal, mark false rejects, or collect into that folder)",
			camera, len(images), normalDir, minRefitImages)
	}
	return r.start(camera, "refit", func(ctx context.Context, st *console.RefitState) error {
		dir := filepath.Join(r.dir, camera, st.ID)
		nTrain, nHoldout, err := splitImages(images, filepath.Join(dir, "train"), filepath.Join(dir, "holdout"))
		if err != nil {
			return fmt.Errorf("lay out the candidate's images in %s: %w", dir, err)
		}
		bundle := filepath.Join(dir, "candidate.tfy")
		cmd, err := selfCommand(ctx, append([]string{"fit", "--normal", filepath.Join(dir, "train"), "--out", bundle, "--progress-json"}, args...)...)
		if err != nil {
			return err
		}
		slog.Info("refit started", "camera", camera, "candidate", bundle, "train_images", nTrain, "holdout_images", nHoldout, "from", live)
		if err := r.runWithProgress(cmd, filepath.Join(dir, "fit.log"), st); err != nil {
			return fmt.Errorf("fit: %w (its log: %s)", err, filepath.Join(dir, "fit.log"))
		}
		c := console.Candidate{ID: st.ID, Bundle: bundle, Created: time.Now().UTC(), From: live, TrainImages: nTrain, HoldoutImages: nHoldout}
		if ci, _, err := models.ReadBundle(bundle); err == nil {
			c.Threshold = ci.Threshold
		}
		return writeCandidate(dir, c)
	})
}

// runWithProgress runs a child, its stderr to log and its progress lines
// (fit --progress-json) into st.
func (r *refitter) runWithProgress(cmd *exec.Cmd, logPath string, st *console.RefitState) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		var p struct {
			Phase          string
			Fold, Folds    int
			Epoch, Epochs  int
			Batch, Batches int
			LeftS          float64 `json:"left_s"`
		}
		if json.Unmarshal(lines.Bytes(), &p) != nil {
			continue
		}
		stage := "training the students"
		switch {
		case p.Phase == "teacher":
			stage = "running the teacher over the images"
		case p.Phase == "features":
			stage = "fitting the feature spaces"
		case p.Fold > 0:
			stage = fmt.Sprintf("training calibration fold %d of %d", p.Fold, p.Folds)
		}
		frac := 0.0
		if p.Epochs > 0 && p.Batches > 0 {
			frac = (float64(p.Epoch-1) + float64(p.Batch)/float64(p.Batches)) / float64(p.Epochs)
		} else if p.Batches > 0 {
			frac = float64(p.Batch) / float64(p.Batches)
		}
		if p.Epochs > 0 && p.Phase != "teacher" && p.Phase != "features" {
			stage += fmt.Sprintf(", epoch %d of %d", p.Epoch, p.Epochs)
		}
		r.update(func() { st.Stage, st.Fraction, st.LeftS = stage, min(max(frac, 0), 1), p.LeftS })
	}
	io.Copy(io.Discard, stdout)
	return cmd.Wait()
}

// writeCandidate writes a candidate's report.json.
func writeCandidate(dir string, c console.Candidate) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "report.json"), data)
}

// candidates lists camera's candidates, newest first.
func (r *refitter) candidates(camera string) []console.Candidate {
	entries, _ := os.ReadDir(filepath.Join(r.dir, camera))
	var out []console.Candidate
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(r.dir, camera, e.Name(), "report.json"))
		if err != nil {
			continue // a refit that did not finish
		}
		var c console.Candidate
		if json.Unmarshal(data, &c) == nil && c.ID == e.Name() {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b console.Candidate) int { return b.Created.Compare(a.Created) })
	return out
}

// candidate finds one of camera's candidates by id.
func (r *refitter) candidate(camera, id string) (console.Candidate, error) {
	for _, c := range r.candidates(camera) {
		if c.ID == id {
			return c, nil
		}
	}
	return console.Candidate{}, fmt.Errorf("camera %s has no candidate %q: %w", camera, id, console.ErrNoPart)
}

// compare scores the live bundle and a candidate with eval on the same
// labelled images: the candidate's held-out normal images and the camera's
// true defects, each at its own threshold.
func (r *refitter) compare(camera, live, id string) error {
	c, err := r.candidate(camera, id)
	if err != nil {
		return err
	}
	defects := filepath.Join(r.trueDir, camera)
	if imgs, _ := listImages(defects); len(imgs) == 0 {
		return fmt.Errorf("camera %s has no labelled defects to compare on: mark NG parts as true defects first", camera)
	}
	dir := filepath.Dir(c.Bundle)
	return r.start(camera, "comparison", func(ctx context.Context, st *console.RefitState) error {
		cmp := console.Comparison{Live: live, Normal: filepath.Join(dir, "holdout"), Anomalous: defects, Time: time.Now().UTC()}
		for i, b := range []string{live, c.Bundle} {
			r.update(func() {
				st.Stage, st.Fraction = "scoring with "+[]string{"the live bundle", "the candidate"}[i], float64(i)/2
			})
			cmd, err := selfCommand(ctx, "eval", "--model", b, "--normal", cmp.Normal, "--anomalous", defects, "--json")
			if err != nil {
				return err
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("eval %s: %w: %s", b, err, clip(stderr.String()))
			}
			var figures map[string]any
			if err := json.Unmarshal(out, &figures); err != nil {
				return fmt.Errorf("eval %s: %w", b, err)
			}
			if i == 0 {
				cmp.LiveFigures = figures
			} else {
				cmp.CandidateFigures = figures
			}
		}
		c.Compare = &cmp
		return writeCandidate(dir, c)
	})
}
