package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/internal/heatmap"
)

// NGImagesConfig keeps the images of NG parts (triggered cameras) for audit
// and for refitting: <directory>/<camera>/images/<time>_<part>.png is the
// frame as `transformaly collect` saves it (after crop and rotation, full
// resolution), so a reviewed folder of false rejects is fit-ready, and
// <directory>/<camera>/maps/<same name>.jpg the same frame with its anomaly
// map and caption. Past max_mb in all the oldest pairs are removed first.
type NGImagesConfig struct {
	Directory string `yaml:"directory"` // default <state_directory>/ng_images
	MaxMB     int    `yaml:"max_mb"`    // 0 keeps none
}

// ngImagesQueue bounds the parts waiting to be written: a disk slower than
// the line loses images (logged), never holds up verdicts.
const ngImagesQueue = 8

// partImage is the evidence of a part's worst frame.
type partImage struct {
	bgr           []byte // a copy: the frame's view goes back to the camera
	width, height int
	anomaly       heatmap.Map
	caption       string
}

type ngImage struct {
	result  PartResult
	image   *partImage
	preview func(jpeg []byte) // also given a smaller map, for the console (nil: none)
}

type ngFile struct {
	path string
	size int64
}

// ngArchive writes NG parts' images in its own goroutine and keeps the
// folder under its cap. It outlives reloads.
type ngArchive struct {
	dir      string
	maxBytes int64
	jobs     chan ngImage
	done     chan struct{}

	// files and total belong to the writer goroutine once it runs.
	files []ngFile // oldest first
	total int64
}

// openNGArchive indexes what an earlier run left in dir and starts the
// writer; maxMB 0 gives nil (no archive).
func openNGArchive(dir string, maxMB int) (*ngArchive, error) {
	if maxMB <= 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("ng_images.directory: %w", err)
	}
	a := &ngArchive{dir: dir, maxBytes: int64(maxMB) << 20, jobs: make(chan ngImage, ngImagesQueue), done: make(chan struct{})}
	type found struct {
		ngFile
		mod int64
	}
	var all []found
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		all = append(all, found{ngFile{p, info.Size()}, info.ModTime().UnixNano()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ng_images.directory %s: %w", dir, err)
	}
	slices.SortFunc(all, func(x, y found) int { return cmp.Compare(x.mod, y.mod) })
	for _, f := range all {
		a.files = append(a.files, f.ngFile)
		a.total += f.size
	}
	a.prune()
	go a.writeLoop()
	return a, nil
}

// keep queues a part's images; a full queue drops them with a log line.
func (a *ngArchive) keep(r PartResult, img *partImage, preview func([]byte)) {
	select {
	case a.jobs <- ngImage{r, img, preview}:
	default:
		slog.Warn("NG part image not kept: the disk is behind", "camera", r.Camera, "part_id", r.PartID)
	}
}

// close writes what is queued and stops the writer.
func (a *ngArchive) close() {
	close(a.jobs)
	<-a.done
}

func (a *ngArchive) writeLoop() {
	defer close(a.done)
	for job := range a.jobs {
		if err := a.write(job); err != nil {
			slog.Error("NG part image not kept", "camera", job.result.Camera, "part_id", job.result.PartID, "err", err)
		}
	}
}

// unsafeName keeps part ids (which come from the line) out of paths.
var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func (a *ngArchive) write(job ngImage) error {
	r, img := job.result, job.image
	name := ngImageName(r.TriggerTime, r.PartID)
	imagePath := filepath.Join(a.dir, r.Camera, "images", name+".png")
	mapPath := filepath.Join(a.dir, r.Camera, "maps", name+".jpg")
	for _, p := range []string{imagePath, mapPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			return err
		}
	}
	png, err := capture.EncodeImage(img.bgr, img.width, img.height, ".png")
	if err != nil {
		return err
	}
	jpg, err := heatmap.JPEG(img.bgr, img.width, img.height, img.anomaly, max(img.width, img.height), img.caption)
	if err != nil {
		return fmt.Errorf("anomaly map of %s: %w", name, err)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{imagePath, png}, {mapPath, jpg}} {
		if err := atomicfile.Write(f.path, f.data); err != nil {
			return err
		}
		a.files = append(a.files, ngFile{f.path, int64(len(f.data))})
		a.total += int64(len(f.data))
	}
	a.prune()
	if job.preview != nil {
		small, err := heatmap.JPEG(img.bgr, img.width, img.height, img.anomaly, liveMaxSide, img.caption)
		if err != nil {
			return fmt.Errorf("console map of %s: %w", name, err)
		}
		job.preview(small)
	}
	return nil
}

// prune removes the oldest files until the folder is under its cap.
func (a *ngArchive) prune() {
	for a.total > a.maxBytes && len(a.files) > 0 {
		f := a.files[0]
		a.files = a.files[1:]
		a.total -= f.size
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("old NG part image not removed", "path", f.path, "err", err)
		}
	}
}
