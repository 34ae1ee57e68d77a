package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/transformaly/transformaly/internal/synth"
)

// BenchmarkDaemon runs the built daemon as its own process (file cameras
// at full speed, the embedded broker) with 1 and 4 cameras, snapshots on
// (the default: full frames kept) and off, and reports scored frames/s,
// capture-to-publish latency p50/p99 from its stats, and the process's peak
// RSS. The model is the test fixture's (dim 64, 4 blocks, 48 px); the video
// is 640x640 MJPG.
func BenchmarkDaemon(b *testing.B) {
	f := getDaemonFixture(b)
	dir := b.TempDir()
	video := filepath.Join(dir, "line.avi")
	if err := synth.WriteVideo(video, 640, 25, []string{synth.Normal, synth.Missing, synth.Normal}, 10, 1); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		cams      int
		snapshots bool
	}{{1, true}, {1, false}, {4, true}, {4, false}} {
		cams := c.cams
		b.Run(fmt.Sprintf("cameras=%d/snapshots=%v", cams, c.snapshots), func(b *testing.B) {
			for range b.N {
				port := freePort(b)
				var cfg strings.Builder
				cfg.WriteString("cameras:\n")
				for i := range cams {
					fmt.Fprintf(&cfg, "  - {name: cam%d, source: %q, model: %q, loop: true}\n", i, video, f.bundle)
				}
				fmt.Fprintf(&cfg, "mqtt: {broker: embedded, embedded_address: \"127.0.0.1:%d\", stats_interval: 3s, snapshots: %v}\nmetrics: {address: \"off\"}\nstate_directory: %q\n", port, c.snapshots, b.TempDir())
				d := startDaemon(b, cfg.String())
				waitForPort(b, port)
				sub := subscribe(b, fmt.Sprintf("tcp://127.0.0.1:%d", port), "transformaly/stats", fmt.Sprintf("bench-%d", cams))
				// The first stats cover warm-up; measure the third.
				eventually(b, "three stats messages", time.Minute, func() bool { return len(sub.on("transformaly/stats")) >= 3 })
				msgs := sub.on("transformaly/stats")
				var st struct {
					Cameras map[string]struct {
						ProcessedFPS float64 `json:"processed_fps"`
						LatencyP50   float64 `json:"latency_ms_p50"`
						LatencyP99   float64 `json:"latency_ms_p99"`
					} `json:"cameras"`
				}
				json.Unmarshal(msgs[len(msgs)-1].Payload, &st)
				sub.client.Disconnect(50)
				d.stop(b)
				total, p50, p99 := 0.0, 0.0, 0.0
				for _, c := range st.Cameras {
					total += c.ProcessedFPS
					p50, p99 = max(p50, c.LatencyP50), max(p99, c.LatencyP99)
				}
				rss := float64(d.cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
				b.ReportMetric(total, "frames/s")
				b.ReportMetric(p50, "latency-p50-ms")
				b.ReportMetric(p99, "latency-p99-ms")
				b.ReportMetric(rss, "peak-rss-MB")
			}
		})
	}
}

func waitForPort(t testing.TB, port int) {
	t.Helper()
	eventually(t, "the daemon's broker", 30*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
