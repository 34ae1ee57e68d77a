package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

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
	dir := fs.String("dir", "demo", "folder for the generated teacher and images")
	size := fs.Int("image-size", 64, "image and model input size")
	normals := fs.Int("normal", 200, "number of normal images to generate")
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		d, err := writeDemoData(*dir, *size, *normals, 10)
		if err != nil {
			return err
		}
		fmt.Printf("Generated a random ViT teacher and synthetic parts:\n  teacher   %s\n  normal    %s\n  defective %s\n", d.teacher, d.normalDir, d.defectDir)
		fmt.Printf("Next: transformaly embed --teacher %s --json %s/*.png\n", d.teacher, d.defectDir)
		return nil
	}
}
