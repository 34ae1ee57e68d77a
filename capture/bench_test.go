package capture

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecodePreprocess decodes MJPG video frames (FFMPEG), crops a
// central 90% ROI, resizes to 224 and converts to RGB (and with view=true
// also keeps the cropped frame for snapshots, as the daemon does by default),
// reporting frames/s and frames per CPU-second (frames/s per core, whatever
// threads OpenCV uses).
func BenchmarkDecodePreprocess(b *testing.B) {
	for _, c := range []struct {
		w, h int
		view bool
	}{{1920, 1080, false}, {1920, 1080, true}, {1280, 720, false}, {1280, 720, true}} {
		res := c
		b.Run(fmt.Sprintf("%dp/view=%v", res.h, res.view), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "clip.avi")
			vw, err := gocv.VideoWriterFile(path, "MJPG", 25, res.w, res.h, true)
			if err != nil {
				b.Fatal(err)
			}
			for i := range 60 {
				m := solid(res.w, res.h, color.RGBA{uint8(i * 10), 100, 50, 0})
				gocv.Circle(&m, image.Pt(res.w/2, res.h/2), res.h/4, color.RGBA{255, 255, 255, 0}, -1)
				vw.Write(m)
				m.Close()
			}
			vw.Close()
			roi := image.Rect(res.w/20, res.h/20, res.w*19/20, res.h*19/20)
			pre := newPreprocessor(Transform{ROI: roi, Size: 224, KeepView: res.view})
			defer pre.Close()
			frame := gocv.NewMat()
			defer frame.Close()
			out := make([]byte, 224*224*3)
			src, err := openSource(context.Background(), Config{Name: "bench", Source: path}, false)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { src.Close() }()
			const perOp = 20 // frames per iteration, so that -benchtime 2x still measures something
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N * perOp {
				if err := src.Read(&frame); err != nil { // loop the file
					src.Close()
					if src, err = openSource(context.Background(), Config{Name: "bench", Source: path}, false); err != nil {
						b.Fatal(err)
					}
					if err := src.Read(&frame); err != nil {
						b.Fatal(err)
					}
				}
				view, err := pre.Apply(frame, out)
				if err != nil {
					b.Fatal(err)
				}
				view.Release() // as the daemon does with frames that are no event's peak
			}
			b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "frames/s")
			b.ReportMetric(float64(b.N*perOp)/(cpuTime()-cpu0).Seconds(), "frames/cpu-s")
		})
	}
}
