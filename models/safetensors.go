package models

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// The safetensors format is an 8-byte little-endian header length, a JSON
// header mapping tensor names to dtype, shape and byte offsets, then the raw
// bytes. It is read by hand (no maintained Go library is tagged) because every
// inconsistency must be reported with the name of the tensor at fault, and
// half-precision checkpoints must be widened to float32 on the way in.

// Tensor is one named float32 tensor, row-major.
type Tensor struct {
	Shape []int
	Data  []float32
}

// Size is the number of elements the shape implies.
func (t Tensor) Size() int { return shapeSize(t.Shape) }

func shapeSize(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

type safetensorsEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// maxHeaderBytes bounds the JSON header so a corrupt length cannot make us
// allocate gigabytes (real ViT headers are tens of kilobytes).
const maxHeaderBytes = 100 << 20

// ReadSafetensors reads every tensor of a safetensors file as float32
// (F32, F16 and BF16 are accepted; any other dtype is an error naming the
// tensor), and the header's string metadata.
func ReadSafetensors(path string) (map[string]Tensor, map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open checkpoint: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat checkpoint %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, nil, fmt.Errorf("checkpoint %s is a folder: give the .safetensors file in it", path)
	}
	tensors, meta, err := decodeSafetensors(f, st.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("read safetensors %s: %w", path, err)
	}
	return tensors, meta, nil
}

func decodeSafetensors(r io.ReaderAt, fileSize int64) (map[string]Tensor, map[string]string, error) {
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, nil, fmt.Errorf("file too short for a safetensors header (%d bytes)", fileSize)
	}
	headerLen := binary.LittleEndian.Uint64(lenBuf[:])
	if headerLen > maxHeaderBytes || int64(headerLen) > fileSize-8 {
		return nil, nil, fmt.Errorf("header length %d does not fit in a %d-byte file: not a safetensors file, or truncated", headerLen, fileSize)
	}
	header := make([]byte, headerLen)
	if _, err := r.ReadAt(header, 8); err != nil {
		return nil, nil, fmt.Errorf("read header: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return nil, nil, fmt.Errorf("header is not valid JSON: %w", err)
	}
	dataStart := 8 + int64(headerLen)
	dataLen := fileSize - dataStart
	var meta map[string]string
	if m, ok := raw["__metadata__"]; ok {
		if err := json.Unmarshal(m, &meta); err != nil {
			return nil, nil, fmt.Errorf("header __metadata__ is not a string map: %w", err)
		}
	}
	names := make([]string, 0, len(raw))
	for name := range raw {
		if name != "__metadata__" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	tensors := make(map[string]Tensor, len(names))
	type span struct {
		begin, end int64
		name       string
	}
	var spans []span
	for _, name := range names {
		var e safetensorsEntry
		if err := json.Unmarshal(raw[name], &e); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: bad header entry: %w", name, err)
		}
		width, ok := map[string]int64{"F32": 4, "F16": 2, "BF16": 2}[e.DType]
		if !ok {
			return nil, nil, fmt.Errorf("tensor %q: dtype %q is not supported (want F32, F16 or BF16)", name, e.DType)
		}
		n := int64(1)
		for _, d := range e.Shape {
			if d < 0 {
				return nil, nil, fmt.Errorf("tensor %q: negative dimension in shape %v", name, e.Shape)
			}
			if d > 0 && n > fileSize/int64(d) { // more values than the file has bytes (and no overflow)
				return nil, nil, fmt.Errorf("tensor %q: shape %v holds more values than the %d-byte file", name, e.Shape, fileSize)
			}
			n *= int64(d)
		}
		begin, end := e.Offsets[0], e.Offsets[1]
		if begin < 0 || end < begin || end-begin != n*width {
			return nil, nil, fmt.Errorf("tensor %q: offsets [%d,%d] do not hold %d %s values of shape %v", name, begin, end, n, e.DType, e.Shape)
		}
		if end > dataLen {
			return nil, nil, fmt.Errorf("tensor %q: data ends at byte %d but the file holds only %d data bytes (truncated file?)", name, end, dataLen)
		}
		buf := make([]byte, end-begin)
		if _, err := r.ReadAt(buf, dataStart+begin); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: read data: %w", name, err)
		}
		tensors[name] = Tensor{Shape: append([]int{}, e.Shape...), Data: decodeFloats(buf, e.DType)}
		spans = append(spans, span{begin, end, name})
	}
	// Two tensors sharing bytes were accepted: a damaged or forged file.
	sort.Slice(spans, func(i, j int) bool { return spans[i].begin < spans[j].begin })
	var reach span // the non-empty span reaching furthest so far
	for _, b := range spans {
		if b.begin == b.end {
			continue
		}
		if b.begin < reach.end {
			return nil, nil, fmt.Errorf("tensors %q and %q overlap in the file (bytes %d-%d and %d-%d)", reach.name, b.name, reach.begin, reach.end, b.begin, b.end)
		}
		if b.end > reach.end {
			reach = b
		}
	}
	return tensors, meta, nil
}

func decodeFloats(buf []byte, dtype string) []float32 {
	switch dtype {
	case "F32":
		out := make([]float32, len(buf)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
		}
		return out
	case "BF16":
		out := make([]float32, len(buf)/2)
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(buf[2*i:])) << 16)
		}
		return out
	default: // F16
		out := make([]float32, len(buf)/2)
		for i := range out {
			out[i] = float16ToFloat32(binary.LittleEndian.Uint16(buf[2*i:]))
		}
		return out
	}
}

func float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal
		return float32(math.Copysign(float64(frac)*math.Pow(2, -24), float64(int32(sign)|1)))
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	default:
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	}
}

// WriteSafetensors writes float32 tensors in safetensors layout, names sorted,
// atomically (temporary file then rename).
func WriteSafetensors(path string, tensors map[string]Tensor, metadata map[string]string) error {
	names := make([]string, 0, len(tensors))
	for name := range tensors {
		names = append(names, name)
	}
	sort.Strings(names)
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var offset int64
	for _, name := range names {
		t := tensors[name]
		if t.Size() != len(t.Data) {
			return fmt.Errorf("write safetensors: tensor %q has %d values for shape %v", name, len(t.Data), t.Shape)
		}
		size := int64(4 * len(t.Data))
		header[name] = safetensorsEntry{DType: "F32", Shape: t.Shape, Offsets: [2]int64{offset, offset + size}}
		offset += size
	}
	headerJSON, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("write safetensors: encode header: %w", err)
	}
	// Pad the header with spaces so the data starts 8-byte aligned, as the
	// reference writer does.
	if pad := (8 - len(headerJSON)%8) % 8; pad > 0 {
		headerJSON = append(headerJSON, bytes.Repeat([]byte(" "), pad)...)
	}
	// Streamed: a fit state of a large model is several GB.
	return atomicfile.WriteFunc(path, func(w io.Writer) error {
		if err := binary.Write(w, binary.LittleEndian, uint64(len(headerJSON))); err != nil {
			return err
		}
		if _, err := w.Write(headerJSON); err != nil {
			return err
		}
		chunk := make([]byte, 0, 1<<16)
		for _, name := range names {
			for _, x := range tensors[name].Data {
				if len(chunk) == cap(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return err
					}
					chunk = chunk[:0]
				}
				chunk = binary.LittleEndian.AppendUint32(chunk, math.Float32bits(x))
			}
		}
		_, err := w.Write(chunk)
		return err
	})
}
