package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// teacherFlags name a ViT checkpoint and how to read it.
type teacherFlags struct {
	path      string
	imageSize int
	heads     int
	mean, std []float64
}

func (t *teacherFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.path, "teacher", "", "ViT checkpoint: timm model.safetensors or Hugging Face ViT safetensors (required)")
	fs.IntVar(&t.imageSize, "image-size", 0, "run the ViT at this input size, resizing its position embedding (default: the checkpoint's own)")
	fs.IntVar(&t.heads, "heads", 0, "attention heads (default: from config.json (Hugging Face's num_attention_heads or timm's architecture name) or the checkpoint's metadata, else the usual for the width)")
	fs.Float64SliceVar(&t.mean, "mean", nil, "input normalisation mean, R,G,B of 0..1 pixels, e.g. 0.485,0.456,0.406 (ImageNet's; with --std; default: the checkpoint's config.json pretrained_cfg or preprocessor_config.json, else 0.5)")
	fs.Float64SliceVar(&t.std, "std", nil, "input normalisation std, R,G,B, e.g. 0.229,0.224,0.225 (with --mean)")
}

func (t *teacherFlags) load() (*models.ViT, error) {
	if t.path == "" {
		return nil, usageError("--teacher is required")
	}
	if t.imageSize < 0 || t.heads < 0 {
		return nil, usageError("--image-size and --heads must not be negative (0: the checkpoint's own)")
	}
	opts := models.LoadOptions{Heads: t.heads, ImageSize: t.imageSize}
	if t.mean != nil || t.std != nil {
		if len(t.mean) != 3 || len(t.std) != 3 {
			return nil, usageError("--mean and --std go together, three values each (R,G,B)")
		}
		n := models.Normalization{Rescale: 1.0 / 255, Source: "--mean and --std"}
		copy(n.Mean[:], t.mean)
		copy(n.Std[:], t.std)
		if err := n.Check(); err != nil {
			return nil, usageError("--mean/--std: %v", err)
		}
		opts.Input = &n
	}
	v, err := models.LoadViT(t.path, opts)
	if err != nil {
		return nil, err
	}
	slog.Info("teacher loaded", "path", t.path, "layout", v.Layout, "config", v.Describe(), "parameters", v.Parameters(), "heads_from", v.HeadsSource)
	n := v.InputNormalization()
	slog.Info("teacher input normalisation", "mean", n.Mean, "std", n.Std, "rescale", n.Rescale, "from", n.Source)
	if n.InputSize > 0 && n.InputSize != v.ImageSize || n.CropPct > 0 && n.CropPct != 1 {
		slog.Info("the checkpoint was evaluated otherwise: transformaly resizes each (camera-cropped) frame whole to the image size, without a centre crop",
			"checkpoint_input_size", n.InputSize, "checkpoint_crop_pct", n.CropPct, "checkpoint_interpolation", n.Interpolation, "image_size", v.ImageSize)
	}
	return v, nil
}

func embedCommand(fs *pflag.FlagSet) func([]string) error {
	var teacher teacherFlags
	var rt runtimeFlags
	teacher.register(fs)
	asJSON := fs.Bool("json", false, `print one JSON object a line: {"path": ..., "embedding": [...]}`)
	batch := fs.Int("batch-size", 8, "images per ONNX Runtime call")
	rt.register(fs)
	return func(args []string) error {
		if len(args) == 0 {
			return usageError("no images given")
		}
		if *batch < 1 {
			return usageError("--batch-size must be at least 1")
		}
		images, others, err := imageArgs(args)
		if err != nil {
			return err
		}
		// Anything else is tried as an image, and named if unreadable.
		images = append(images, others...)
		v, err := teacher.load()
		if err != nil {
			return err
		}
		if err := rt.init(); err != nil {
			return err
		}
		graph, err := models.TeacherGraph(v)
		if err != nil {
			return err
		}
		runner, err := detector.NewRunner(graph, v.ImageSize, []string{models.OutputEmbedding}, detector.RunnerOptions{Threads: rt.threads})
		if err != nil {
			return err
		}
		defer runner.Close()
		out := bufio.NewWriter(os.Stdout)
		defer out.Flush()
		failed, err := imageBatches(images, v.ImageSize, nil, false, *batch, func(paths []string, pixels []byte, _ []image.Point, _ []*capture.View) error {
			res, err := runner.Run(pixels, len(paths))
			if err != nil {
				return err
			}
			for i, p := range paths {
				if err := printEmbedding(out, p, res[0].Data[i*v.Dim:(i+1)*v.Dim], *asJSON); err != nil {
					return err
				}
			}
			return nil
		})
		return unreadable(failed, len(images), err)
	}
}

// outputPath is a file name as the output lines carry it: as it is,
// unless a newline or tab in it would split the text line, or bytes that
// are not UTF-8 would be replaced in JSON (two names would then read the
// same): then Go-quoted, so strconv.Unquote gives the name back.
func outputPath(p string, forJSON bool) string {
	if !utf8.ValidString(p) || (!forJSON && strings.ContainsFunc(p, unicode.IsControl)) {
		return strconv.Quote(p)
	}
	return p
}

func printEmbedding(out *bufio.Writer, path string, emb []float32, asJSON bool) error {
	if asJSON {
		line, err := json.Marshal(struct {
			Path      string    `json:"path"`
			Embedding []float32 `json:"embedding"`
		}{outputPath(path, true), emb})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", line)
		return err
	}
	vals := make([]string, len(emb))
	for i, x := range emb {
		vals[i] = strconv.FormatFloat(float64(x), 'g', 7, 32)
	}
	_, err := fmt.Fprintf(out, "%s\t%s\n", outputPath(path, false), strings.Join(vals, " "))
	return err
}

func randomViTCommand(fs *pflag.FlagSet) func([]string) error {
	var c models.Config
	fs.IntVar(&c.Dim, "dim", 64, "embedding width")
	fs.IntVar(&c.Depth, "depth", 6, "number of transformer blocks")
	fs.IntVar(&c.Heads, "heads", 4, "attention heads (must divide --dim)")
	fs.IntVar(&c.MLPDim, "mlp-dim", 0, "MLP hidden width (default 4 x dim)")
	fs.IntVar(&c.Patch, "patch", 8, "patch size in pixels")
	fs.IntVar(&c.ImageSize, "image-size", 64, "input image size in pixels (a multiple of --patch)")
	fs.IntVar(&c.Registers, "registers", 0, "register tokens after the class token (written in timm's DINOv2-with-registers layout)")
	layerScale := fs.Bool("layer-scale", false, "per-channel LayerScale in every block, as DINOv2 and DeiT-III have")
	seed := fs.Uint64("seed", 1, "random seed: the same seed gives the same weights")
	out := fs.String("out", "", "output file, e.g. random-vit.safetensors (required)")
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if *out == "" {
			return usageError("--out is required")
		}
		if c.Registers < 0 {
			return usageError("--registers %d: 0 or more", c.Registers)
		}
		v, err := models.RandomViT(c, *seed)
		if err != nil {
			return usageError("%v", err)
		}
		if *layerScale {
			v.RandomLayerScale(*seed)
		}
		if err := v.SaveTimm(*out); err != nil {
			return err
		}
		slog.Info("random ViT written", "path", *out, "config", v.Describe(), "parameters", v.Parameters())
		return nil
	}
}
