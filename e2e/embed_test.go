package e2e

import (
	"bufio"
	"encoding/json"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
)

// writePNG writes a random RGB image and returns its packed RGB bytes.
func writePNG(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	rgb := make([]byte, 0, size*size*3)
	for y := range size {
		for x := range size {
			c := color.NRGBA{uint8(rng.IntN(256)), uint8(rng.IntN(256)), uint8(rng.IntN(256)), 255}
			img.SetNRGBA(x, y, c)
			rgb = append(rgb, c.R, c.G, c.B)
		}
	}
	savePNG(t, path, img)
	return rgb
}

func TestEmbedMatchesReference(t *testing.T) {
	dir := t.TempDir()
	teacher := filepath.Join(dir, "vit.safetensors")
	r := runBinary(t, nil, "random-vit", "--dim", "64", "--depth", "4", "--heads", "4", "--patch", "8", "--image-size", "32", "--seed", "5", "--out", teacher)
	if r.code != 0 {
		t.Fatalf("random-vit failed: %s", r.stderr)
	}
	v, err := models.LoadViT(teacher, models.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	var pixels [][]byte
	for i := range 3 {
		p := filepath.Join(dir, "img"+string(rune('a'+i))+".png")
		pixels = append(pixels, writePNG(t, p, 32, uint64(i)))
		paths = append(paths, p)
	}
	r = runBinary(t, nil, append([]string{"embed", "--teacher", teacher, "--json", "--batch-size", "2"}, paths...)...)
	if r.code != 0 {
		t.Fatalf("embed failed (%d): %s", r.code, r.stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		var line struct {
			Path      string    `json:"path"`
			Embedding []float64 `json:"embedding"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %d is not JSON: %v", n, err)
		}
		if line.Path != paths[n] {
			t.Errorf("line %d path %s, want %s", n, line.Path, paths[n])
		}
		want := vitref.Forward(v, pixels[n]).Embedding
		maxDiff, maxRef := 0.0, 0.0
		for i := range want {
			maxDiff = math.Max(maxDiff, math.Abs(line.Embedding[i]-want[i]))
			maxRef = math.Max(maxRef, math.Abs(want[i]))
		}
		if len(line.Embedding) != len(want) || maxDiff/maxRef > 1e-4 {
			t.Errorf("%s: embedding of %d values differs from the reference by %.2g relative", line.Path, len(line.Embedding), maxDiff/maxRef)
		}
		n++
	}
	if n != len(paths) {
		t.Fatalf("embed printed %d lines for %d images", n, len(paths))
	}
}

func TestEmbedSkipsUnreadableImages(t *testing.T) {
	dir := t.TempDir()
	teacher := oneBlockTeacher(t, dir)
	good := filepath.Join(dir, "good.png")
	writePNG(t, good, 40, 1)
	data, _ := os.ReadFile(good)
	truncated := filepath.Join(dir, "truncated.png")
	os.WriteFile(truncated, data[:len(data)/2], 0o644)
	// A 30-byte BMP header claiming 40000x40000 made OpenCV abort the process.
	bomb := filepath.Join(dir, "bomb.bmp")
	header := []byte("BM\x46\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00\x40\x9c\x00\x00\x40\x9c\x00\x00\x01\x00\x18\x00")
	os.WriteFile(bomb, append(header, make([]byte, 40)...), 0o644)
	r := runBinary(t, nil, "embed", "--teacher", teacher, "--json", good, truncated, filepath.Join(dir, "missing.png"), bomb)
	if r.code != 1 {
		t.Errorf("exit code %d, want 1", r.code)
	}
	if got := strings.Count(r.stdout, "\n"); got != 1 {
		t.Errorf("%d embeddings printed, want 1 (the good image)", got)
	}
	for _, want := range []string{"truncated.png", "missing.png", "bomb.bmp: 40000x40000 pixels", "3 of 4 images could not be read"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, r.stderr)
		}
	}
}

func TestMissingOrWrongRuntimeLibrary(t *testing.T) {
	dir := t.TempDir()
	teacher := oneBlockTeacher(t, dir)
	img := filepath.Join(dir, "a.png")
	writePNG(t, img, 32, 1)
	notALibrary := filepath.Join(dir, "libonnxruntime.so.1")
	os.WriteFile(notALibrary, []byte("not an ELF file"), 0o644)
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"flag to a missing file", nil, []string{"--ort-lib", "/nonexistent/libonnxruntime.so"}, "ONNX Runtime library not found (given by --ort-lib); looked for: /nonexistent/libonnxruntime.so"},
		{"environment to a missing file", []string{"TRANSFORMALY_ORT_LIB=/nope/lib.so"}, nil, "looked for: /nope/lib.so"},
		{"not a library", nil, []string{"--ort-lib", notALibrary}, "load ONNX Runtime library " + notALibrary},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runBinary(t, c.env, append([]string{"embed", "--teacher", teacher, img}, c.args...)...)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			last := lines[len(lines)-1]
			if r.code != 1 || !strings.Contains(last, c.want) {
				t.Errorf("exit %d, last line %q; want exit 1 and %q", r.code, last, c.want)
			}
		})
	}
}

func TestHelpExplainsEveryCommand(t *testing.T) {
	r := runBinary(t, nil, "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "embed") || !strings.Contains(r.stdout, "random-vit") {
		t.Fatalf("--help: exit %d\n%s", r.code, r.stdout)
	}
	r = runBinary(t, nil, "embed", "--help")
	for _, flag := range []string{"--teacher", "--image-size", "--json", "--ort-lib"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("embed --help does not explain %s", flag)
		}
	}
	if r = runBinary(t, nil, "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("unknown command: exit %d, %q", r.code, r.stderr)
	}
}

// ONNX Runtime's telemetry is off: no database or device id under
// ~/.cache/Microsoft, and no /tmp/mat-debug-<pid>.log (every process made
// one).
func TestNoRuntimeTelemetry(t *testing.T) {
	dir := t.TempDir()
	teacher := oneBlockTeacher(t, dir)
	img := filepath.Join(dir, "a.png")
	writePNG(t, img, 32, 1)
	home := t.TempDir()
	before, _ := filepath.Glob("/tmp/mat-debug-*.log")
	if r := runBinary(t, []string{"HOME=" + home}, "embed", "--teacher", teacher, img); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if _, err := os.Stat(filepath.Join(home, ".cache", "Microsoft")); err == nil {
		t.Error("ONNX Runtime wrote its telemetry store under ~/.cache/Microsoft")
	}
	after, _ := filepath.Glob("/tmp/mat-debug-*.log")
	if len(after) > len(before) {
		t.Errorf("new telemetry logs in /tmp: %v", after)
	}
}

// File names with a newline or bytes that are not UTF-8 keep one output
// line per image and come back Go-quoted (they split lines, and JSON
// replaced the bytes, so two names could read the same).
func TestOddFileNamesInOutputs(t *testing.T) {
	dir := t.TempDir()
	teacher := oneBlockTeacher(t, dir)
	names := []string{filepath.Join(dir, "two\nlines.png"), filepath.Join(dir, "latin1-\xe9.png")}
	for i, n := range names {
		writePNG(t, n, 32, uint64(i))
	}
	r := runBinary(t, nil, "embed", "--teacher", teacher, names[0], names[1])
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 {
		t.Fatalf("exit %d, %d lines for 2 images:\n%s\n%s", r.code, len(lines), r.stdout, r.stderr)
	}
	for i, l := range lines {
		got, err := strconv.Unquote(strings.SplitN(l, "\t", 2)[0])
		if err != nil || got != names[i] {
			t.Errorf("line %d names %q (%v), want %q quoted", i, got, err, names[i])
		}
	}
	r = runBinary(t, nil, "embed", "--json", "--teacher", teacher, names[1])
	var line struct{ Path string }
	if err := json.Unmarshal([]byte(r.stdout), &line); err != nil {
		t.Fatal(err)
	}
	if got, err := strconv.Unquote(line.Path); err != nil || got != names[1] {
		t.Errorf("JSON path %q, want %q quoted", line.Path, names[1])
	}
}

// oneBlockTeacher writes a random one-block ViT for 32 px images into dir.
func oneBlockTeacher(t *testing.T, dir string) string {
	t.Helper()
	teacher := filepath.Join(dir, "vit.safetensors")
	if r := runBinary(t, nil, "random-vit", "--depth", "1", "--image-size", "32", "--out", teacher); r.code != 0 {
		t.Fatal(r.stderr)
	}
	return teacher
}
