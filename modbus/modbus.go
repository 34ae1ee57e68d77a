// Package modbus serves the line's PLC a Modbus TCP register map of each
// triggered camera: Ready, Busy and the last result's Valid toggle, OK, NG
// and Error bits, a result counter, the part id and the score; the PLC
// triggers a part with a rising edge on a coil. It knows the daemon only
// through Line, so it is testable alone (github.com/simonvetter/modbus:
// a maintained server and client; goburrow/modbus is unmaintained).
package modbus

import (
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	mb "github.com/simonvetter/modbus"
)

// The register map, per camera: camera i's block starts at i*BlockSize in
// each of the four tables.
const (
	BlockSize = 16

	// Coils (read/write by the PLC).
	CoilTrigger = 0 // a rising edge (0 -> 1) judges the next part

	// Discrete inputs (read only).
	InputReady       = 0 // the camera is delivering frames and can judge a part
	InputBusy        = 1 // a part is waiting for its result
	InputResultValid = 2 // toggles with each new result, so a fast PLC misses none
	InputOK          = 3 // the last result's verdict, one of the three set
	InputNG          = 4
	InputError       = 5 // not judged in time or not judgeable: reject the part

	// Holding registers (read/write by the PLC).
	HoldingPartID = 0 // uint32, high word first: the id the next trigger gives its part (0: a count)

	// Input registers (read only).
	RegisterResultCounter = 0 // uint16, counts results, wrapping
	RegisterPartID        = 1 // uint32, high word first: the last result's part id (0 if not a number)
	RegisterScore         = 3 // float32, high word first: the last result's score (NaN without one)
)

// Line is what the daemon offers the register map.
type Line interface {
	// Trigger starts judging a part on a camera.
	Trigger(camera, partID string) error
	// Ready says whether a camera can judge a part now.
	Ready(camera string) bool
	// Busy says whether a camera has parts waiting for their results.
	Busy(camera string) bool
}

// Result is a part result as the registers show it.
type Result struct {
	PartID  string
	Verdict string // ok, ng or error
	Score   float64
}

// camera is one block's state.
type camera struct {
	name     string
	trigger  bool   // the coil's last written value
	nextPart uint32 // holding registers
	valid    bool
	verdict  string
	counter  uint16
	partID   uint32
	score    float32
}

// Server is the Modbus TCP server.
type Server struct {
	line    Line
	server  *mb.ModbusServer
	mu      sync.Mutex
	cameras []*camera
	index   map[string]int
}

// Start serves the map of the given cameras (block i is cameras[i]) at
// address (host:port).
func Start(address string, cameras []string, line Line) (*Server, error) {
	s := &Server{line: line}
	s.SetCameras(cameras)
	srv, err := mb.NewServer(&mb.ServerConfiguration{URL: "tcp://" + address, Timeout: 5 * time.Minute, MaxClients: 8}, s)
	if err != nil {
		return nil, fmt.Errorf("modbus.address %s: %w", address, err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("modbus.address %s: %w", address, err)
	}
	s.server = srv
	slog.Info("Modbus TCP server listening", "address", address, "cameras", cameras)
	return s, nil
}

// SetCameras lays the blocks out anew (a reload): block i is cameras[i]; a
// camera that stays keeps its last result and registers, wherever its
// block moves.
func (s *Server) SetCameras(cameras []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	blocks := make([]*camera, len(cameras))
	index := make(map[string]int, len(cameras))
	for i, name := range cameras {
		if j, ok := s.index[name]; ok {
			blocks[i] = s.cameras[j]
		} else {
			blocks[i] = &camera{name: name, score: float32(math.NaN())}
		}
		index[name] = i
	}
	s.cameras, s.index = blocks, index
}

// Close stops the server.
func (s *Server) Close() { s.server.Stop() }

// Publish shows a camera's new result: its bits, counter, part id and
// score, and toggles Result Valid.
func (s *Server) Publish(cameraName string, r Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[cameraName]
	if !ok {
		return
	}
	c := s.cameras[i]
	c.verdict, c.valid = r.Verdict, !c.valid
	c.counter++
	id, err := strconv.ParseUint(r.PartID, 10, 32)
	if err != nil {
		id = 0
	}
	c.partID, c.score = uint32(id), float32(r.Score)
}

// block finds the camera and offset of an address range inside one block.
func (s *Server) block(addr, quantity uint16) (*camera, uint16, error) {
	i := int(addr) / BlockSize
	off := addr % BlockSize
	if i >= len(s.cameras) || int(off)+int(quantity) > BlockSize {
		return nil, 0, mb.ErrIllegalDataAddress
	}
	return s.cameras[i], off, nil
}

// HandleCoils: the Trigger coil is the only one; a write of 1 over 0
// triggers a part. Other coils are no address.
func (s *Server) HandleCoils(req *mb.CoilsRequest) ([]bool, error) {
	s.mu.Lock()
	c, off, err := s.block(req.Addr, req.Quantity)
	if err != nil || off != CoilTrigger || req.Quantity != 1 {
		s.mu.Unlock()
		return nil, mb.ErrIllegalDataAddress
	}
	if !req.IsWrite {
		v := c.trigger
		s.mu.Unlock()
		return []bool{v}, nil
	}
	rising := req.Args[0] && !c.trigger
	c.trigger = req.Args[0]
	part := ""
	if c.nextPart != 0 {
		part = strconv.FormatUint(uint64(c.nextPart), 10)
	}
	s.mu.Unlock()
	if rising {
		if err := s.line.Trigger(c.name, part); err != nil {
			slog.Warn("Modbus trigger refused", "camera", c.name, "err", err)
			return nil, mb.ErrServerDeviceFailure
		}
	}
	return nil, nil
}

// HandleDiscreteInputs reads the status bits.
func (s *Server) HandleDiscreteInputs(req *mb.DiscreteInputsRequest) ([]bool, error) {
	s.mu.Lock()
	c, off, err := s.block(req.Addr, req.Quantity)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	bits := make([]bool, BlockSize)
	bits[InputResultValid] = c.valid
	bits[InputOK], bits[InputNG], bits[InputError] = c.verdict == "ok", c.verdict == "ng", c.verdict == "error"
	name := c.name
	s.mu.Unlock()
	bits[InputReady], bits[InputBusy] = s.line.Ready(name), s.line.Busy(name)
	return bits[off : off+req.Quantity], nil
}

// HandleHoldingRegisters: the next part id, the only writable registers.
func (s *Server) HandleHoldingRegisters(req *mb.HoldingRegistersRequest) ([]uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, off, err := s.block(req.Addr, req.Quantity)
	if err != nil || off+req.Quantity > HoldingPartID+2 {
		return nil, mb.ErrIllegalDataAddress
	}
	regs := []uint16{uint16(c.nextPart >> 16), uint16(c.nextPart)}
	if req.IsWrite {
		copy(regs[off:], req.Args)
		c.nextPart = uint32(regs[0])<<16 | uint32(regs[1])
		return nil, nil
	}
	return regs[off : off+req.Quantity], nil
}

// HandleInputRegisters reads the last result.
func (s *Server) HandleInputRegisters(req *mb.InputRegistersRequest) ([]uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, off, err := s.block(req.Addr, req.Quantity)
	if err != nil {
		return nil, err
	}
	score := math.Float32bits(c.score)
	regs := make([]uint16, BlockSize)
	regs[RegisterResultCounter] = c.counter
	regs[RegisterPartID], regs[RegisterPartID+1] = uint16(c.partID>>16), uint16(c.partID)
	regs[RegisterScore], regs[RegisterScore+1] = uint16(score>>16), uint16(score)
	return regs[off : off+req.Quantity], nil
}
