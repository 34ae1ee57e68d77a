package daemon

import (
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/mqtt/mqtttest"
	"github.com/transformaly/transformaly/tiles"
)

// A batch is not held back for frames that cannot come: with one of two
// cameras not delivering (ended, offline or not started), a frame is
// scored at once however long batch_wait is (1000h scored nothing before).
func TestBatchNeverWaitsForCamerasThatAreNotOnline(t *testing.T) {
	m := &modelRuntime{pending: map[*cameraRuntime]capture.Frame{}, signal: make(chan struct{}, 1)}
	for _, name := range []string{"a", "b"} {
		cam, err := capture.NewCamera(capture.Config{Name: name, Source: t.TempDir(), Size: 8}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.cameras = append(m.cameras, &cameraRuntime{cam: cam, model: m})
	}
	done := make(chan []pendingFrame)
	go func() {
		batch, _ := m.fill(context.Background(), []pendingFrame{{cam: m.cameras[0]}}, 8, time.Hour)
		done <- batch
	}()
	select {
	case batch := <-done:
		if len(batch) != 1 {
			t.Errorf("batch of %d frames, want the 1 there was", len(batch))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batch waits for cameras that deliver nothing")
	}
}

// A frame whose score is NaN or infinite is anomalous: its message carries
// "score": null and an error (it failed to encode and was dropped before),
// it is counted, and the event it opens keeps a finite peak.
func TestNonFiniteScoresAreAnomalousAndPublished(t *testing.T) {
	_, url := mqtttest.StartBroker(t, new(mqtttest.Gate))
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("test-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	var mu sync.Mutex
	var scores []map[string]any
	tok := sub.Subscribe("tfy/cam/score", 0, func(_ mqtt.Client, m mqtt.Message) {
		var v map[string]any
		if err := json.Unmarshal(m.Payload(), &v); err != nil {
			t.Errorf("score payload %q: %v", m.Payload(), err)
		}
		mu.Lock()
		scores = append(scores, v)
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	pub, queue := mqtttest.StartPublisher(t, url, "tfy-nan")
	mqtttest.WaitFor(t, "the publisher to connect", pub.Connected)

	cfg := DefaultConfig()
	p := &pipeline{cfg: cfg, pub: pub}
	c := &cameraRuntime{cfg: CameraConfig{Name: "cam"}, threshold: 10, latency: newWindow(16), e2e: newWindow(16),
		tracker: newTracker("cam", EventConfig{MinFrames: 2, EndFrames: 2, UpdateInterval: time.Hour})}
	nan, inf := math.NaN(), math.Inf(1)
	t0 := time.Now()
	for i, r := range []detector.Result{
		{Score: 5, LLPretrained: -2, LLStudent: -3},
		{Score: nan, LLPretrained: nan, LLStudent: -3},
		{Score: inf, LLPretrained: -2, LLStudent: math.Inf(-1)},
		{Score: 30, LLPretrained: -10, LLStudent: -20},
		{Score: 5, LLPretrained: -2, LLStudent: -3},
		{Score: 5, LLPretrained: -2, LLStudent: -3},
	} {
		p.handle(c, capture.Frame{Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * 100 * time.Millisecond)}, r, 1)
	}
	mqtttest.WaitFor(t, "six score messages", func() bool { mu.Lock(); defer mu.Unlock(); return len(scores) == 6 })
	mu.Lock()
	for i, want := range []bool{false, true, true, true, false, false} {
		m := scores[i]
		if m["anomalous"] != want {
			t.Errorf("frame %d: anomalous %v, want %v", i+1, m["anomalous"], want)
		}
		nonFinite := i == 1 || i == 2
		if _, hasErr := m["error"]; hasErr != nonFinite || (m["score"] == nil) != nonFinite {
			t.Errorf("frame %d: score %v, error %v", i+1, m["score"], m["error"])
		}
	}
	mu.Unlock()
	if n := c.nonFinite.Load(); n != 2 {
		t.Errorf("%d non-finite frames counted, want 2", n)
	}
	// The event: opened by the NaN and Inf frames, peak the finite 30.
	mqtttest.WaitFor(t, "the events delivered", func() bool { return queue.Len() == 0 })
	if c.events.Load() != 1 {
		t.Errorf("%d events opened, want 1", c.events.Load())
	}
}

// Frames of a batch the detector fails on are counted per camera (and
// their buffers given back), not only logged.
func TestDetectorFailuresAreCounted(t *testing.T) {
	path := writeTinyBundle(t, 1)
	det, err := detector.Load(path, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer det.Close()
	mr := &modelRuntime{path: path, det: det, pending: map[*cameraRuntime]capture.Frame{}, signal: make(chan struct{}, 1)}
	cam, err := capture.NewCamera(capture.Config{Name: "cam", Source: t.TempDir(), Size: 16}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &cameraRuntime{cfg: CameraConfig{Name: "cam"}, cam: cam, model: mr, latency: newWindow(8), e2e: newWindow(8)}
	mr.cameras = []*cameraRuntime{c}
	p := &pipeline{cfg: DefaultConfig()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.detectLoop(ctx, mr); close(done) }()
	defer func() { cancel(); <-done }()
	mr.put(c, capture.Frame{Seq: 1, Time: time.Now(), RGB: make([]byte, 5)}) // not 16x16x3: the detector refuses it
	mqtttest.WaitFor(t, "the failed frame to be counted", func() bool { return c.detectorFailed.Load() == 1 })
	if c.processed.Load() != 0 {
		t.Errorf("%d frames scored, want 0", c.processed.Load())
	}
}

// An event open across a reload keeps its peak frame, so its snapshot is
// still drawn when it ends (the frame went with the old pipeline's camera).
func TestReloadKeepsAnOpenEventsPeak(t *testing.T) {
	tr := newTracker("cam", EventConfig{MinFrames: 1, EndFrames: 1})
	peak := &peakFrame{view: &capture.View{BGR: make([]byte, 8*8*3), Width: 8, Height: 8}}
	old := &pipeline{cameras: []*cameraRuntime{{cfg: CameraConfig{Name: "cam"}, tracker: tr, peak: peak}}}
	next := &pipeline{cameras: []*cameraRuntime{{cfg: CameraConfig{Name: "cam"}, tracker: tr}, {cfg: CameraConfig{Name: "other"}, tracker: newTracker("other", EventConfig{})}}}
	next.adoptPeaks(old)
	if next.cameras[0].peak != peak || old.cameras[0].peak != nil {
		t.Error("the open event's peak frame did not move to the new pipeline")
	}
	if next.cameras[1].peak != nil {
		t.Error("a peak frame went to another camera")
	}
}

// writeTinyBundle writes a bundle of a 16 px random ViT (2 blocks, one
// student) whose score is 0 and whose threshold is threshold.
func writeTinyBundle(t *testing.T, threshold float64) string {
	t.Helper()
	return writeTinyBundleTiled(t, threshold, nil)
}

// writeTinyBundleTiled is writeTinyBundle cutting frames into tiles (nil:
// none), with a patch space of random entries then: it scores 0 too.
func writeTinyBundleTiled(t *testing.T, threshold float64, tiling *tiles.Tiling) string {
	t.Helper()
	if err := ort.Init(""); err != nil {
		t.Fatal(err)
	}
	v, err := models.RandomViT(models.Config{Dim: 16, Depth: 2, Heads: 2, Patch: 8, ImageSize: 16}, 1)
	if err != nil {
		t.Fatal(err)
	}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: 16, Blocks: []int{1}, Threshold: threshold}
	info.Teacher.Config = v.Config
	q := func(in int) models.QuadraticScore {
		return models.QuadraticScore{In: in, K: 1, W: make([]float32, in), B: make([]float32, 1)}
	}
	scoring := models.Scoring{Pretrained: q(16), Student: q(1)}
	if tiling != nil {
		// One normal score of 0 in each space: every score of 0 or more
		// combines to 0.
		normal := models.NormalScores{Images: 1, Scores: []float64{0}}
		scoring.Patch = &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{0}, Neighbourhood: 3, Pooling: models.PoolMean}, D: 16, M: 2, Bank: make([]float32, 32)}
		info.Patch = &models.PatchInfo{Blocks: []int{0}, Neighbourhood: 3, Pooling: models.PoolMean, FeatureWidth: 16, BankEntries: 2, NormalDistance: 1,
			Combination: models.Combination{Image: normal, Patch: normal, ImageWeight: 0.5}}
		info.Tiling = &models.TilingInfo{Tiling: *tiling, CoreOnly: true}
	}
	m, err := models.ScoredDetectorGraph(v, []int{1}, []models.Block{v.Blocks[1]}, scoring, info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "b.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	return path
}
