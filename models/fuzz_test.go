package models

import (
	"bytes"
	"os"
	"path/filepath"
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
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
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

// FuzzBundleFile: any bytes read as a bundle, metadata included, give an
// error or a bundle that decodes (or is refused) without a panic.
func FuzzBundleFile(f *testing.F) {
	dir := f.TempDir()
	v, err := RandomViT(Config{Dim: 8, Depth: 2, Heads: 2, Patch: 4, ImageSize: 8}, 1)
	if err != nil {
		f.Fatal(err)
	}
	students := []Block{v.Blocks[1]}
	q := func(in int) QuadraticScore {
		s := QuadraticScore{In: in, K: in, W: make([]float32, in*in), B: make([]float32, in)}
		for i := range in {
			s.W[i*in+i] = 1
		}
		return s
	}
	info := BundleInfo{Format: BundleFormat, ImageSize: 8, Blocks: []int{1}, Threshold: 1}
	info.Teacher.Config = v.Config
	m, err := ScoredDetectorGraph(v, []int{1}, students, Scoring{Pretrained: q(8), Student: q(1)}, info, FP32)
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "seed.tfy")
	if err := WriteBundle(path, m); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add(bytes.Replace(seed, []byte(`"image_size":8`), []byte(`"image_size":-9`), 1))
	f.Add(bytes.Replace(seed, []byte(`"blocks":[1]`), []byte(`"blocks":[7]`), 1))
	f.Add(seed[:len(seed)-40])
	file := filepath.Join(dir, "fuzz.tfy")
	f.Fuzz(func(t *testing.T, data []byte) {
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
