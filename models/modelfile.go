package models

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/models/onnxpb"
)

// Model files keep their weights outside the protobuf: a protobuf message
// (and so an ONNX model held in one) cannot exceed 2 GiB, and a ViT-L
// teacher with its students is 2.3 GB in float32. ONNX's answer is
// "external data": initializers that name a file, an offset and a length.
// To keep a model (a bundle above all) one file, that file is the model
// itself. It opens with one protobuf field that ModelProto does not define
// (number weightsField, which every protobuf parser skips) holding the raw
// weights, and the ModelProto's own fields follow, so the whole file still
// parses as the ModelProto; each large initializer points at its bytes
// inside that first field by absolute file offset. Any ONNX tool that opens
// the file by its path finds them, until it is renamed. (The detector hands
// ONNX Runtime the model inline, or a private copy past 2 GiB: see
// detector.NewFileRunner.)

const (
	weightsField protowire.Number = 1000
	// externalMin is the smallest initializer kept in the weights field
	// (ONNX's own default threshold); smaller ones stay inline.
	externalMin = 1024
	// weightAlign aligns each initializer's bytes in the file, for
	// memory-mapped reads straight into vector instructions.
	weightAlign = 64
	// maxProtoSize is protobuf's limit on one serialised message.
	maxProtoSize = 1<<31 - 1
	// weightsHashKey is the metadata entry holding the SHA-256 of the
	// weights field's content: ONNX Runtime would run damaged weights
	// without a word, so ReadModelFile checks them.
	weightsHashKey = "transformaly.weights_sha256"
)

// ErrTooLarge is Serialize's error for a model past protobuf's 2 GiB limit.
var ErrTooLarge = errors.New("over protobuf's 2 GiB limit for a model in memory")

// Serialize encodes a model to hand to ONNX Runtime from memory. A model over
// protobuf's 2 GiB limit cannot travel that way (ErrTooLarge);
// WriteModelFile stores any size.
func Serialize(m *onnxpb.ModelProto) ([]byte, error) {
	if n := proto.Size(m); n > maxProtoSize {
		return nil, fmt.Errorf("serialise ONNX graph %s: %.2f GB is %w (a smaller teacher or fewer --blocks fit)",
			m.GetGraph().GetName(), float64(n)/1e9, ErrTooLarge)
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("serialise ONNX graph %s: %w", m.GetGraph().GetName(), err)
	}
	return data, nil
}

// WriteModelFile writes m atomically as one file with its large initializers
// stored as external data inside it (see above). m is left as it was.
func WriteModelFile(path string, m *onnxpb.ModelProto) error {
	var external []*onnxpb.TensorProto
	for _, t := range m.GetGraph().GetInitializer() {
		if len(t.GetRawData()) >= externalMin {
			external = append(external, t)
		}
	}
	// The weights field's header (tag and length) comes before the first
	// offset and its length depends on the padding those offsets need: try
	// header sizes until the layout agrees with itself.
	tag := protowire.SizeTag(weightsField)
	header := tag + 1
	var offsets []int64
	var end int64
	for {
		offsets, end = offsets[:0], int64(header)
		for _, t := range external {
			end = (end + weightAlign - 1) / weightAlign * weightAlign
			offsets = append(offsets, end)
			end += int64(len(t.GetRawData()))
		}
		h := tag + protowire.SizeVarint(uint64(end-int64(header)))
		if h == header {
			break
		}
		header = h
	}
	raw := make([][]byte, len(external))
	location := filepath.Base(path)
	for i, t := range external {
		raw[i] = t.RawData
		t.RawData = nil
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		t.ExternalData = []*onnxpb.StringStringEntryProto{
			{Key: proto.String("location"), Value: proto.String(location)},
			{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(offsets[i], 10))},
			{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(raw[i])))},
		}
	}
	// The weights field's content: each initializer's bytes after padding
	// to its offset.
	writeWeights := func(w io.Writer) error {
		pos := int64(header)
		var pad [weightAlign]byte
		for i := range external {
			if _, err := w.Write(pad[:offsets[i]-pos]); err != nil {
				return err
			}
			if _, err := w.Write(raw[i]); err != nil {
				return err
			}
			pos = offsets[i] + int64(len(raw[i]))
		}
		return nil
	}
	hash := sha256.New()
	_ = writeWeights(hash)
	nMeta := len(m.MetadataProps)
	m.MetadataProps = append(m.MetadataProps, &onnxpb.StringStringEntryProto{
		Key: proto.String(weightsHashKey), Value: proto.String(hex.EncodeToString(hash.Sum(nil)))})
	defer func() {
		for i, t := range external {
			t.RawData, t.DataLocation, t.ExternalData = raw[i], nil, nil
		}
		m.MetadataProps = m.MetadataProps[:nMeta]
	}()
	rest, err := Serialize(m)
	if err != nil {
		return err
	}
	err = atomicfile.WriteFunc(path, func(w io.Writer) error {
		b := protowire.AppendTag(nil, weightsField, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(end-int64(header)))
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := writeWeights(w); err != nil {
			return err
		}
		_, err := w.Write(rest)
		return err
	})
	if err != nil {
		return fmt.Errorf("write model %s: %w", path, err)
	}
	return nil
}

// ModelFile is a model read back from a file: its protobuf without the
// weights field, ready for ONNX Runtime with ExternalDataDir.
type ModelFile struct {
	Path string
	// Proto is the ModelProto, its external data named after the file as
	// it is called now.
	Proto    []byte
	Metadata map[string]string
}

// ExternalDataDir is the folder ONNX Runtime must look in for the model's
// external data (session option session.model_external_initializers_file_folder_path).
func (f ModelFile) ExternalDataDir() (string, error) {
	return filepath.Abs(filepath.Dir(f.Path))
}

// ReadModelFile reads a model file without reading its weights: those stay
// in the file for ONNX Runtime (or Tensors) to read.
func ReadModelFile(path string) (ModelFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return ModelFile{}, err
	}
	defer f.Close()
	head := make([]byte, 16)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return ModelFile{}, fmt.Errorf("read %s: %w", path, err)
	}
	head = head[:n]
	var weights, start int64 // where the weights field's content begins and ends
	if num, typ, tn := protowire.ConsumeTag(head); tn > 0 && num == weightsField && typ == protowire.BytesType {
		size, vn := protowire.ConsumeVarint(head[tn:])
		if vn < 0 {
			return ModelFile{}, fmt.Errorf("read %s: damaged weights header", path)
		}
		weights = int64(tn + vn)
		start = weights + int64(size)
	}
	st, err := f.Stat()
	if err != nil {
		return ModelFile{}, err
	}
	if start > st.Size() {
		return ModelFile{}, fmt.Errorf("read %s: truncated (%d bytes, its weights alone take %d)", path, st.Size(), start)
	}
	rest := make([]byte, st.Size()-start)
	if _, err := f.ReadAt(rest, start); err != nil {
		return ModelFile{}, fmt.Errorf("read %s: %w", path, err)
	}
	meta, err := onnxMetadata(rest)
	if err != nil {
		return ModelFile{}, fmt.Errorf("read %s: not an ONNX model (%v)", path, err)
	}
	mf := ModelFile{Path: path, Proto: rest, Metadata: meta}
	if start == 0 {
		return mf, nil // all inline
	}
	if want, ok := meta[weightsHashKey]; ok {
		hash := sha256.New()
		if _, err := io.Copy(hash, io.NewSectionReader(f, weights, start-weights)); err != nil {
			return ModelFile{}, fmt.Errorf("read %s: %w", path, err)
		}
		if hex.EncodeToString(hash.Sum(nil)) != want {
			return ModelFile{}, fmt.Errorf("read %s: its weights are damaged (SHA-256 differs from the one written with them); copy the file again", path)
		}
	}
	// Point the external data at the file under its current name.
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(rest, &m); err != nil {
		return ModelFile{}, fmt.Errorf("read %s: %w", path, err)
	}
	for _, t := range m.GetGraph().GetInitializer() {
		for _, e := range t.GetExternalData() {
			if e.GetKey() == "location" {
				e.Value = proto.String(filepath.Base(path))
			}
		}
	}
	if mf.Proto, err = Serialize(&m); err != nil {
		return ModelFile{}, fmt.Errorf("read %s: %w", path, err)
	}
	return mf, nil
}

// withWeights is the model with every external initializer's bytes read
// from the file and put inline.
func (f ModelFile) withWeights() (*onnxpb.ModelProto, error) {
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(f.Proto, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", f.Path, err)
	}
	file, err := os.Open(f.Path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	for _, t := range m.GetGraph().GetInitializer() {
		if t.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			continue
		}
		var off, length int64
		for _, e := range t.GetExternalData() {
			switch e.GetKey() {
			case "offset":
				off, err = strconv.ParseInt(e.GetValue(), 10, 64)
			case "length":
				length, err = strconv.ParseInt(e.GetValue(), 10, 64)
			}
			if err != nil {
				return nil, fmt.Errorf("decode %s: initializer %s: %w", f.Path, t.GetName(), err)
			}
		}
		raw := make([]byte, length)
		if _, err := file.ReadAt(raw, off); err != nil {
			return nil, fmt.Errorf("decode %s: initializer %s: %w", f.Path, t.GetName(), err)
		}
		t.RawData, t.DataLocation, t.ExternalData = raw, nil, nil
	}
	return &m, nil
}

// Inline is the model with its weights inside the protobuf, to open from
// memory with no tie to the file; it fails past protobuf's 2 GiB limit
// (InlineFits says beforehand).
func (f ModelFile) Inline() ([]byte, error) {
	m, err := f.withWeights()
	if err != nil {
		return nil, err
	}
	return Serialize(m)
}

// InlineFits says whether the model fits in one protobuf with its weights.
func (f ModelFile) InlineFits() bool {
	st, err := os.Stat(f.Path)
	return err == nil && st.Size() <= maxProtoSize
}

// PrivateCopy copies the model file into dir under a fresh name, for ONNX
// Runtime to read from where nobody else writes; remove deletes the copy.
func (f ModelFile) PrivateCopy(dir string) (ModelFile, func(), error) {
	src, err := os.Open(f.Path)
	if err != nil {
		return ModelFile{}, nil, err
	}
	defer src.Close()
	dst, err := os.CreateTemp(dir, "transformaly-model-*.onnx")
	if err != nil {
		return ModelFile{}, nil, fmt.Errorf("private copy of %s: %w", f.Path, err)
	}
	remove := func() { os.Remove(dst.Name()) }
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		remove()
		return ModelFile{}, nil, fmt.Errorf("private copy of %s: %w", f.Path, err)
	}
	cp, err := ReadModelFile(dst.Name())
	if err != nil {
		remove()
		return ModelFile{}, nil, err
	}
	return cp, remove, nil
}

// Float32Initializers reads every float32 initializer, inline or external,
// by name.
func (f ModelFile) Float32Initializers() (map[string]Tensor, error) {
	m, err := f.withWeights()
	if err != nil {
		return nil, err
	}
	weights := map[string]Tensor{}
	for _, t := range m.GetGraph().GetInitializer() {
		if t.GetDataType() != Float32 {
			continue
		}
		raw := t.GetRawData()
		shape := make([]int, len(t.GetDims()))
		for i, d := range t.GetDims() {
			shape[i] = int(d)
		}
		if 4*shapeSize(shape) != len(raw) {
			return nil, fmt.Errorf("decode %s: initializer %s: %d bytes for shape %v", f.Path, t.GetName(), len(raw), shape)
		}
		data := make([]float32, len(raw)/4)
		for i := range data {
			data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		weights[t.GetName()] = Tensor{Shape: shape, Data: data}
	}
	return weights, nil
}
