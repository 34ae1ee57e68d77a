package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// benchBundle fits a small detector (the demo's shape: dim 96, 6 blocks,
// 64 px) on synthetic parts.
func benchBundle(b *testing.B, dir string) string {
	b.Helper()
	if err := ort.Init(""); err != nil {
		b.Fatal(err)
	}
	v, err := models.RandomViT(models.Config{Dim: 96, Depth: 6, Heads: 4, Patch: 8, ImageSize: 64}, 1)
	if err != nil {
		b.Fatal(err)
	}
	v.Checksum = "bench"
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 64, synth.Normal, 64, 1); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, "b.tfy")
	if _, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, ValFraction: 0.2, Epochs: 2,
		BatchSize: 16, LR: 1e-4, Whitening: 0.9, Quantile: 0.995, Out: out}); err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkDaemon runs the whole daemon (file cameras at full speed, the
// embedded broker) for 5 s with 1 and 4 cameras and reports scored
// frames/s and the capture-to-publish latency p50/p99.
func BenchmarkDaemon(b *testing.B) {
	dir := b.TempDir()
	bundle := benchBundle(b, dir)
	video := filepath.Join(dir, "line.avi")
	if err := synth.WriteVideo(video, 640, 25, []string{synth.Normal, synth.Missing, synth.Normal}, 10, 1); err != nil {
		b.Fatal(err)
	}
	for _, cams := range []int{1, 4} {
		b.Run(fmt.Sprintf("cameras=%d", cams), func(b *testing.B) {
			var yaml strings.Builder
			yaml.WriteString("cameras:\n")
			for i := range cams {
				fmt.Fprintf(&yaml, "  - {name: cam%d, source: %q, model: %q, loop: true}\n", i, video, bundle)
			}
			fmt.Fprintf(&yaml, "mqtt: {broker: embedded, embedded_address: \"127.0.0.1:0\"}\nmetrics: {address: \"off\"}\nstate_directory: %q\n", filepath.Join(b.TempDir(), "state"))
			cfg := filepath.Join(b.TempDir(), "config.yaml")
			os.WriteFile(cfg, []byte(yaml.String()), 0o644)
			for range b.N {
				ctx, cancel := context.WithCancel(context.Background())
				var stats Stats
				err := Run(ctx, Options{ConfigPath: cfg, Ready: func(d *Daemon) {
					go func() {
						time.Sleep(time.Second) // warm
						_, before := d.Snapshot(nil, time.Second)
						time.Sleep(5 * time.Second)
						stats, _ = d.Snapshot(before, 5*time.Second)
						cancel()
					}()
				}})
				if err != nil {
					b.Fatal(err)
				}
				total, p50, p99 := 0.0, 0.0, 0.0
				for _, c := range stats.Cameras {
					total += c.ProcessedFPS
					p50, p99 = max(p50, c.LatencyP50), max(p99, c.LatencyP99)
				}
				b.ReportMetric(total, "frames/s")
				b.ReportMetric(p50, "latency-p50-ms")
				b.ReportMetric(p99, "latency-p99-ms")
			}
		})
	}
}
