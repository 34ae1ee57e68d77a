package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/modbus"
	"github.com/transformaly/transformaly/models"
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

// BenchmarkTriggerToCoil measures what a PLC sees: from its rising edge on
// the Trigger coil to the result counter changing, polled every 0.5 ms by a
// Modbus TCP client, 50 parts per run (p50 and p99 ms), on a paced 25 fps
// camera, one frame a part: the latency includes waiting for the next frame
// (up to 40 ms). fixture: the e2e bundle (dim 64, 4 blocks, 48 px, with its
// patch space); vit-s16: a ViT-S/16-shaped teacher at 224 (random weights,
// fitted briefly: the latency does not depend on what it learned), run at
// fp32 and at int8 in one run.
func BenchmarkTriggerToCoil(b *testing.B) {
	b.Run("fixture", func(b *testing.B) {
		f := getDaemonFixture(b)
		triggerToCoil(b, f.bundle, f.loop, models.FP32)
	})
	b.Run("vit-s16", func(b *testing.B) {
		dir := b.TempDir()
		teacher, normal, bundle, video := filepath.Join(dir, "vit-s16.safetensors"), filepath.Join(dir, "normal"), filepath.Join(dir, "vit-s16.tfy"), filepath.Join(dir, "loop.avi")
		if _, err := synth.WriteParts(normal, 224, synth.Normal, 24, 1); err != nil {
			b.Fatal(err)
		}
		if err := synth.WriteVideo(video, 224, 25, []string{synth.Normal, synth.Missing}, 6, 4); err != nil {
			b.Fatal(err)
		}
		for _, args := range [][]string{
			{"random-vit", "--dim", "384", "--depth", "12", "--heads", "6", "--patch", "16", "--image-size", "224", "--out", teacher},
			{"fit", "--teacher", teacher, "--normal", normal, "--out", bundle, "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25"},
		} {
			if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
		for _, precision := range []string{models.FP32, models.INT8} {
			b.Run(precision, func(b *testing.B) { triggerToCoil(b, bundle, video, precision) })
		}
	})
}

func triggerToCoil(b *testing.B, bundle, video, precision string) {
	for range b.N {
		modbusPort := freePort(b)
		d := startDaemon(b, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true, trigger: {frames: 1, deadline: 2s}}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "off"}
modbus: {address: "127.0.0.1:%d"}
detector: {max_batch: 1, precision: %s}
state_directory: %q
`, video, bundle, freePort(b), modbusPort, precision, b.TempDir()))
		plc, counter := connectPLC(b, modbusPort)
		var lat []float64
		for range 50 {
			before := counter()
			plc.WriteCoil(modbus.CoilTrigger, false)
			start := time.Now()
			if err := plc.WriteCoil(modbus.CoilTrigger, true); err != nil {
				b.Fatal(err)
			}
			for counter() == before {
				if time.Since(start) > 5*time.Second {
					b.Fatal("no result within 5 s")
				}
				time.Sleep(500 * time.Microsecond)
			}
			lat = append(lat, float64(time.Since(start).Microseconds())/1000)
		}
		plc.Close()
		d.stop(b)
		slices.Sort(lat)
		b.ReportMetric(lat[len(lat)/2], "p50-ms")
		b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
	}
}

// BenchmarkTriggerMethodToNotification: an OPC UA client (the gopcua
// client, Basic256Sha256 with SignAndEncrypt, a user's password) calls
// line1's Trigger method and waits for the new result's LastResult
// notifications (PartId, Verdict, ResultCounter) of a subscription
// publishing every 10 ms; 50 parts a run (p50 and p99 ms), on the same
// paced 25 fps camera with one frame a part as BenchmarkTriggerToCoil's
// fixture run, so the two compare in one run:
// -bench 'TriggerToCoil/fixture|TriggerMethodToNotification'.
func BenchmarkTriggerMethodToNotification(b *testing.B) {
	f := getDaemonFixture(b)
	for range b.N {
		line, section := opcuaSetup(b, "")
		d := startDaemon(b, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true, trigger: {frames: 1, deadline: 2s}}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "off"}
%s
detector: {max_batch: 1}
state_directory: %q
`, f.loop, f.bundle, freePort(b), section, b.TempDir()))
		c, node := line.scada(b)
		w := watchResults(b, c, node)
		var lat []float64
		for i := range 50 {
			start := time.Now()
			if _, err := triggerPart(c, node, strconv.Itoa(i)); err != nil {
				b.Fatal(err)
			}
			w.wait(b, i+2)
			lat = append(lat, float64(time.Since(start).Microseconds())/1000)
		}
		c.Close(context.Background())
		d.stop(b)
		slices.Sort(lat)
		b.ReportMetric(lat[len(lat)/2], "p50-ms")
		b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
	}
}

// BenchmarkConsoleLiveViews: 20 browsers' live views (MJPEG with the
// anomaly map, 4 frames a second each) against none, on a daemon scoring
// one unpaced 640x640 camera as fast as the CPU allows, in three rounds of
// 20 s without and 20 s with the views (this machine's speed drifts by
// more than the views cost, so the two alternate): scored frames/s of both
// and their ratio, and the daemon's resident memory after the first and
// the last round of views (flat: frames are shared, not queued per
// viewer).
func BenchmarkConsoleLiveViews(b *testing.B) {
	f := getDaemonFixture(b)
	video := filepath.Join(b.TempDir(), "line.avi")
	if err := synth.WriteVideo(video, 640, 25, []string{synth.Normal, synth.Missing, synth.Normal}, 10, 1); err != nil {
		b.Fatal(err)
	}
	const phase, rounds, viewers = 20 * time.Second, 3, 20
	for range b.N {
		port := freePort(b)
		d := startDaemon(b, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "127.0.0.1:%d"}
state_directory: %q
`, video, f.bundle, freePort(b), port, b.TempDir()))
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		scored := func() float64 {
			resp, err := http.Get(base + "/metrics")
			if err != nil {
				return math.NaN()
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), `transformaly_frames_scored_total{camera="line1"} `); ok {
					n, _ := strconv.ParseFloat(v, 64)
					return n
				}
			}
			return math.NaN()
		}
		rss := func() float64 {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
			for l := range strings.SplitSeq(string(data), "\n") {
				if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
					kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
					return kb / 1024
				}
			}
			return math.NaN()
		}
		eventually(b, "frames scored", time.Minute, func() bool { return scored() > 100 })
		// frames counts what is scored during one phase, with or without
		// the viewers; received counts the frames they got.
		var received atomic.Int64
		frames := func(watch bool) float64 {
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range viewers * btoi(watch) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/cameras/line1/live.mjpeg?overlay=1", nil)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						return
					}
					defer resp.Body.Close()
					_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
					mr := multipart.NewReader(resp.Body, params["boundary"])
					for {
						part, err := mr.NextPart()
						if err != nil {
							return
						}
						io.Copy(io.Discard, part)
						received.Add(1)
					}
				}()
			}
			n0 := scored()
			time.Sleep(phase)
			n := scored() - n0
			cancel()
			wg.Wait()
			return n
		}
		var none, watched float64
		var rssFirst, rssLast float64
		for r := range rounds {
			none += frames(false)
			watched += frames(true)
			if r == 0 {
				rssFirst = rss()
			}
		}
		rssLast = rss()
		d.stop(b)
		seconds := rounds * phase.Seconds()
		b.ReportMetric(none/seconds, "frames/s-no-views")
		b.ReportMetric(watched/seconds, "frames/s-20-views")
		b.ReportMetric(watched/none, "ratio")
		b.ReportMetric(rssFirst, "rss-first-MB")
		b.ReportMetric(rssLast, "rss-last-MB")
		b.ReportMetric(float64(received.Load())/viewers/seconds, "view-frames/s")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
