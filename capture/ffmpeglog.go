package capture

/*
#cgo pkg-config: libavutil
void tfy_route_ffmpeg_log(void);
*/
import "C"

import (
	"log/slog"
	"strings"
	"sync"
	"time"
)

// FFmpeg (inside OpenCV) writes its errors straight to stderr ("[mjpeg @
// 0x4ca9bc0] dqt: invalid precision"), past the daemon's log handler and
// its format, and a damaged stream writes them at every frame. Its lines
// are routed here instead: logged as warnings with the "ffmpeg" source, at
// most ffmpegLinesPerMinute a minute, the rest counted. OpenCV sets
// FFmpeg's level to errors only (OPENCV_FFMPEG_LOGLEVEL changes it).
const ffmpegLinesPerMinute = 20

var ffmpegLog struct {
	sync.Mutex
	window     time.Time // start of the current minute
	lines      int       // logged or suppressed in it
	suppressed int
}

// routeFFmpegLog installs the handler; called once, before FFmpeg's first
// use.
func routeFFmpegLog() { C.tfy_route_ffmpeg_log() }

//export ffmpegLogLine
func ffmpegLogLine(level C.int, line *C.char) {
	text := strings.TrimSpace(C.GoString(line))
	if text == "" {
		return
	}
	l := &ffmpegLog
	l.Lock()
	now := time.Now()
	if now.Sub(l.window) >= time.Minute {
		if l.suppressed > 0 {
			slog.Warn("more ffmpeg lines in the last minute, not logged", "source", "ffmpeg", "count", l.suppressed)
		}
		l.window, l.lines, l.suppressed = now, 0, 0
	}
	l.lines++
	if l.lines > ffmpegLinesPerMinute {
		l.suppressed++
		l.Unlock()
		return
	}
	l.Unlock()
	slog.Warn(text, "source", "ffmpeg", "level", int(level))
}
