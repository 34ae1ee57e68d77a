package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/daemon"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// demoData is the synthetic inspection set and random teacher the demo uses.
type demoData struct {
	teacher   string
	normalDir string // for fitting
	testDir   string // unseen normal parts, for evaluation
	defectDir string
}

// writeDemoData generates a random ViT teacher, normal parts and defective
// parts (every defect kind) under dir.
func writeDemoData(dir string, size, normals, defectsPerKind int) (demoData, error) {
	d := demoData{
		teacher:   filepath.Join(dir, "teacher.safetensors"),
		normalDir: filepath.Join(dir, "normal"),
		testDir:   filepath.Join(dir, "test-normal"),
		defectDir: filepath.Join(dir, "defective"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return d, fmt.Errorf("create demo folder: %w", err)
	}
	v, err := models.RandomViT(models.Config{Dim: 96, Depth: 6, Heads: 4, Patch: 8, ImageSize: size}, 1)
	if err != nil {
		return d, err
	}
	if err := v.SaveTimm(d.teacher); err != nil {
		return d, err
	}
	if _, err := synth.WriteParts(d.normalDir, size, synth.Normal, normals, 1); err != nil {
		return d, err
	}
	if _, err := synth.WriteParts(d.testDir, size, synth.Normal, defectsPerKind*len(synth.Defects), 2); err != nil {
		return d, err
	}
	for i, kind := range synth.Defects {
		if _, err := synth.WriteParts(d.defectDir, size, kind, defectsPerKind, uint64(100+i)); err != nil {
			return d, err
		}
	}
	slog.Info("demo data written", "teacher", d.teacher, "normal", d.normalDir, "defective", d.defectDir)
	return d, nil
}

func demoCommand(fs *pflag.FlagSet) func([]string) error {
	var rt runtimeFlags
	dir := fs.String("dir", "demo", "folder for the generated teacher, images, video, bundle and daemon state")
	size := fs.Int("image-size", 64, "model input size")
	normals := fs.Int("normal", 200, "number of normal images to generate for fitting")
	epochs := fs.Int("epochs", 10, "training epochs")
	port := fs.Int("mqtt-port", 18830, "port of the demo's embedded MQTT broker on 127.0.0.1 (subscribe to transformaly/# there)")
	consolePort := fs.Int("console-port", 18088, "port of the web console (and metrics) on 127.0.0.1")
	keepRunning := fs.Bool("keep-running", false, "after the first pass of the video, keep the line looping with the console until Ctrl-C (asked when run in a terminal)")
	rt.register(fs)
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if err := rt.init(); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		fmt.Println("1/3 Generating a random ViT teacher and synthetic washers (normal, missing, foreign screw, recoloured)...")
		d, err := writeDemoData(*dir, *size, *normals, 10)
		if err != nil {
			return err
		}
		v, err := models.LoadViT(d.teacher, models.LoadOptions{})
		if err != nil {
			return err
		}
		fmt.Printf("2/3 Fitting the students and Gaussians on %d normal images (%d epochs)...\n", *normals, *epochs)
		bundle := filepath.Join(*dir, "demo.tfy")
		os.Remove(fit.StatePath(bundle)) // a demo always starts afresh
		if _, err := fit.Run(ctx, fit.Options{Teacher: v, TeacherPath: d.teacher, NormalDir: d.normalDir, ValFraction: 0.1,
			Epochs: *epochs, BatchSize: 16, LR: 1e-4, Seed: 1, Whitening: 0.9, Quantile: 0.995, Threads: rt.threads,
			Out: bundle, Progress: progressLogger(false)}); err != nil {
			return err
		}
		det, err := detector.Load(bundle, detector.RunnerOptions{Threads: rt.threads})
		if err != nil {
			return err
		}
		rep, _, err := evaluate(det, d.testDir, d.defectDir, det.Info.Threshold, 16)
		det.Close()
		if err != nil {
			return err
		}
		printReport(rep)

		line := demoLine{dir: *dir, bundle: bundle, mqttPort: *port, consolePort: *consolePort, threads: rt.threads}
		fmt.Printf("3/3 Running the daemon on a synthetic inspection video, embedded MQTT broker on 127.0.0.1:%d,\n"+
			"    web console at %s (live view, scores, events, threshold tuning)...\n", *port, line.consoleURL())
		if err := line.run(ctx, false); err != nil {
			return err
		}
		fmt.Printf("\nA random teacher sees only gross defects. Real lines import a pretrained ViT and fit on\n"+
			"their own normal images (see README):\n  transformaly fit --teacher vit_base_patch16_224/model.safetensors --normal good-parts/ --out line.tfy\n"+
			"Demo bundle: %s (transformaly inspect %s); snapshots in %s\n", bundle, bundle, filepath.Join(*dir, "snapshots"))
		if ctx.Err() != nil || !(*keepRunning || askYes(fmt.Sprintf("\nKeep the demo line running, looping, with the console at %s until Ctrl-C? [y/N] ", line.consoleURL()))) {
			return nil
		}
		fmt.Printf("The demo line loops; open %s (changes allowed: this console listens on 127.0.0.1 only). Ctrl-C stops it.\n", line.consoleURL())
		return line.run(ctx, true)
	}
}

// demoVideoKinds is the demo line: 30 parts, three of them defective.
func demoVideoKinds() []string {
	kinds := make([]string, 30)
	for i := range kinds {
		kinds[i] = synth.Normal
	}
	kinds[6], kinds[15], kinds[24] = synth.Missing, synth.Foreign, synth.Recolored
	return kinds
}

// askYes asks a question on a terminal; anything but y or yes, or no
// terminal (make demo in CI, a pipe), is no.
func askYes(question string) bool {
	if st, err := os.Stdin.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	fmt.Print(question)
	answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "y" || answer == "yes"
}

// demoLine is the demo's inspection line: a video, the daemon with the
// embedded broker, and its console on loopback.
type demoLine struct {
	dir, bundle           string
	mqttPort, consolePort int
	threads               int
}

func (l demoLine) consoleURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", l.consolePort) }

// run writes a video and a config and runs the daemon on it, printing what
// a subscriber receives: once through the video, or looping until ctx ends
// (snapshots are then seen in the console, not saved).
func (l demoLine) run(ctx context.Context, loop bool) error {
	dir, bundle, port, threads := l.dir, l.bundle, l.mqttPort, l.threads
	video := filepath.Join(dir, "line.avi")
	if err := synth.WriteVideo(video, 128, 15, demoVideoKinds(), 6, 9); err != nil {
		return err
	}
	snapshots := filepath.Join(dir, "snapshots")
	if err := os.MkdirAll(snapshots, 0o755); err != nil {
		return err
	}
	if loop {
		snapshots = ""
	}
	config := filepath.Join(dir, "config.yaml")
	model, err := filepath.Rel(dir, bundle)
	if err != nil {
		return err
	}
	// Paths relative to the configuration's folder, as the daemon reads them.
	yaml := fmt.Sprintf(`# written by transformaly demo
cameras:
  - {name: line1, source: line.avi, model: %q, pace: true, loop: %t}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d", stats_interval: 5s}
metrics: {address: "127.0.0.1:%d"}
web: {allow_changes: true}
state_directory: state
`, model, loop, port, l.consolePort)
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return daemon.Run(ctx, daemon.Options{ConfigPath: config,
		Override: func(c *daemon.Config) { c.Detector.Threads = threads },
		Ready: func(d *daemon.Daemon) {
			watch, err := newDemoWatcher(fmt.Sprintf("tcp://127.0.0.1:%d", port), snapshots)
			if err != nil {
				slog.Error("demo subscriber", "err", err)
				cancel()
				return
			}
			go func() {
				defer watch.close()
				if loop {
					<-ctx.Done()
					return
				}
				// Stop once the video has played to its end.
				for ctx.Err() == nil {
					time.Sleep(200 * time.Millisecond)
					if st, _ := d.Snapshot(nil, time.Second); st.Cameras["line1"].State == "offline" {
						time.Sleep(500 * time.Millisecond)
						cancel()
					}
				}
			}()
		}})
}
