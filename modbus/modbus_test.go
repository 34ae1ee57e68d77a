package modbus

import (
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"
)

// fakeLine records triggers and says what the test sets.
type fakeLine struct {
	mu       sync.Mutex
	triggers []string
	ready    bool
}

func (l *fakeLine) Trigger(camera, part string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.triggers = append(l.triggers, camera+"/"+part)
	return nil
}
func (l *fakeLine) Ready(string) bool { l.mu.Lock(); defer l.mu.Unlock(); return l.ready }
func (l *fakeLine) Busy(string) bool  { return false }

func freeAddress(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// A PLC's view of the map through a real Modbus client: a rising edge on
// the Trigger coil triggers a part with the id from the holding registers
// (a second write of 1 does not); each result toggles Result Valid and sets
// one verdict bit, the counter, the part id and the score; read-only data
// cannot be written (a Modbus exception), and addresses past the cameras
// are refused.
// dial connects a Modbus client, closed with the test.
func dial(t *testing.T, addr string) *mb.ModbusClient {
	t.Helper()
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + addr, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRegisterMap(t *testing.T) {
	line := &fakeLine{ready: true}
	addr := freeAddress(t)
	s, err := Start(testConfig(addr), []string{"line1", "line2"}, line)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dial(t, addr)
	line2 := uint16(BlockSize)

	if err := c.WriteUint32(line2+HoldingPartID, 4711); err != nil {
		t.Fatal(err)
	}
	for _, v := range []bool{true, true, false, true} { // two rising edges
		if err := c.WriteCoil(line2+CoilTrigger, v); err != nil {
			t.Fatal(err)
		}
	}
	line.mu.Lock()
	if got := fmt.Sprint(line.triggers); got != "[line2/4711 line2/4711]" {
		t.Errorf("triggers %s, want two for part 4711 on line2", got)
	}
	line.mu.Unlock()

	bits := func() []bool {
		b, err := c.ReadDiscreteInputs(line2, 6)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := bits()
	if !before[InputReady] || before[InputResultValid] {
		t.Errorf("before any result: %v", before)
	}
	s.Publish("line2", Result{PartID: "4711", Verdict: "ng", Score: 12.5})
	after := bits()
	if !after[InputResultValid] || !after[InputNG] || after[InputOK] || after[InputError] {
		t.Errorf("after an NG result: %v", after)
	}
	regs, err := c.ReadRegisters(line2+RegisterResultCounter, 1, mb.INPUT_REGISTER)
	if err != nil || regs[0] != 1 {
		t.Errorf("result counter %v (%v), want 1", regs, err)
	}
	if id, err := c.ReadUint32(line2+RegisterPartID, mb.INPUT_REGISTER); err != nil || id != 4711 {
		t.Errorf("part id %d (%v)", id, err)
	}
	if score, err := c.ReadFloat32(line2+RegisterScore, mb.INPUT_REGISTER); err != nil || score != 12.5 {
		t.Errorf("score %g (%v)", score, err)
	}
	s.Publish("line2", Result{PartID: "x", Verdict: "error", Score: math.NaN()})
	if b := bits(); b[InputResultValid] || !b[InputError] || b[InputNG] {
		t.Errorf("after a second (error) result: %v, want Valid toggled back and Error set", b)
	}
	if b, _ := c.ReadDiscreteInputs(0, 6); b[InputResultValid] || b[InputNG] {
		t.Errorf("line1's bits changed with line2's results: %v", b)
	}

	// Read-only data and unknown addresses.
	for what, err := range map[string]error{
		"a write to a coil that is not Trigger":          c.WriteCoil(line2+3, true),
		"a write to a holding register past the part id": c.WriteRegister(line2+5, 1),
		"a read past the cameras":                        func() error { _, err := c.ReadDiscreteInputs(2*BlockSize, 1); return err }(),
	} {
		if !errors.Is(err, mb.ErrIllegalDataAddress) {
			t.Errorf("%s: %v, want an illegal data address exception", what, err)
		}
	}
}

// A reload lays the blocks out anew: a camera that stays keeps its last
// result wherever its block moves; a new one starts empty.
func TestSetCamerasKeepsResultsByName(t *testing.T) {
	addr := freeAddress(t)
	s, err := Start(testConfig(addr), []string{"line1", "line2"}, &fakeLine{ready: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Publish("line2", Result{PartID: "7", Verdict: "ng", Score: 3})
	s.SetCameras([]string{"line2", "line3"})
	c := dial(t, addr)
	if id, err := c.ReadUint32(RegisterPartID, mb.INPUT_REGISTER); err != nil || id != 7 {
		t.Errorf("block 0 (now line2): part id %d (%v), want line2's 7", id, err)
	}
	if b, err := c.ReadDiscreteInputs(BlockSize, 6); err != nil || b[InputNG] || b[InputResultValid] {
		t.Errorf("block 1 (new line3): %v (%v), want no result", b, err)
	}
	if _, err := c.ReadDiscreteInputs(2*BlockSize, 1); !errors.Is(err, mb.ErrIllegalDataAddress) {
		t.Errorf("a third block after the reload: %v", err)
	}
}
