package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/mqtt/mqtttest"
	"github.com/transformaly/transformaly/tiles"
)

// A shadow candidate scores the frames offered to it (at most shadowRate a
// second of capture time) and counts where its verdict and the live one
// agree, keeping the frames where they do not.
func TestShadowCountsAgreement(t *testing.T) {
	// The tiny bundle scores 0: with threshold -1 every frame is NG to it.
	d := shadowDaemon(t, writeTinyBundle(t, -1))
	defer d.stopShadows()
	t0 := time.Now()
	for i := range 8 { // 4 s of capture time at 2 frames a second: 8 frames offered, every other taken
		f := capture.Frame{Seq: uint64(i), Time: t0.Add(time.Duration(i) * 250 * time.Millisecond), RGB: make([]byte, 16*16*3), Size: 16}
		d.shadows.offer("cam", f, 0, i%4 == 0) // live: NG on frames 0 and 4
		mqtttest.WaitFor(t, fmt.Sprintf("frame %d taken", i), func() bool { return len(d.shadows.cams["cam"].inbox) == 0 })
		time.Sleep(20 * time.Millisecond)
	}
	mqtttest.WaitFor(t, "4 frames scored", func() bool { st := d.shadowState("cam"); return st.Frames == 4 })
	st := d.shadowState("cam")
	if st.Agree != 2 || len(st.Disagreements) != 2 {
		t.Errorf("shadow: %d of %d agree, %d disagreements; want 2 of 4 and 2", st.Agree, st.Frames, len(st.Disagreements))
	}
	if _, ok := (&webSource{d: d}).ShadowImage("cam", st.Disagreements[0].Image); !ok {
		t.Error("no image of a disagreement")
	}
}

// A tiled candidate shadows a tiled live bundle: it scores each frame from
// the live frame's tiles (its own tiling), and its disagreements keep the
// worst tile. A frame cut otherwise (here: resized whole) is not scored.
func TestShadowScoresTiledFrames(t *testing.T) {
	d := shadowDaemon(t, writeTinyBundleTiled(t, -1, &tiles.Tiling{Size: 32, Overlap: 0.25})) // scores 0: every frame NG to it
	defer d.stopShadows()
	t0 := time.Now()
	offer := func(i, images int, liveNG bool) {
		// 48x32 cut into tiles of 32 overlapping by at least 8 px: 2.
		f := capture.Frame{Seq: uint64(i), Time: t0.Add(time.Duration(i) * time.Second), RGB: make([]byte, images*16*16*3), Size: 16, Width: 48, Height: 32}
		d.shadows.offer("cam", f, 0, liveNG)
		mqtttest.WaitFor(t, fmt.Sprintf("frame %d taken", i), func() bool { return len(d.shadows.cams["cam"].inbox) == 0 })
	}
	for i := range 4 {
		offer(i, 2, i%2 == 0)
	}
	mqtttest.WaitFor(t, "4 frames scored", func() bool { return d.shadowState("cam").Frames == 4 })
	st := d.shadowState("cam")
	if st.Agree != 2 || len(st.Disagreements) != 2 {
		t.Errorf("shadow: %d of %d agree, %d disagreements; want 2 of 4 and 2", st.Agree, st.Frames, len(st.Disagreements))
	}
	if _, ok := (&webSource{d: d}).ShadowImage("cam", st.Disagreements[0].Image); !ok {
		t.Error("no image of a disagreement")
	}
	offer(4, 1, false) // the frame resized whole, as an untiled live bundle takes it
	offer(5, 2, false)
	mqtttest.WaitFor(t, "the next tiled frame scored", func() bool { return d.shadowState("cam").Frames == 5 })
}

// shadowDaemon is a daemon of shadows alone, camera cam's candidate c1
// (bundle) shadowing.
func shadowDaemon(t *testing.T, bundle string) *Daemon {
	t.Helper()
	cfg := DefaultConfig()
	cfg.StateDirectory = t.TempDir()
	d := &Daemon{refit: newRefitter(cfg), shadows: &shadows{cams: map[string]*shadow{}}}
	dir := filepath.Join(cfg.StateDirectory, "candidates", "cam", "c1")
	os.MkdirAll(dir, 0o750)
	if err := writeCandidate(dir, console.Candidate{ID: "c1", Bundle: bundle, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := d.startShadow("cam", "c1"); err != nil {
		t.Fatal(err)
	}
	return d
}
