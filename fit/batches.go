package fit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"syscall"
	"unsafe"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// batchSource packs a trainer's first input for the images at idx: their
// pixels, or the teacher's cached activations. The caller destroys the
// value before asking for the next batch, whose memory it may share.
type batchSource interface {
	batch(idx []int) (onnx.Value, error)
	close() error
}

// imageBatches feed a trainer made FromImages: the teacher runs inside
// every step.
type imageBatches struct {
	images *Images
	buf    []byte
}

func (b *imageBatches) batch(idx []int) (onnx.Value, error) {
	var err error
	if b.buf, err = b.images.Batch(idx, b.buf); err != nil {
		return nil, err
	}
	s := int64(b.images.Size)
	t, err := onnx.NewTensor(onnx.NewShape(int64(len(idx)), s, s, 3), b.buf)
	if err != nil {
		return nil, fmt.Errorf("image batch tensor: %w", err)
	}
	return t, nil
}

func (b *imageBatches) close() error { return nil }

// DefaultActivationCache bounds the teacher's cached activations: about
// 4,800 images of ViT-B/16 at 224 with students on blocks 2..11 (6.7 MB
// each).
const DefaultActivationCache = 32 << 30

// cudaSkip says why a fit on a GPU does not cache (unmeasured there): the
// teacher's forward pass is cheap on it next to copying 40 times the
// image's bytes into every step.
const cudaSkip = "training runs on CUDA, where caching its activations is not worth copying them into each step"

// diskMargin is the free space a spilled activation cache leaves on its
// file system.
const diskMargin = 1 << 30

// activationCache feeds a trainer made FromActivations: the teacher's
// residual stream at the students' boundaries (models.ActivationBoundaries)
// for every image, computed once before the first epoch. Every later epoch
// and validation then runs the students alone: the teacher's forward pass is
// 29% of an uncached epoch's FLOPs for ViT-B with students on blocks 2..11.
type activationCache struct {
	store    *records
	dims     [3]int64 // one image's: boundaries, tokens, dim
	perImage int      // float32 values per image
	buf      []float32
}

func (c *activationCache) batch(idx []int) (onnx.Value, error) {
	n := len(idx) * c.perImage
	if cap(c.buf) < n {
		c.buf = make([]float32, n)
	}
	c.buf = c.buf[:n]
	for k, i := range idx {
		if err := c.store.get(i, float32Bytes(c.buf[k*c.perImage:(k+1)*c.perImage])); err != nil {
			return nil, fmt.Errorf("teacher activations of image %d: %w", i, err)
		}
	}
	t, err := onnx.NewTensor(onnx.NewShape(int64(len(idx)), c.dims[0], c.dims[1], c.dims[2]), c.buf)
	if err != nil {
		return nil, fmt.Errorf("activation batch tensor: %w", err)
	}
	return t, nil
}

func (c *activationCache) close() error { return c.store.close() }

// float32Bytes views float32s as their bytes (host order, as ORT reads
// them), so records are copied straight into the tensor's memory.
func float32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

// batches returns what the trainer is fed: the teacher's activations,
// cached once here when that pays and fits, else the images.
// epochsLeft is how many epochs the fit will run at most.
func (o *Options) batches(ctx context.Context, images *Images, epochsLeft int) (models.TrainingInput, batchSource, error) {
	fallback := &imageBatches{images: images}
	c := o.Teacher.Config
	bounds := models.ActivationBoundaries(o.Blocks)
	perImage := len(bounds) * c.Tokens() * c.Dim
	size := int64(images.Len()) * int64(perImage) * 4
	memoryLeft := o.memoryBudget() - images.store.inMemory()
	limit := o.ActivationCache
	if limit == 0 {
		limit = DefaultActivationCache
	}
	mb := func(b int64) int64 { return b >> 20 }
	skip := func(why string, args ...any) (models.TrainingInput, batchSource, error) {
		slog.Info("the teacher runs in every training step: "+why, args...)
		return models.FromImages, fallback, nil
	}
	switch {
	case limit < 0:
		return skip("its activation cache is turned off")
	case epochsLeft <= 1:
		return skip("with one epoch to run, caching its activations saves nothing")
	case o.Provider == "cuda":
		return skip(cudaSkip)
	case size > limit:
		return skip("caching its activations would need more than the limit (--activation-cache-mb)", "cache_mb", mb(size), "limit_mb", mb(limit))
	case size > memoryLeft:
		free, err := freeBytes(o.spillDir())
		if err != nil {
			return skip("its activations could not be cached", "err", err)
		}
		if free < size+diskMargin {
			return skip("caching its activations would need more disk than is free", "cache_mb", mb(size), "dir", o.spillDir(), "free_mb", mb(free))
		}
	}
	graph, err := models.TeacherActivationsGraph(o.Teacher, o.Blocks)
	if err != nil {
		return 0, nil, err
	}
	r, err := detector.NewRunner(graph, images.Size, []string{models.Activations}, o.runnerOptions())
	if err != nil {
		return 0, nil, fmt.Errorf("teacher activations: %w", err)
	}
	defer r.Close()
	if r.Provider() != "cpu" {
		return skip(cudaSkip)
	}
	store, err := newRecords(images.Len(), perImage*4, memoryLeft, o.spillDir(), "teacher activations")
	if err != nil {
		return 0, nil, err
	}
	cache := &activationCache{store: store, dims: [3]int64{int64(len(bounds)), int64(c.Tokens()), int64(c.Dim)}, perImage: perImage}
	slog.Info("caching the teacher's activations, so epochs run the students alone", "mb", mb(size), "in_memory", store.file == nil)
	if err := o.fillCache(ctx, cache, r, images); err != nil {
		cache.close()
		return 0, nil, err
	}
	return models.FromActivations, cache, nil
}

// fillCache runs the teacher's activations graph over every image.
func (o *Options) fillCache(ctx context.Context, cache *activationCache, r *detector.Runner, images *Images) error {
	var buf []byte
	batches := (images.Len() + o.BatchSize - 1) / o.BatchSize
	for b := range batches {
		if ctx.Err() != nil {
			return fmt.Errorf("%w while caching the teacher's activations", ErrInterrupted)
		}
		idx := make([]int, 0, o.BatchSize)
		for i := b * o.BatchSize; i < min((b+1)*o.BatchSize, images.Len()); i++ {
			idx = append(idx, i)
		}
		var err error
		if buf, err = images.Batch(idx, buf); err != nil {
			return err
		}
		out, err := r.Run(buf, len(idx))
		if err != nil {
			return fmt.Errorf("teacher activations: %w", err)
		}
		for k, i := range idx {
			if err := cache.store.put(i, float32Bytes(out[0].Data[k*cache.perImage:(k+1)*cache.perImage])); err != nil {
				return fmt.Errorf("cache teacher activations: %w", err)
			}
		}
		o.report(Progress{Phase: "teacher", Batch: b + 1, Batches: batches, ValLoss: math.NaN()})
	}
	return nil
}

// freeBytes is the space an unprivileged user may still write in dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}
