package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"

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
	dir := fs.String("dir", "demo", "folder for the generated teacher, images and bundle")
	size := fs.Int("image-size", 64, "image and model input size")
	normals := fs.Int("normal", 200, "number of normal images to generate for fitting")
	epochs := fs.Int("epochs", 10, "training epochs")
	rt.register(fs)
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if err := rt.init(); err != nil {
			return err
		}
		d, err := writeDemoData(*dir, *size, *normals, 10)
		if err != nil {
			return err
		}
		v, err := models.LoadViT(d.teacher, models.LoadOptions{})
		if err != nil {
			return err
		}
		bundle := filepath.Join(*dir, "demo.tfy")
		os.Remove(fit.StatePath(bundle)) // a demo always starts afresh
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if _, err := fit.Run(ctx, fit.Options{Teacher: v, TeacherPath: d.teacher, NormalDir: d.normalDir, ValFraction: 0.1,
			Epochs: *epochs, BatchSize: 16, LR: 1e-4, Seed: 1, Whitening: 0.9, Quantile: 0.995, Threads: rt.threads,
			Out: bundle, Progress: progressLogger()}); err != nil {
			return err
		}
		det, err := detector.Load(bundle, detector.RunnerOptions{Threads: rt.threads})
		if err != nil {
			return err
		}
		defer det.Close()
		rep, err := evaluate(det, d.testDir, d.defectDir, 0, 16)
		if err != nil {
			return err
		}
		fmt.Printf("\nDemo: a random ViT teacher (%s) and students fitted on %d synthetic normal washers.\n", v.Describe(), *normals)
		fmt.Printf("Evaluated on unseen normal parts and on missing, foreign-object and recoloured parts:\n")
		printReport(rep)
		fmt.Printf("\nA random teacher sees only gross defects. For real lines, import a pretrained ViT\n"+
			"(see README) and fit on your normal images:\n  transformaly fit --teacher model.safetensors --normal good-parts/ --out line.tfy\n"+
			"Bundle: %s (transformaly inspect %s)\n", bundle, bundle)
		return nil
	}
}
