// Command transformaly tells how far camera frames are from "normal" with a
// ViT teacher and student blocks (Transformaly, Cohen & Avidan, CVPR-W 2022).
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

// command is one subcommand: its flags are registered on fs by setup, which
// returns the function to run with the positional arguments.
type command struct {
	name    string
	args    string // synopsis of positional arguments
	summary string
	setup   func(fs *pflag.FlagSet) func(args []string) error
}

// commands are listed in --help in this order.
var commands = []command{
	{"run", "", "run the daemon: cameras in, scores and anomaly events out over MQTT", runCommand},
	{"collect", "", "save frames of a configured camera (its crop, rotation and flips applied) as normal images to fit on", collectCommand},
	{"fit", "", "train the students on normal images and write a detector bundle", fitCommand},
	{"model", "ACTION [CANDIDATE]", "on a running daemon, through its console's API: show a camera's bundle and candidates (status), refit, cancel, compare, shadow, unshadow, promote or rollback", modelCommand},
	{"score", "IMAGE|FOLDER|VIDEO...", "score images (folders: every image in them), or every frame of video recordings, with a bundle", scoreCommand},
	{"eval", "", "measure a bundle's AUROC on labelled normal and anomalous images", evalCommand},
	{"inspect", "BUNDLE", "print a bundle's metadata", inspectCommand},
	{"doctor", "", "say which execution providers (TensorRT, CUDA, CPU) work here, and why the others do not", doctorCommand},
	{"embed", "IMAGE|FOLDER...", "print the teacher's CLS embedding of each image (folders: every image in them)", embedCommand},
	{"demo", "", "the whole product on synthetic parts: random teacher, fit, eval, then the daemon on a video with an embedded broker", demoCommand},
	{"random-vit", "", "write a seeded random ViT checkpoint (timm layout) for tests and demos", randomViTCommand},
	{"synth", "", "write synthetic inspection images or a video (the demo's washers) to try and measure fits and the daemon", synthCommand},
}

// errUsage marks errors whose message is the whole story (bad flags), so
// main prints it without a stack of context.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if len(argv) == 0 || argv[0] == "-h" || argv[0] == "--help" || argv[0] == "help" {
		printUsage(stdout)
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	if argv[0] == "--version" || argv[0] == "version" {
		fmt.Fprintln(stdout, "transformaly", models.Version)
		return 0
	}
	for _, c := range commands {
		if c.name != argv[0] {
			continue
		}
		fs := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.SortFlags = false
		runFn := c.setup(fs)
		usage := func(w io.Writer) {
			fmt.Fprintf(w, "Usage: transformaly %s [flags] %s\n\n%s.\n\nFlags:\n%s", c.name, c.args, upperFirst(c.summary), fs.FlagUsages())
		}
		fs.Usage = func() {} // printed below, to stdout for --help and stderr for mistakes
		if err := fs.Parse(argv[1:]); err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				usage(stdout)
				return 0
			}
			fmt.Fprintf(stderr, "transformaly %s: %v\n\n", c.name, err)
			usage(stderr)
			return 2
		}
		if err := runFn(fs.Args()); err != nil {
			if errors.Is(err, errUsage) {
				fmt.Fprintf(stderr, "transformaly %s: %s\n", c.name, strings.TrimSuffix(err.Error(), ": "+errUsage.Error()))
				return 2
			}
			fmt.Fprintf(stderr, "transformaly %s: %v\n", c.name, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "transformaly: unknown command %q (see transformaly --help)\n", argv[0])
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, `transformaly %s: scores camera frames by how far they are from "normal".

Usage: transformaly <command> [flags] [arguments]

Commands:
`, models.Version)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "transformaly <command> --help" for a command's flags.
`)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// usageError builds an errUsage-wrapped error.
func usageError(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, errUsage)...)
}

// runtimeFlags are the settings every command that runs models takes:
// ONNX Runtime's, and the largest image file it will decode.
type runtimeFlags struct {
	library string
	threads int
}

func (r *runtimeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&r.library, "ort-lib", "", "path of libonnxruntime.so (default: $"+ort.EnvLibrary+", then next to the binary, .deps/onnxruntime, /usr/local/lib, /usr/lib)")
	fs.IntVar(&r.threads, "threads", 0, "ONNX Runtime intra-op threads (0: one per core)")
	fs.IntVar(&capture.MaxImagePixels, "max-image-pixels", capture.MaxImagePixels, "largest image file (width x height) decoded; larger ones are refused from their header, before any decoder runs")
}

func (r *runtimeFlags) init() error {
	if capture.MaxImagePixels < 1 {
		return usageError("--max-image-pixels must be at least 1")
	}
	if r.threads < 0 || r.threads > ort.MaxThreads {
		return usageError("--threads %d: must be 0 (one per core) to %d", r.threads, ort.MaxThreads)
	}
	return ort.Init(r.library)
}
