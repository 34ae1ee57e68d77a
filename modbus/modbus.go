// Package modbus serves the line's PLC a Modbus TCP register map of each
// triggered camera: Ready, Busy and the last result's Valid toggle, OK, NG
// and Error bits, a result counter, the part id and the score; the PLC
// triggers a part with a rising edge on a coil. It knows the daemon only
// through Line, so it is testable alone (github.com/simonvetter/modbus:
// a maintained server and client; goburrow/modbus is unmaintained).
package modbus

import (
	"fmt"
	"log"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/transformaly/transformaly/internal/guard"
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

// Config is the daemon configuration's modbus section.
type Config struct {
	Address string `yaml:"address"` // host:port, e.g. 0.0.0.0:502; "" is off
	// MaxClients bounds the open connections; a new client past it closes
	// the longest-idle one, so a reconnecting PLC always gets in.
	MaxClients int `yaml:"max_clients"`
	// IdleTimeout closes a connection that sent no request for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// AllowedClients are the addresses or CIDR prefixes that may connect
	// (empty: any). Modbus has no authentication of its own.
	AllowedClients []string `yaml:"allowed_clients"`
}

// Defaults for Config.
const (
	DefaultMaxClients  = 8
	DefaultIdleTimeout = 5 * time.Minute
)

// Check names what is wrong with the section, key by key.
func (c Config) Check(bad func(key, format string, args ...any)) {
	if c.MaxClients < 1 || c.MaxClients > 256 {
		bad("modbus.max_clients", "%d: 1 to 256", c.MaxClients)
	}
	if c.IdleTimeout < time.Second || c.IdleTimeout > 24*time.Hour {
		bad("modbus.idle_timeout", "%s: 1s to 24h", c.IdleTimeout)
	}
	if _, err := parseAllowed(c.AllowedClients); err != nil {
		bad("modbus.allowed_clients", "%v", err)
	}
}

// Server is the Modbus TCP server.
type Server struct {
	line    Line
	server  *mb.ModbusServer
	gate    *gate
	mu      sync.Mutex
	cameras []*camera
	index   map[string]int
}

// Start serves the map of the given cameras (block i is cameras[i]) at
// cfg.Address (host:port), through the gate (see gate) to the library's
// server on a loopback port.
func Start(cfg Config, cameras []string, line Line) (*Server, error) {
	allowed, err := parseAllowed(cfg.AllowedClients)
	if err != nil {
		return nil, fmt.Errorf("modbus.allowed_clients: %w", err)
	}
	s := &Server{line: line}
	s.SetCameras(cameras)
	listener, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("modbus.address %s: %w", cfg.Address, err)
	}
	upstream, err := net.Listen("tcp", "127.0.0.1:0") // a free port for the library
	if err != nil {
		listener.Close()
		return nil, fmt.Errorf("modbus: a loopback port for the register map: %w", err)
	}
	libraryAddr := upstream.Addr().String()
	upstream.Close()
	// The gate does the idle timeout and the client bound; the library's
	// own are only a backstop, above the gate's (evicted connections close
	// while new ones open).
	srv, err := mb.NewServer(&mb.ServerConfiguration{URL: "tcp://" + libraryAddr, Timeout: cfg.IdleTimeout + time.Minute,
		MaxClients: uint(2*cfg.MaxClients + 2), Logger: log.New(libraryLog{&rateLimit{interval: 10 * time.Second}}, "", 0)}, s)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		listener.Close()
		return nil, fmt.Errorf("modbus: the register map's loopback listener %s: %w", libraryAddr, err)
	}
	s.server = srv
	s.gate = &gate{listener: listener, upstream: libraryAddr, allowed: allowed, max: cfg.MaxClients, idle: cfg.IdleTimeout,
		logRate: &rateLimit{interval: 10 * time.Second}, conns: map[*relay]struct{}{}, byLibraryAddr: map[string]*relay{}}
	s.gate.wg.Add(1)
	go s.gate.serve()
	slog.Info("Modbus TCP server listening", "address", listener.Addr().String(), "cameras", cameras,
		"max_clients", cfg.MaxClients, "idle_timeout", cfg.IdleTimeout, "allowed_clients", cfg.AllowedClients)
	return s, nil
}

// Address is where the server listens (host:port).
func (s *Server) Address() string { return s.gate.listener.Addr().String() }

// Refused counts connections refused as outside allowed_clients.
func (s *Server) Refused() uint64 { return s.gate.refused.Load() }

// Evicted counts connections closed to admit a new client.
func (s *Server) Evicted() uint64 { return s.gate.evicted.Load() }

// failRequest is what a handler that panicked does (guard.Recover): fail
// the request with a device failure and close the connection it came on.
func (s *Server) failRequest(client string, err *error) func() {
	return func() {
		*err = mb.ErrServerDeviceFailure
		go s.gate.dropLibraryClient(client)
	}
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

// Close stops the server and closes every connection.
func (s *Server) Close() {
	s.gate.close()
	s.server.Stop()
}

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
func (s *Server) HandleCoils(req *mb.CoilsRequest) (_ []bool, err error) {
	defer guard.Recover("modbus", "coils", s.failRequest(req.ClientAddr, &err))
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
func (s *Server) HandleDiscreteInputs(req *mb.DiscreteInputsRequest) (_ []bool, err error) {
	defer guard.Recover("modbus", "discrete inputs", s.failRequest(req.ClientAddr, &err))
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
func (s *Server) HandleHoldingRegisters(req *mb.HoldingRegistersRequest) (_ []uint16, err error) {
	defer guard.Recover("modbus", "holding registers", s.failRequest(req.ClientAddr, &err))
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
func (s *Server) HandleInputRegisters(req *mb.InputRegistersRequest) (_ []uint16, err error) {
	defer guard.Recover("modbus", "input registers", s.failRequest(req.ClientAddr, &err))
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
