package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/redact"
)

// source yields BGR frames into a caller-owned Mat. It is used by one
// goroutine at a time.
type source interface {
	// Read fills dst with the next frame; io.EOF at the end of a file or
	// folder.
	Read(dst *gocv.Mat) error
	// FrameRate is the native rate when known (0 otherwise).
	FrameRate() float64
	Close()
}

// ffmpegOptions bound how long FFMPEG may block opening or reading a
// stream: without them a hung server blocks an open for 31 s and a stalled
// stream blocks a read for 30 s, and neither call can be cancelled. gocv
// v0.32.0 cannot pass OpenCV's timeout properties, but this environment
// variable, read at every FFMPEG open, brings both down to a few seconds.
const ffmpegOptions = "rtsp_transport;tcp|timeout;3000000|rw_timeout;3000000"

var ffmpegOnce sync.Once

func setFFmpegOptions() {
	ffmpegOnce.Do(func() {
		if os.Getenv("OPENCV_FFMPEG_CAPTURE_OPTIONS") == "" {
			os.Setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", ffmpegOptions)
		}
		routeFFmpegLog()
	})
}

// openSource opens what cfg names: an HTTP multipart MJPEG stream through
// mjpegSource unless viaFFmpeg, any other stream or file through FFmpeg.
// Errors wrap ErrPermanent when retrying cannot help.
func openSource(ctx context.Context, cfg Config, viaFFmpeg bool) (source, error) {
	kind, target, err := ParseKind(cfg.Source)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindFolder:
		return openFolder(target)
	case KindDevice:
		return openDevice(cfg, target)
	default:
		if kind == KindStream && isHTTP(target) && !viaFFmpeg {
			src, err := openMJPEG(ctx, target, cfg.StallTimeout)
			if err == nil {
				return src, nil
			}
			if !errors.Is(err, errNotMJPEG) {
				return nil, err
			}
		}
		setFFmpegOptions()
		vc, err := gocv.VideoCaptureFileWithAPI(target, gocv.VideoCaptureFFmpeg)
		if err != nil || !vc.IsOpened() {
			vc.Close() // a failed open still holds a capture
			if kind == KindFile {
				return nil, permanent("open video file %s: OpenCV's FFMPEG backend cannot read it", target)
			}
			return nil, fmt.Errorf("open stream %s: not reachable or not a video stream", redact.URL(target))
		}
		return &videoSource{vc: vc, endIsEOF: kind == KindFile}, nil
	}
}

func openDevice(cfg Config, target string) (source, error) {
	var vc *gocv.VideoCapture
	var err error
	if n, convErr := strconv.Atoi(target); convErr == nil {
		target = "/dev/video" + strconv.Itoa(n)
		if _, statErr := os.Stat(target); statErr != nil {
			return nil, fmt.Errorf("camera %s not present (yet?)", target)
		}
		vc, err = gocv.VideoCaptureDeviceWithAPI(n, gocv.VideoCaptureV4L2)
	} else {
		if _, statErr := os.Stat(target); statErr != nil {
			return nil, fmt.Errorf("camera %s not present (yet?)", target)
		}
		vc, err = gocv.VideoCaptureFileWithAPI(target, gocv.VideoCaptureV4L2)
	}
	if err != nil || !vc.IsOpened() {
		vc.Close()
		return nil, fmt.Errorf("open camera %s: the V4L2 device did not open (busy, or not a capture device)", target)
	}
	if cfg.FourCC != "" {
		vc.Set(gocv.VideoCaptureFOURCC, vc.ToCodec(cfg.FourCC))
	}
	if cfg.Width > 0 {
		vc.Set(gocv.VideoCaptureFrameWidth, float64(cfg.Width))
	}
	if cfg.Height > 0 {
		vc.Set(gocv.VideoCaptureFrameHeight, float64(cfg.Height))
	}
	if cfg.FPS > 0 {
		vc.Set(gocv.VideoCaptureFPS, cfg.FPS)
	}
	return &videoSource{vc: vc}, nil
}

type videoSource struct {
	vc       *gocv.VideoCapture
	endIsEOF bool // a file: a failed read is the end
}

func (s *videoSource) Read(dst *gocv.Mat) error {
	if s.vc.Read(dst) && !dst.Empty() {
		return nil
	}
	if s.endIsEOF {
		return io.EOF
	}
	return errors.New("read failed (stream dropped or stalled)")
}

func (s *videoSource) FrameRate() float64 { return s.vc.Get(gocv.VideoCaptureFPS) }

func (s *videoSource) Close() { s.vc.Close() }

// folderSource reads the still images of a folder in name order. A corrupt
// file is a damaged frame (ErrDamaged), never delivered garbled.
type folderSource struct {
	paths []string
	next  int
}

func openFolder(dir string) (source, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, permanent("read folder %s: %v", dir, err)
	}
	s := &folderSource{}
	for _, e := range entries {
		if p := dir + string(os.PathSeparator) + e.Name(); IsImageFile(p, e) {
			s.paths = append(s.paths, p)
		}
	}
	if len(s.paths) == 0 {
		return nil, permanent("folder %s holds no images (png, jpg, jpeg, bmp)", dir)
	}
	return s, nil
}

func (s *folderSource) Read(dst *gocv.Mat) error {
	if s.next >= len(s.paths) {
		return io.EOF
	}
	p := s.paths[s.next]
	s.next++
	data, err := ReadImageFile(p)
	if err == nil {
		err = ValidateImageFile(p, data)
	}
	if err == nil {
		if err = decodeInto(data, dst); err != nil {
			err = fmt.Errorf("image %s: %w", p, err)
		}
	}
	if err != nil {
		return damaged(err)
	}
	return nil
}

func (s *folderSource) FrameRate() float64 { return 0 }

func (s *folderSource) Close() {}
