package fit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"

	"github.com/transformaly/transformaly/models"
)

// fitState is what survives an interrupted fit: written atomically after
// every finished epoch as a safetensors file beside the bundle.
type fitState struct {
	Fingerprint string    `json:"fingerprint"`
	Epoch       int       `json:"epoch"` // finished epochs
	AdamSteps   int       `json:"adam_steps"`
	BestVal     []float64 `json:"best_val"` // per block
	BestEpochs  []int     `json:"best_epochs"`

	students, best []models.Block
	bestVal        []float64
	bestEpochs     []int
	epoch          int
	adamSteps      int
	m, v           [][]float32
}

const stateMetadataKey = "transformaly.fit_state"

// fingerprint ties a state file to the settings that shape the training
// trajectory; a resume with other settings is refused. Epochs may grow.
// The training images count by their decoded pixels, not only their
// names: a folder whose images were replaced under the same names resumed
// silently (hashing them costs about 1 ms per 224 px image).
func (o *Options) fingerprint(images *Images, train []int) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%d|%v|%d|%g|%d|%g|", o.Teacher.Checksum, o.Teacher.ImageSize, o.Blocks, o.BatchSize, o.LR, o.Seed, o.ValFraction)
	var buf []byte
	for _, i := range train {
		fmt.Fprintf(h, "%s\n", images.Paths[i])
		var err error
		if buf, err = images.Batch([]int{i}, buf); err != nil {
			return "", fmt.Errorf("fingerprint the training images: %w", err)
		}
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// startState makes fresh students, or with Resume reloads the state file.
func (o *Options) startState(images *Images, train []int) (*fitState, error) {
	path := StatePath(o.Out)
	fp, err := o.fingerprint(images, train)
	if err != nil {
		return nil, err
	}
	_, statErr := os.Stat(path)
	if !o.Resume {
		if statErr == nil {
			return nil, fmt.Errorf("fit: %s holds an interrupted fit of %s: pass --resume to continue it, or delete it to start over", path, o.Out)
		}
		return freshState(fp, o.Teacher.Config, len(o.Blocks), rand.New(rand.NewPCG(o.Seed, 0x57d))), nil
	}
	if statErr != nil {
		return nil, fmt.Errorf("fit: --resume given but there is no state to resume (%s): %w", path, statErr)
	}
	st, err := loadState(path, o.Teacher.Config, o.Blocks)
	if err != nil {
		return nil, err
	}
	if st.Fingerprint != fp {
		return nil, fmt.Errorf("fit: %s was made with another teacher, image set (names or contents), blocks, batch size, learning rate, seed or validation fraction; resume with the same settings or delete it", path)
	}
	slog.Info("resuming fit", "finished_epochs", st.epoch, "state", path)
	return st, nil
}

// freshState holds untrained students (Xavier-initialised from rng).
func freshState(fingerprint string, c models.Config, blocks int, rng *rand.Rand) *fitState {
	st := &fitState{Fingerprint: fingerprint}
	for range blocks {
		st.students = append(st.students, models.XavierBlock(c, rng))
	}
	st.best = cloneBlocks(st.students, c)
	st.bestVal = make([]float64, blocks)
	for i := range st.bestVal {
		st.bestVal[i] = -1 // none yet
	}
	st.bestEpochs = make([]int, blocks)
	return st
}

func cloneBlocks(bs []models.Block, c models.Config) []models.Block {
	out := make([]models.Block, len(bs))
	for k := range bs {
		src, dst := bs[k].Params(c), out[k].Params(c)
		for i := range src {
			*dst[i].Data = slices.Clone(*src[i].Data)
		}
	}
	return out
}

// restore hands the Adam state of a resumed fit to the trainer.
func (tr *Trainer) restore(st *fitState) {
	tr.t = st.adamSteps
	if st.m != nil {
		for i := range tr.m {
			copy(tr.m[i], st.m[i])
			copy(tr.v[i], st.v[i])
		}
		st.m, st.v = nil, nil // the trainer's copies are the live ones
	}
}

// finishEpoch keeps, for each block, the students of its lowest validation
// loss so far (each student is independent, so each keeps its own best
// epoch).
func (st *fitState) finishEpoch(tr *Trainer, epoch int, valLoss []float64) {
	st.adamSteps = tr.t
	if valLoss == nil {
		return
	}
	for k := range st.best {
		if st.bestVal[k] < 0 || valLoss[k] < st.bestVal[k] {
			st.bestVal[k], st.bestEpochs[k] = valLoss[k], epoch
			src, dst := tr.Students[k].Params(tr.cfg), st.best[k].Params(tr.cfg)
			for i := range src {
				copy(*dst[i].Data, *src[i].Data)
			}
		}
	}
}

func (st *fitState) save(path string, tr *Trainer) error {
	st.Epoch, st.AdamSteps, st.BestVal, st.BestEpochs = st.epoch, st.adamSteps, st.bestVal, st.bestEpochs
	meta, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tensors := map[string]models.Tensor{}
	i := 0
	for k, b := range tr.blocks {
		cur, best := tr.Students[k].Params(tr.cfg), st.best[k].Params(tr.cfg)
		for j, p := range cur {
			name := models.StudentParamName(b, p.Name)
			tensors["current."+name] = models.Tensor{Shape: p.Shape, Data: *p.Data}
			tensors["best."+name] = models.Tensor{Shape: p.Shape, Data: *best[j].Data}
			tensors["adam_m."+name] = models.Tensor{Shape: p.Shape, Data: tr.m[i]}
			tensors["adam_v."+name] = models.Tensor{Shape: p.Shape, Data: tr.v[i]}
			i++
		}
	}
	if err := models.WriteSafetensors(path, tensors, map[string]string{stateMetadataKey: string(meta)}); err != nil {
		return fmt.Errorf("save fit state: %w", err)
	}
	return nil
}

func loadState(path string, c models.Config, blocks []int) (*fitState, error) {
	tensors, meta, err := models.ReadSafetensors(path)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	raw, ok := meta[stateMetadataKey]
	if !ok {
		return nil, fmt.Errorf("resume: %s is not a fit state file", path)
	}
	st := &fitState{}
	if err := json.Unmarshal([]byte(raw), st); err != nil {
		return nil, fmt.Errorf("resume: %s: %w", path, err)
	}
	st.epoch, st.adamSteps, st.bestVal, st.bestEpochs = st.Epoch, st.AdamSteps, st.BestVal, st.BestEpochs
	st.students = make([]models.Block, len(blocks))
	st.best = make([]models.Block, len(blocks))
	var missing []string
	for k, b := range blocks {
		cur, best := st.students[k].Params(c), st.best[k].Params(c)
		for j, p := range cur {
			name := models.StudentParamName(b, p.Name)
			for _, part := range []struct {
				prefix string
				dst    *[]float32
			}{{"current.", p.Data}, {"best.", best[j].Data}} {
				t, ok := tensors[part.prefix+name]
				if !ok || len(t.Data) != shapeSize(p.Shape) {
					missing = append(missing, part.prefix+name)
					continue
				}
				*part.dst = t.Data
			}
			m, okM := tensors["adam_m."+name]
			v, okV := tensors["adam_v."+name]
			if !okM || !okV {
				missing = append(missing, "adam."+name)
				continue
			}
			st.m, st.v = append(st.m, m.Data), append(st.v, v.Data)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("resume: %s lacks %s (made for other blocks?)", path, strings.Join(missing[:min(3, len(missing))], ", "))
	}
	if len(st.bestVal) != len(blocks) {
		return nil, errors.New("resume: state is for another number of blocks")
	}
	return st, nil
}

func shapeSize(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}
