package models

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzSafetensors: any bytes read as a checkpoint give an error or tensors
// whose data fills their shape; never a panic or an allocation the file
// does not back.
func FuzzSafetensors(f *testing.F) {
	dir := f.TempDir()
	v, err := RandomViT(Config{Dim: 8, Depth: 1, Heads: 2, Patch: 4, ImageSize: 8}, 1)
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "seed.safetensors")
	if err := v.SaveTimm(path); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed[:min(len(seed), 400)])
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}    "))
	f.Fuzz(func(t *testing.T, data []byte) {
		tensors, _, err := decodeSafetensors(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for name, tensor := range tensors {
			if len(tensor.Data) != tensor.Size() {
				t.Errorf("tensor %q: %d values for shape %v", name, len(tensor.Data), tensor.Shape)
			}
		}
	})
}

// FuzzBundleMetadata: whatever a bundle's metadata says (hand-edited or
// damaged), reading and decoding the bundle ends in an error or a model,
// never a panic.
func FuzzBundleMetadata(f *testing.F) {
	dir := f.TempDir()
	v, err := RandomViT(Config{Dim: 8, Depth: 2, Heads: 2, Patch: 4, ImageSize: 8}, 1)
	if err != nil {
		f.Fatal(err)
	}
	q := func(in int) QuadraticScore {
		s := QuadraticScore{In: in, K: in, W: make([]float32, in*in), B: make([]float32, in)}
		for i := range in {
			s.W[i*in+i] = 1
		}
		return s
	}
	info := BundleInfo{Format: BundleFormat, ImageSize: 8, Blocks: []int{1}, Threshold: 1}
	info.Teacher.Config = v.Config
	m, err := ScoredDetectorGraph(v, []int{1}, []Block{v.Blocks[1]}, Scoring{Pretrained: q(8), Student: q(1)}, info, FP32)
	if err != nil {
		f.Fatal(err)
	}
	var meta *string
	for _, p := range m.MetadataProps {
		if p.GetKey() == BundleMetadataKey {
			meta = p.Value
		}
	}
	seed := *meta
	f.Add(seed)
	f.Add(strings.Replace(seed, `"image_size":8`, `"image_size":-9`, 1))
	f.Add(strings.Replace(seed, `"blocks":[1]`, `"blocks":[7]`, 1))
	f.Add(strings.Replace(seed, `"dim":8`, `"dim":800000000`, 1))
	f.Add(`{"format":2}`)
	file := filepath.Join(dir, "fuzz.tfy")
	f.Fuzz(func(t *testing.T, metadata string) {
		*meta = metadata
		// Inline weights and no fsync (WriteBundle's): the reader takes
		// both layouts, and a sync per execution stalled the fuzzer.
		data, err := Serialize(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		info, mf, err := ReadBundle(file)
		if err != nil {
			return
		}
		DecodeBundle(info, mf)
	})
}
