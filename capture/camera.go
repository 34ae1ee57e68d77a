package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"
)

// State is a camera's condition.
type State string

// Camera states.
const (
	StateStarting     State = "starting"
	StateOnline       State = "online"
	StateReconnecting State = "reconnecting"
	StateOffline      State = "offline" // stopped: ended, failed for good, or shut down
)

// Frame is one preprocessed frame.
type Frame struct {
	Camera string
	Seq    uint64    // 1-based, per camera
	Time   time.Time // when it was captured
	RGB    []byte    // Size x Size x 3 (a tiled camera's: each tile's, row by row), owned by the receiver
	Size   int
	// Width and Height are the frame's after crop, rotation and flips,
	// before the resize to Size x Size: the coordinates regions are given in.
	Width, Height int
	// View is the frame before the resize to Size x Size (only with
	// Config.KeepView; nil otherwise).
	View *View
}

// View is a frame as the camera saw it after crop, rotation and flip: packed
// BGR (OpenCV's order) at full resolution. Release hands its buffer back for
// later frames (copying a frame into a reused buffer costs a fraction of
// allocating one); a view not released is simply garbage collected.
type View struct {
	BGR           []byte
	Width, Height int
	free          chan *View // where Release puts it
}

// Release returns the view's buffer for reuse; the view must not be used
// afterwards. Safe on nil.
func (v *View) Release() {
	if v == nil || v.free == nil {
		return
	}
	select {
	case v.free <- v:
	default: // enough spares already
	}
}

// Status is a camera's counters and state.
type Status struct {
	Name       string    `json:"name"`
	State      State     `json:"state"`
	Error      string    `json:"error,omitempty"` // the last failure
	Frames     uint64    `json:"frames"`          // delivered to the mailbox
	Dropped    uint64    `json:"dropped"`         // replaced before the consumer took them
	Damaged    uint64    `json:"damaged"`         // cut or corrupted, skipped unscored
	Reconnects uint64    `json:"reconnects"`      // recreated sources that delivered again
	LastFrame  time.Time `json:"last_frame"`
	FPS        float64   `json:"fps"` // measured capture rate
}

// Camera runs one source in its own goroutine: it reconnects with growing
// waits when reads fail or frames stop, and delivers preprocessed frames to
// a one-slot mailbox where the newest frame wins.
type Camera struct {
	cfg      Config
	frames   chan Frame
	onChange func(Status)

	// Owned by Run's goroutine.
	viaFFmpeg  bool      // an HTTP stream our MJPEG reader could not parse
	recovering bool      // the source failed; the next delivered frame is a reconnect
	damagedLog time.Time // when a damaged frame was last logged

	// wantViews delivers views at run time too, beside Config.KeepView (the
	// web console wants them only while someone watches).
	wantViews atomic.Bool

	mu     sync.Mutex
	status Status
}

// WantViews turns the delivery of views (Frame.View) on or off at run
// time; Config.KeepView keeps them on whatever this says. Safe on nil.
func (c *Camera) WantViews(on bool) {
	if c != nil {
		c.wantViews.Store(on)
	}
}

// NewCamera validates cfg; errors are permanent (they name what is wrong).
// onChange, if set, is called on every state change (from the camera's
// goroutine).
func NewCamera(cfg Config, onChange func(Status)) (*Camera, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Camera{cfg: cfg, frames: make(chan Frame, 1), onChange: onChange,
		status: Status{Name: cfg.Name, State: StateStarting}}, nil
}

// Name is the camera's name.
func (c *Camera) Name() string { return c.cfg.Name }

// Frames is the mailbox: at most one frame waits, the newest.
func (c *Camera) Frames() <-chan Frame { return c.frames }

// Status returns a snapshot of the counters.
func (c *Camera) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

func (c *Camera) setState(s State, err error) {
	c.mu.Lock()
	changed := c.status.State != s
	c.status.State = s
	if err != nil {
		c.status.Error = err.Error()
	}
	snap := c.status
	c.mu.Unlock()
	if changed {
		slog.Info("camera state", "camera", c.cfg.Name, "state", s, "err", err)
		if c.onChange != nil {
			c.onChange(snap)
		}
	}
}

// deliver puts a frame in the mailbox, replacing an untaken one.
func (c *Camera) deliver(f Frame) {
	select {
	case c.frames <- f:
		return
	default:
	}
	dropped := false
	select {
	case old := <-c.frames:
		old.View.Release()
		dropped = true
	default:
	}
	select {
	case c.frames <- f:
	default: // the consumer cannot have filled it; drop ours if it did
		f.View.Release()
		dropped = true
	}
	if dropped {
		c.mu.Lock()
		c.status.Dropped++
		c.mu.Unlock()
	}
}

// Run captures until ctx ends, the source ends (a file or folder without
// Loop), or it fails for good. It returns nil on a normal end, and closes
// the mailbox when it returns. Call it once.
func (c *Camera) Run(ctx context.Context) error {
	defer close(c.frames)
	defer c.setState(StateOffline, nil)
	done := make(chan struct{})
	defer close(done)
	go c.watchdog(done)
	pre := newPreprocessor(Transform{ROI: c.cfg.ROI, Rotate: c.cfg.Rotate, FlipH: c.cfg.FlipH, FlipV: c.cfg.FlipV, Size: c.cfg.Size, KeepView: c.cfg.KeepView, Tiling: c.cfg.Tiling})
	defer pre.Close()
	frame := gocv.NewMat()
	defer frame.Close()
	wait := c.cfg.RetryStart
	var seq uint64
	for {
		if ctx.Err() != nil {
			return nil
		}
		src, err := openSource(ctx, c.cfg, c.viaFFmpeg)
		delivered := false
		if err == nil {
			delivered, err = c.stream(ctx, src, pre, &frame, &seq)
			src.Close()
		}
		if delivered {
			wait = c.cfg.RetryStart // it worked for a while: start the waits afresh
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, io.EOF):
			if !c.cfg.Loop {
				slog.Info("camera source ended", "camera", c.cfg.Name)
				return nil
			}
			continue // reopen from the start without waiting
		case errors.Is(err, ErrPermanent):
			c.setState(StateOffline, err)
			return err
		case errors.Is(err, errNotMJPEG) && !c.viaFFmpeg:
			slog.Info("camera stream is read through FFmpeg", "camera", c.cfg.Name, "reason", err)
			c.viaFFmpeg = true
			continue
		}
		c.recovering = true
		c.setState(StateReconnecting, err)
		if !sleep(ctx, wait) {
			return nil
		}
		wait = min(2*wait, c.cfg.RetryMax)
	}
}

// readRetries is how many failed reads in a row a source gets before it is
// recreated (within the stall timeout): FFmpeg fails one read on a part it
// cannot decode, and the next read on the same capture works.
const readRetries = 3

// stream reads frames from an open source until it fails, stalls or ends.
// A read that blocks is bounded by FFMPEG's timeouts (or mjpegSource's); a
// source that keeps answering without producing frames, or only damaged
// ones, is caught by the stall timeout.
func (c *Camera) stream(ctx context.Context, src source, pre *preprocessor, frame *gocv.Mat, seq *uint64) (delivered bool, err error) {
	pace := 0.0
	if c.cfg.Pace {
		pace = src.FrameRate()
		if _, ok := src.(*folderSource); ok || pace <= 0 || pace > 1000 {
			pace = c.cfg.FolderFPS
		}
	}
	start := time.Now()
	lastGood, lastSent := time.Now(), time.Time{}
	paced, failed := 0, 0
	for ctx.Err() == nil {
		if err := src.Read(frame); err != nil {
			stalled := time.Since(lastGood) > c.cfg.StallTimeout
			switch {
			case errors.Is(err, ErrDamaged):
				c.countDamaged(err)
				if stalled {
					return delivered, fmt.Errorf("only damaged frames for %s, the last: %w", time.Since(lastGood).Round(time.Millisecond), err)
				}
				continue
			case errors.Is(err, io.EOF) || errors.Is(err, errNotMJPEG) || failed >= readRetries || stalled:
				return delivered, err
			}
			failed++
			continue
		}
		failed = 0
		now := time.Now()
		if now.Sub(lastGood) > c.cfg.StallTimeout {
			return delivered, fmt.Errorf("no frame for %s", now.Sub(lastGood).Round(time.Millisecond))
		}
		lastGood = now
		if pace > 0 {
			paced++
			if !sleep(ctx, time.Until(start.Add(time.Duration(float64(paced)/pace*float64(time.Second))))) {
				return delivered, nil
			}
			now = time.Now()
		}
		if c.cfg.FPSLimit > 0 && !lastSent.IsZero() && now.Sub(lastSent).Seconds() < 1/c.cfg.FPSLimit {
			continue
		}
		pre.t.KeepView = c.cfg.KeepView || c.wantViews.Load()
		rgb, view, err := pre.Input(*frame)
		if err != nil {
			return delivered, markPermanent(err)
		}
		*seq++
		c.mu.Lock()
		if !c.status.LastFrame.IsZero() {
			dt := now.Sub(c.status.LastFrame).Seconds()
			if dt > 0 {
				inst := 1 / dt
				if c.status.FPS == 0 {
					c.status.FPS = inst
				} else {
					c.status.FPS += 0.1 * (inst - c.status.FPS)
				}
			}
		}
		c.status.Frames++
		c.status.LastFrame = now
		if c.recovering {
			c.recovering = false
			c.status.Reconnects++
		}
		c.mu.Unlock()
		c.setState(StateOnline, nil)
		delivered = true
		lastSent = now
		c.deliver(Frame{Camera: c.cfg.Name, Seq: *seq, Time: now, RGB: rgb, Size: c.cfg.Size, Width: pre.viewW, Height: pre.viewH, View: view})
	}
	return delivered, nil
}

// countDamaged counts a damaged frame and logs it at most once a minute,
// with the count so far.
func (c *Camera) countDamaged(err error) {
	c.mu.Lock()
	c.status.Damaged++
	n := c.status.Damaged
	c.mu.Unlock()
	if time.Since(c.damagedLog) >= time.Minute {
		c.damagedLog = time.Now()
		slog.Warn("camera frame damaged, skipped unscored", "camera", c.cfg.Name, "err", err, "damaged_total", n)
	}
}

// watchdog reports a stalled camera as reconnecting while its read is
// still blocked (the read itself returns within FFMPEG's timeouts, and the
// capture is then recreated by Run).
func (c *Camera) watchdog(done <-chan struct{}) {
	t := time.NewTicker(max(c.cfg.StallTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			st := c.Status()
			if st.State == StateOnline && time.Since(st.LastFrame) > c.cfg.StallTimeout {
				c.setState(StateReconnecting, fmt.Errorf("no frame for %s", time.Since(st.LastFrame).Round(time.Second)))
			}
		}
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// EachFrame reads a video file (or image folder) from start to end without
// dropping any frame, preprocessing each as a camera would, and calls fn
// with it in order: for scoring recordings offline, where every frame
// counts and nothing runs in real time. Frame.Time is the frame's position
// in the recording (from the file's frame rate) after the zero time.
func EachFrame(ctx context.Context, cfg Config, fn func(Frame) error) error {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	src, err := openSource(ctx, cfg, false)
	if errors.Is(err, errNotMJPEG) {
		src, err = openSource(ctx, cfg, true)
	}
	if err != nil {
		return err
	}
	defer src.Close()
	pre := newPreprocessor(Transform{ROI: cfg.ROI, Rotate: cfg.Rotate, FlipH: cfg.FlipH, FlipV: cfg.FlipV, Size: cfg.Size, KeepView: cfg.KeepView, Tiling: cfg.Tiling})
	defer pre.Close()
	frame := gocv.NewMat()
	defer frame.Close()
	fps := src.FrameRate()
	for seq := uint64(1); ctx.Err() == nil; seq++ {
		if err := src.Read(&frame); err != nil {
			switch {
			case errors.Is(err, io.EOF):
				return nil
			case errors.Is(err, ErrDamaged):
				slog.Warn("frame damaged, skipped", "source", cfg.Name, "err", err)
				seq--
				continue
			}
			return err
		}
		rgb, view, err := pre.Input(frame)
		if err != nil {
			return err
		}
		var at time.Time
		if fps > 0 {
			at = at.Add(time.Duration(float64(seq-1) / fps * float64(time.Second)))
		}
		if err := fn(Frame{Camera: cfg.Name, Seq: seq, Time: at, RGB: rgb, Size: cfg.Size, Width: pre.viewW, Height: pre.viewH, View: view}); err != nil {
			return err
		}
	}
	return ctx.Err()
}
