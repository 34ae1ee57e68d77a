package capture

import (
	"errors"
	"fmt"
	"image"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/transformaly/transformaly/internal/redact"
	"github.com/transformaly/transformaly/tiles"
)

// Kind is what a source string names.
type Kind string

// Source kinds.
const (
	KindDevice Kind = "device" // V4L2 camera: an index or /dev/videoN
	KindStream Kind = "stream" // rtsp, rtsps, http or https URL (FFMPEG backend)
	KindFile   Kind = "file"   // a video file (FFMPEG backend)
	KindFolder Kind = "folder" // a folder of still images
)

// Config describes one camera.
type Config struct {
	Name   string
	Source string // "0", "/dev/video0", "rtsp://...", "http://...", "video.mp4", "file:///...", "images/"

	// Device requests (V4L2 only; 0 keeps the driver's choice).
	Width, Height int
	FPS           float64
	FourCC        string // e.g. "MJPG"

	Loop bool // files and folders: start again at the end
	Pace bool // files and folders: deliver at the file's frame rate (FolderFPS for folders)

	// FolderFPS is the pace of a folder source (default 10).
	FolderFPS float64

	FPSLimit float64         // deliver at most this many frames per second (0: all)
	ROI      image.Rectangle // crop before resizing (empty: whole frame)
	Rotate   int             // 0, 90, 180 or 270 degrees clockwise, after the crop
	FlipH    bool
	FlipV    bool
	Size     int // output side length: the model's input size (0 with KeepView: views only)
	// KeepView also delivers each frame as it looks after the crop,
	// rotation and flip, at full resolution (for snapshots a person looks
	// at).
	KeepView bool
	// Tiling cuts each frame into tiles at native resolution for a tiled
	// bundle, each resized to Size (nil: the whole frame resized). A frame
	// smaller than one tile is a permanent error.
	Tiling *tiles.Tiling

	StallTimeout time.Duration // no frame for this long: recreate the capture (default 20 s)
	RetryStart   time.Duration // first wait before reopening (default 2 s)
	RetryMax     time.Duration // longest wait between reopen attempts (default 30 s)
}

// withDefaults fills unset timings.
func (c Config) withDefaults() Config {
	if c.StallTimeout <= 0 {
		c.StallTimeout = 20 * time.Second
	}
	if c.RetryStart <= 0 {
		c.RetryStart = 2 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.FolderFPS <= 0 {
		c.FolderFPS = 10
	}
	return c
}

// ErrPermanent marks errors that retrying cannot fix (a file that does not
// exist, an unknown URL scheme, a malformed ROI): errors.Is finds it, and
// the message stays the cause's own.
var ErrPermanent = errors.New("permanent")

type permanentError struct{ error }

func (e permanentError) Is(target error) bool { return target == ErrPermanent }
func (e permanentError) Unwrap() error        { return e.error }

// markPermanent marks err as one that retrying cannot fix.
func markPermanent(err error) error { return permanentError{err} }

func permanent(format string, a ...any) error { return markPermanent(fmt.Errorf(format, a...)) }

// ParseKind classifies a source string, and checks what can be checked
// before opening it: a non-existent file or folder, or a URL of a scheme no
// backend reads, is a permanent error. A missing /dev/videoN is not: the
// camera may be plugged in later.
func ParseKind(source string) (Kind, string, error) {
	s := strings.TrimSpace(source)
	if s == "" {
		return "", "", permanent("empty source")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return "", "", permanent("device index %d is negative", n)
		}
		return KindDevice, s, nil
	}
	if strings.HasPrefix(s, "/dev/video") {
		return KindDevice, s, nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", "", permanent("source %q is not a valid URL: %v", redact.URL(s), redact.ParseError(err))
		}
		switch u.Scheme {
		case "rtsp", "rtsps", "http", "https", "rtmp":
			return KindStream, s, nil
		case "file":
			s = u.Path
		default:
			return "", "", permanent("source %q: unknown URL scheme %q (want rtsp, rtsps, http, https, rtmp or file)", redact.URL(s), u.Scheme)
		}
	}
	st, err := os.Stat(s)
	if err != nil {
		return "", "", permanent("source %q: %v", s, err)
	}
	if st.IsDir() {
		return KindFolder, filepath.Clean(s), nil
	}
	return KindFile, s, nil
}

// Validate checks a camera's settings.
func (c Config) Validate() error {
	if c.Name == "" {
		return permanent("camera without a name")
	}
	if _, _, err := ParseKind(c.Source); err != nil {
		return err
	}
	if c.Size < 0 || c.Size == 0 && !c.KeepView {
		return permanent("camera %s: output size %d must be positive", c.Name, c.Size)
	}
	if c.ROI != (image.Rectangle{}) && (c.ROI.Min.X < 0 || c.ROI.Min.Y < 0 || c.ROI.Dx() <= 0 || c.ROI.Dy() <= 0) {
		return permanent("camera %s: ROI %v must have a non-negative origin and positive width and height", c.Name, c.ROI)
	}
	switch c.Rotate {
	case 0, 90, 180, 270:
	default:
		return permanent("camera %s: rotation %d is not 0, 90, 180 or 270", c.Name, c.Rotate)
	}
	if c.FPSLimit < 0 || c.FPS < 0 {
		return permanent("camera %s: frame rates must not be negative", c.Name)
	}
	if t := c.Tiling; t != nil {
		if err := t.Check(); err != nil {
			return permanent("camera %s: %v", c.Name, err)
		}
		if w, h := c.ROI.Dx(), c.ROI.Dy(); c.ROI != (image.Rectangle{}) {
			if c.Rotate == 90 || c.Rotate == 270 {
				w, h = h, w
			}
			if err := t.Fits(w, h); err != nil {
				return permanent("camera %s: roi: %v", c.Name, err)
			}
		}
	}
	if c.FourCC != "" && len(c.FourCC) != 4 {
		return permanent("camera %s: fourcc %q is not four characters", c.Name, c.FourCC)
	}
	return nil
}

// ParseROI reads "x,y,w,h".
func ParseROI(s string) (image.Rectangle, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return image.Rectangle{}, fmt.Errorf("ROI %q is not x,y,width,height", s)
	}
	var v [4]int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return image.Rectangle{}, fmt.Errorf("ROI %q: %q is not an integer", s, p)
		}
		v[i] = n
	}
	if v[0] < 0 || v[1] < 0 || v[2] <= 0 || v[3] <= 0 {
		return image.Rectangle{}, fmt.Errorf("ROI %q: need x, y >= 0 and width, height > 0", s)
	}
	return image.Rect(v[0], v[1], v[0]+v[2], v[1]+v[3]), nil
}
