package e2e

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/synth"
)

// writeBrighteningVideo writes a paced camera's video of normal parts
// whose lighting jumps by gain after the first normal frames: a new lamp
// on the line, nothing wrong with the parts.
func writeBrighteningVideo(t *testing.T, path string, normal, brightened int, gain float64) {
	t.Helper()
	vw, err := gocv.VideoWriterFile(path, "MJPG", 25, 96, 96, true)
	if err != nil {
		t.Fatal(err)
	}
	defer vw.Close()
	for i := range normal + brightened {
		img := synth.Part(96, synth.Normal, 77_000+uint64(i))
		if i >= normal {
			brighten(img, gain)
		}
		m, err := gocv.ImageToMatRGB(img)
		if err != nil {
			t.Fatal(err)
		}
		err = vw.Write(m)
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func brighten(img *image.NRGBA, gain float64) {
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := img.NRGBAAt(x, y)
			scale := func(v uint8) uint8 { return uint8(min(255, float64(v)*gain)) }
			img.SetNRGBA(x, y, color.NRGBA{scale(c.R), scale(c.G), scale(c.B), 255})
		}
	}
}

// A camera's normal parts brighten mid-run (gain 1.6 after 250 frames,
// 10 s at 25 fps): before, the share of its recent frames over the
// threshold stays within the bundle's promise and no drift is flagged;
// after, stats, Prometheus and the console all show the share far above
// the promise and the drift, flagged within 60 frames of the change
// (2.4 s at 25 fps; the stats come every second, 25 frames).
func TestDriftWhenTheLightChanges(t *testing.T) {
	f := getDaemonFixture(t)
	video := filepath.Join(t.TempDir(), "brightening.avi")
	writeBrighteningVideo(t, video, 250, 250, 1.6)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/stats", "test-sub-drift")
	metricsPort := freePort(t)
	startDaemon(t, fmt.Sprintf(`
defaults:
  model: %s
  pace: true
cameras:
  - name: line1
    source: %s
mqtt:
  broker: %s
  stats_interval: 1s
metrics:
  address: 127.0.0.1:%d
state_directory: %s
`, f.bundle, video, b.url(), metricsPort, t.TempDir()))

	type camStats struct {
		Share    float64  `json:"recent_over_threshold"`
		Frames   int      `json:"recent_frames"`
		Promised *float64 `json:"promised_false_alarm_rate"`
		Drift    bool     `json:"drift"`
	}
	read := func() []camStats {
		var out []camStats
		for _, m := range sub.on("transformaly/stats") {
			var st struct {
				Cameras map[string]camStats `json:"cameras"`
			}
			if err := json.Unmarshal(m.Payload, &st); err != nil {
				t.Fatal(err)
			}
			if c, ok := st.Cameras["line1"]; ok {
				out = append(out, c)
			}
		}
		return out
	}
	var drifted camStats
	eventually(t, "the stats to flag drift", 60*time.Second, func() bool {
		for _, c := range read() {
			if c.Drift {
				drifted = c
				return true
			}
		}
		return false
	})
	before := 0
	for _, c := range read() {
		if c.Drift {
			break
		}
		if c.Promised == nil {
			t.Fatalf("stats without the promise: %+v", c)
		}
		// Normal frames only so far: the share stays near the promise.
		if c.Frames >= 100 && c.Frames < 240 {
			before++
			if c.Share > 0.03 {
				t.Errorf("%.1f%% of %d normal frames over the threshold, promised %.2f%%", 100*c.Share, c.Frames, 100**c.Promised)
			}
		}
	}
	if before < 3 {
		t.Errorf("only %d stats messages between 100 and 240 normal frames", before)
	}
	over := int(drifted.Share*float64(drifted.Frames) + 0.5)
	t.Logf("before the change: %d stats messages, no drift; drift flagged with %d of the last %d frames over the threshold (promised %.2f%%)",
		before, over, drifted.Frames, 100**drifted.Promised)
	if over > 60 || drifted.Frames < 250 {
		t.Errorf("drift flagged with %d of %d recent frames over the threshold: want it within 60 frames of the change at frame 250", over, drifted.Frames)
	}
	// Prometheus and the console say the same, once the share is far
	// above the promise.
	eventually(t, "half the recent frames over the threshold", 30*time.Second, func() bool {
		c := read()
		return len(c) > 0 && c[len(c)-1].Share > 0.3
	})
	metrics := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	for _, want := range []string{`transformaly_drift{camera="line1"} 1`, `transformaly_recent_over_threshold_ratio{camera="line1"} 0.`, `transformaly_promised_false_alarm_ratio{camera="line1"} 0.00`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var page struct {
		Cameras []struct {
			Name     string   `json:"name"`
			Share    float64  `json:"recent_over_threshold"`
			Promised *float64 `json:"promised_false_alarm_rate"`
			Drift    bool     `json:"drift"`
		} `json:"cameras"`
	}
	if err := json.Unmarshal([]byte(httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/api/cameras", metricsPort))), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Cameras) != 1 || !page.Cameras[0].Drift || page.Cameras[0].Share < 0.3 || page.Cameras[0].Promised == nil {
		t.Errorf("the console's cameras: %+v", page.Cameras)
	}
}
