package daemon

import (
	"fmt"
	"image"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/heatmap"
)

// Shadow scoring: a candidate scores a camera's live frames beside the
// live bundle and publishes nothing; the console shows how often the two
// agree and the frames where they do not. It takes at most shadowRate
// frames a second on one thread of its own, the newest frame winning, so
// the live detector never waits for it.
const (
	shadowRate          = 2 // frames a second
	shadowDisagreements = 20
)

// shadow is one camera's candidate in shadow mode.
type shadow struct {
	candidate string
	det       *detector.Detector
	inbox     chan shadowFrame // one slot: the newest frame wins
	done      chan struct{}

	mu     sync.Mutex
	state  console.ShadowState
	images map[string][]byte // disagreements' JPEGs by name
	last   time.Time         // the last frame offered
	// mismatchLogged: frames the candidate cannot score (another
	// tiling) have been logged, once (run's goroutine only).
	mismatchLogged bool
}

type shadowFrame struct {
	time          time.Time
	rgb           []byte // a tiled camera's: each tile's, row by row
	size          int
	width, height int // the frame's, before it was resized or cut
	liveScore     float64
	liveNG        bool
}

// shadows are the daemon's shadow candidates by camera; they outlive
// reloads (a promote ends the camera's).
type shadows struct {
	mu   sync.Mutex
	cams map[string]*shadow
}

// offer hands a live frame and its live verdict to camera's shadow, if
// any, at most shadowRate a second.
func (s *shadows) offer(camera string, f capture.Frame, score float64, anomalous bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	sh := s.cams[camera]
	s.mu.Unlock()
	if sh == nil || f.Size != sh.det.Size() || len(f.RGB) == 0 || len(f.RGB)%(f.Size*f.Size*3) != 0 {
		return
	}
	sh.mu.Lock()
	due := f.Time.Sub(sh.last) >= time.Second/shadowRate
	if due {
		sh.last = f.Time
	}
	sh.mu.Unlock()
	if !due {
		return
	}
	frame := shadowFrame{time: f.Time, rgb: append([]byte(nil), f.RGB...), size: f.Size, width: f.Width, height: f.Height, liveScore: score, liveNG: anomalous}
	select {
	case sh.inbox <- frame:
	default: // the shadow is behind: this frame replaces the waiting one
		select {
		case <-sh.inbox:
		default:
		}
		select {
		case sh.inbox <- frame:
		default:
		}
	}
}

// run scores what arrives until the inbox closes.
func (sh *shadow) run() {
	defer close(sh.done)
	for f := range sh.inbox {
		// The live bundle's frames come resized whole or cut into its
		// tiles: a candidate that cuts them otherwise cannot score them.
		image1 := f.size * f.size * 3
		if l, err := sh.det.Layout(f.width, f.height); err != nil || len(l.Tiles)*image1 != len(f.rgb) {
			if !sh.mismatchLogged {
				sh.mismatchLogged = true
				slog.Warn("shadow candidate cuts frames otherwise than the live bundle (another tiling): its frames are not shadowed; compare it instead",
					"candidate", sh.candidate, "frame", fmt.Sprintf("%dx%d", f.width, f.height), "live_images_per_frame", len(f.rgb)/image1, "err", err)
			}
			continue
		}
		res, err := sh.det.ScoreFrames(f.rgb, []image.Point{{X: f.width, Y: f.height}}, sh.det.Info.Threshold)
		if err != nil {
			slog.Warn("shadow candidate failed on a frame", "candidate", sh.candidate, "err", err)
			continue
		}
		r := res[0]
		ng := r.Score > sh.det.Info.Threshold || r.Score != r.Score
		sh.mu.Lock()
		sh.state.Frames++
		if ng == f.liveNG {
			sh.state.Agree++
			sh.mu.Unlock()
			continue
		}
		name := strconv.FormatInt(f.time.UnixNano(), 10)
		sh.state.Disagreements = append([]console.Disagreement{{Time: f.time.UTC(), LiveScore: f.liveScore, LiveAnomalous: f.liveNG,
			CandidateScore: r.Score, Image: name}}, sh.state.Disagreements...)
		if len(sh.state.Disagreements) > shadowDisagreements {
			delete(sh.images, sh.state.Disagreements[shadowDisagreements].Image)
			sh.state.Disagreements = sh.state.Disagreements[:shadowDisagreements]
		}
		sh.mu.Unlock()
		// What the candidate saw: the image, or its worst tile.
		rgb := f.rgb[r.WorstTile*image1 : (r.WorstTile+1)*image1]
		bgr := make([]byte, len(rgb))
		for i := 0; i+2 < len(rgb); i += 3 {
			bgr[i], bgr[i+1], bgr[i+2] = rgb[i+2], rgb[i+1], rgb[i]
		}
		caption := fmt.Sprintf("live %s %.4g, candidate %s %.4g", verdictWord(f.liveNG), f.liveScore, verdictWord(ng), r.Score)
		if r.Tiles > 0 {
			caption += fmt.Sprintf(" (tile %d of %d)", r.WorstTile+1, r.Tiles)
		}
		if jpg, err := heatmap.FrameJPEG(bgr, f.size, f.size, 320, caption); err == nil {
			sh.mu.Lock()
			sh.images[name] = jpg
			sh.mu.Unlock()
		}
	}
}

func verdictWord(ng bool) string {
	if ng {
		return "NG"
	}
	return "OK"
}

// startShadow loads a candidate of camera and shadows the live bundle
// with it, replacing the camera's earlier shadow.
func (d *Daemon) startShadow(camera, id string) error {
	c, err := d.refit.candidate(camera, id)
	if err != nil {
		return err
	}
	det, err := detector.Load(c.Bundle, detector.RunnerOptions{Threads: 1})
	if err != nil {
		return fmt.Errorf("shadow candidate %s: %w", id, err)
	}
	d.stopShadow(camera)
	sh := &shadow{candidate: id, det: det, inbox: make(chan shadowFrame, 1), done: make(chan struct{}), images: map[string][]byte{},
		state: console.ShadowState{Candidate: id, Disagreements: []console.Disagreement{}}}
	go sh.run()
	d.shadows.mu.Lock()
	d.shadows.cams[camera] = sh
	d.shadows.mu.Unlock()
	slog.Info("shadow scoring started", "camera", camera, "candidate", c.Bundle, "frames_per_s", shadowRate)
	return nil
}

// stopShadow ends camera's shadow, if any.
func (d *Daemon) stopShadow(camera string) {
	d.shadows.mu.Lock()
	sh := d.shadows.cams[camera]
	delete(d.shadows.cams, camera)
	d.shadows.mu.Unlock()
	if sh == nil {
		return
	}
	close(sh.inbox)
	<-sh.done
	sh.det.Close()
	slog.Info("shadow scoring stopped", "camera", camera, "candidate", sh.candidate, "frames", sh.state.Frames, "agree", sh.state.Agree)
}

// stopShadows ends every shadow (shutdown).
func (d *Daemon) stopShadows() {
	d.shadows.mu.Lock()
	var cams []string
	for c := range d.shadows.cams {
		cams = append(cams, c)
	}
	d.shadows.mu.Unlock()
	for _, c := range cams {
		d.stopShadow(c)
	}
}

// shadowState is a copy of camera's shadow figures (nil: none).
func (d *Daemon) shadowState(camera string) *console.ShadowState {
	d.shadows.mu.Lock()
	sh := d.shadows.cams[camera]
	d.shadows.mu.Unlock()
	if sh == nil {
		return nil
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.state
	st.Disagreements = append([]console.Disagreement{}, sh.state.Disagreements...) // [] in JSON, not null
	return &st
}

// ShadowImage is a disagreeing frame of camera's shadow (console.Source).
func (w *webSource) ShadowImage(camera, image string) ([]byte, bool) {
	w.d.shadows.mu.Lock()
	sh := w.d.shadows.cams[camera]
	w.d.shadows.mu.Unlock()
	if sh == nil {
		return nil, false
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	jpg, ok := sh.images[image]
	return jpg, ok
}
