package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// solid is a w x h BGR Mat of one colour.
func solid(w, h int, c color.RGBA) gocv.Mat {
	m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(c.B), float64(c.G), float64(c.R), 0), h, w, gocv.MatTypeCV8UC3)
	return m
}

// writeVideo writes an MJPG AVI whose frame i is a solid grey of level
// 10*i (mod 250), so frames can be told apart after decoding.
func writeVideo(t testing.TB, path string, n, w, h int, fps float64) {
	t.Helper()
	vw, err := gocv.VideoWriterFile(path, "MJPG", fps, w, h, true)
	if err != nil {
		t.Fatal(err)
	}
	defer vw.Close()
	for i := range n {
		v := uint8(10 * (i % 25))
		m := solid(w, h, color.RGBA{v, v, v, 0})
		if err := vw.Write(m); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
}

func runCamera(t testing.TB, cfg Config) (*Camera, context.CancelFunc, chan error) {
	t.Helper()
	return runCameraWatching(t, cfg, nil)
}

// runCameraWatching runs a camera that calls onChange at each state change.
func runCameraWatching(t testing.TB, cfg Config, onChange func(Status)) (*Camera, context.CancelFunc, chan error) {
	t.Helper()
	cam, err := NewCamera(cfg, onChange)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cam.Run(ctx) }()
	return cam, cancel, done
}

func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestVideoFileEndsAndLoops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clip.avi")
	writeVideo(t, path, 30, 320, 240, 25)

	cam, cancel, done := runCamera(t, Config{Name: "file", Source: path, Size: 32})
	defer cancel()
	var got []Frame
	for f := range cam.Frames() {
		got = append(got, f)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	st := cam.Status()
	if st.Frames != 30 || st.State != StateOffline {
		t.Errorf("status %+v, want 30 frames and offline at the end", st)
	}
	if uint64(len(got))+st.Dropped != 30 {
		t.Errorf("received %d and dropped %d of 30 frames", len(got), st.Dropped)
	}
	// Frame content survives decode and resize: grey level 10*(seq-1).
	for _, f := range got[:min(3, len(got))] {
		want := float64(10 * ((f.Seq - 1) % 25))
		if d := float64(f.RGB[0]) - want; d > 4 || d < -4 {
			t.Errorf("frame %d: pixel %d, want about %g", f.Seq, f.RGB[0], want)
		}
	}

	// Looped, it keeps going past the end.
	cam, cancel, done = runCamera(t, Config{Name: "loop", Source: path, Size: 32, Loop: true})
	waitFor(t, "frames past the end of the file", 20*time.Second, func() bool { return cam.Status().Frames > 45 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("looped Run: %v", err)
	}
}

func TestPacedFileTakesItsOwnTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clip.avi")
	writeVideo(t, path, 10, 64, 48, 20) // half a second at 20 fps
	start := time.Now()
	cam, cancel, done := runCamera(t, Config{Name: "paced", Source: path, Size: 16, Pace: true})
	defer cancel()
	go func() {
		for range cam.Frames() {
		}
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A lower bound only: pacing may never run faster than the file.
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Errorf("10 frames at 20 fps delivered in %s", el)
	}
}

func TestPreprocessCropRotateFlip(t *testing.T) {
	// Left half red, right half blue, 40x20.
	m := solid(40, 20, color.RGBA{255, 0, 0, 0})
	defer m.Close()
	right := m.Region(image.Rect(20, 0, 40, 20))
	blue := solid(20, 20, color.RGBA{0, 0, 255, 0})
	blue.CopyTo(&right)
	right.Close()
	blue.Close()
	red, bl := [3]byte{255, 0, 0}, [3]byte{0, 0, 255}
	px := func(b []byte, size, x, y int) [3]byte {
		i := (y*size + x) * 3
		return [3]byte{b[i], b[i+1], b[i+2]}
	}
	cases := []struct {
		name              string
		t                 Transform
		topLeft, botRight [3]byte
	}{
		{"plain: RGB order", Transform{Size: 8}, red, bl},
		{"crop right half", Transform{Size: 8, ROI: image.Rect(20, 0, 40, 20)}, bl, bl},
		{"rotate 90: left goes to the top", Transform{Size: 8, Rotate: 90}, red, bl},
		{"flip horizontally", Transform{Size: 8, FlipH: true}, bl, red},
		{"rotate 180", Transform{Size: 8, Rotate: 180}, bl, red},
	}
	for _, c := range cases {
		p := newPreprocessor(c.t)
		out := make([]byte, 8*8*3)
		view, err := p.Apply(m, out)
		if err != nil || view != nil {
			t.Fatalf("%s: view %v, err %v", c.name, view, err)
		}
		if tl, br := px(out, 8, 0, 0), px(out, 8, 7, 7); tl != c.topLeft || br != c.botRight {
			t.Errorf("%s: top-left %v bottom-right %v, want %v %v", c.name, tl, br, c.topLeft, c.botRight)
		}
		p.Close()
	}
	// The view is the transformed frame before the square resize, in BGR,
	// its buffer reused once released.
	bgrRed, bgrBlue := [3]byte{0, 0, 255}, [3]byte{255, 0, 0}
	views := []struct {
		name              string
		t                 Transform
		w, h              int
		topLeft, botRight [3]byte
	}{
		{"view of the frame", Transform{Size: 8, KeepView: true}, 40, 20, bgrRed, bgrBlue},
		{"view of the crop", Transform{Size: 8, KeepView: true, ROI: image.Rect(10, 5, 30, 15)}, 20, 10, bgrRed, bgrBlue},
		{"view rotated", Transform{Size: 8, KeepView: true, Rotate: 90}, 20, 40, bgrRed, bgrBlue},
	}
	for _, c := range views {
		p := newPreprocessor(c.t)
		first, err := p.Apply(m, make([]byte, 8*8*3))
		if err != nil || first == nil {
			t.Fatalf("%s: view %v, err %v", c.name, first, err)
		}
		buf := &first.BGR[0]
		first.Release()
		view, _ := p.Apply(m, make([]byte, 8*8*3))
		p.Close()
		if &view.BGR[0] != buf {
			t.Errorf("%s: a released view's buffer was not reused", c.name)
		}
		if view.Width != c.w || view.Height != c.h || len(view.BGR) != c.w*c.h*3 {
			t.Errorf("%s: %dx%d view of %d bytes, want %dx%d", c.name, view.Width, view.Height, len(view.BGR), c.w, c.h)
			continue
		}
		if tl, br := px(view.BGR, c.w, 0, 0), px(view.BGR, c.w, c.w-1, c.h-1); tl != c.topLeft || br != c.botRight {
			t.Errorf("%s: top-left %v bottom-right %v, want %v %v", c.name, tl, br, c.topLeft, c.botRight)
		}
	}
	p := newPreprocessor(Transform{Size: 8, ROI: image.Rect(30, 0, 50, 10)})
	defer p.Close()
	if _, err := p.Apply(m, make([]byte, 8*8*3)); err == nil {
		t.Error("an ROI outside the frame was accepted")
	}
}

func writeJPEG(t testing.TB, path string, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 32, 32))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, 255
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	if path != "" {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestFolderSkipsCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	for i := range 5 {
		writeJPEG(t, filepath.Join(dir, fmt.Sprintf("good-%d.jpg", i)), color.RGBA{uint8(40 * i), 0, 0, 255})
	}
	good := writeJPEG(t, "", color.RGBA{0, 200, 0, 255})
	os.WriteFile(filepath.Join(dir, "truncated.jpg"), good[:len(good)/2], 0o644)
	flipped := append([]byte{}, good...)
	flipped[len(flipped)/2] ^= 0xff
	flipped = flipped[:len(flipped)-2] // and no end marker
	os.WriteFile(filepath.Join(dir, "bitflip.jpg"), flipped, 0o644)
	os.WriteFile(filepath.Join(dir, "garbage.png"), []byte("not a png"), 0o644)
	os.WriteFile(filepath.Join(dir, "bomb.bmp"), bmpHeader(40000, 40000), 0o644) // aborted the process
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)

	cam, cancel, done := runCamera(t, Config{Name: "folder", Source: dir, Size: 16})
	defer cancel()
	for range cam.Frames() {
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := cam.Status(); st.Frames != 5 {
		t.Errorf("delivered %d frames from a folder of 5 good and 4 corrupt images", st.Frames)
	}
}

func TestPermanentErrorsAtStart(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing file", Config{Name: "a", Source: filepath.Join(dir, "nope.mp4"), Size: 8}, "no such file"},
		{"unknown scheme", Config{Name: "a", Source: "gopher://cam/1", Size: 8}, "unknown URL scheme"},
		{"bad ROI", Config{Name: "a", Source: dir, Size: 8, ROI: image.Rect(5, 5, 5, 9)}, "ROI"},
		{"bad rotation", Config{Name: "a", Source: dir, Size: 8, Rotate: 45}, "rotation 45"},
		{"no name", Config{Source: dir, Size: 8}, "without a name"},
	} {
		_, err := NewCamera(c.cfg, nil)
		if err == nil || !errors.Is(err, ErrPermanent) || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
			t.Errorf("%s: %v, want a permanent error mentioning %q", c.name, err, c.want)
		}
		// The mark is for errors.Is, not for the user to read.
		if err != nil && bytes.Contains([]byte(err.Error()), []byte("permanent")) {
			t.Errorf("%s: the message shows the internal mark: %v", c.name, err)
		}
	}
	// A folder without images is found when opened, and is permanent.
	cam, cancel, done := runCamera(t, Config{Name: "empty", Source: dir, Size: 8})
	defer cancel()
	if err := <-done; !errors.Is(err, ErrPermanent) {
		t.Errorf("empty folder: %v", err)
	}
	if cam.Status().State != StateOffline {
		t.Error("empty folder camera not offline")
	}
	if _, err := ParseROI("1,2,3"); err == nil {
		t.Error("ParseROI accepted three numbers")
	}
	if r, err := ParseROI("10, 20, 30, 40"); err != nil || r != image.Rect(10, 20, 40, 60) {
		t.Errorf("ParseROI: %v %v", r, err)
	}
}

func TestMissingDeviceRetries(t *testing.T) {
	var states []State
	var mu sync.Mutex
	cam, err := NewCamera(Config{Name: "usb", Source: "/dev/video97", Size: 8, RetryStart: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond},
		func(s Status) { mu.Lock(); states = append(states, s.State); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cam.Run(ctx) }()
	waitFor(t, "the first failed attempt", 10*time.Second, func() bool { return cam.Status().State == StateReconnecting })
	time.Sleep(300 * time.Millisecond) // several more attempts
	st := cam.Status()
	if st.State != StateReconnecting || !bytes.Contains([]byte(st.Error), []byte("not present")) {
		t.Errorf("status %+v, want reconnecting with 'not present'", st)
	}
	if st.Reconnects != 0 {
		t.Errorf("%d reconnects counted, but no attempt succeeded", st.Reconnects)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(states) < 2 || states[0] != StateReconnecting || states[len(states)-1] != StateOffline {
		t.Errorf("state changes %v, want reconnecting ... offline", states)
	}
}

// mjpegServer serves a multipart MJPEG stream. Each connection gets
// framesPerConn frames, then the server either stalls (holds the connection
// silently) or drops it.
type mjpegServer struct {
	*httptest.Server
	framesPerConn int
	stall         atomic.Bool
	connections   atomic.Int32
	release       chan struct{}
}

func newMJPEGServer(t testing.TB, framesPerConn int, stall bool) *mjpegServer {
	s := &mjpegServer{framesPerConn: framesPerConn, release: make(chan struct{})}
	s.stall.Store(stall)
	frame := writeJPEG(t, "", color.RGBA{90, 120, 150, 255})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.connections.Add(1)
		w.Header().Set("Content-Type", "multipart/x-mixed-replace; boundary=frame")
		for range s.framesPerConn {
			fmt.Fprintf(w, "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", len(frame))
			w.Write(frame)
			w.Write([]byte("\r\n"))
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
		if s.stall.Load() {
			select { // hold the connection open, sending nothing
			case <-r.Context().Done():
			case <-s.release:
			}
		}
	}))
	t.Cleanup(func() { close(s.release); s.Close() })
	return s
}

func TestStalledStreamIsRecreated(t *testing.T) {
	srv := newMJPEGServer(t, 15, true)
	const stall, retry = 5 * time.Second, 200 * time.Millisecond
	cam, cancel, done := runCamera(t, Config{Name: "http", Source: srv.URL + "/stream.mjpg", Size: 16,
		StallTimeout: stall, RetryStart: retry, RetryMax: time.Second})
	defer cancel()
	go func() {
		for range cam.Frames() {
		}
	}()
	waitFor(t, "the first frames", 20*time.Second, func() bool { return cam.Status().State == StateOnline })
	// The server stalls after 15 frames (~0.3 s): the camera must recreate
	// the source within the stall time plus one retry (FFMPEG's 3 s read
	// timeout ends the blocked read before that), with a little slack for
	// opening the stream on a loaded machine.
	firstStall := time.Now()
	waitFor(t, "a reconnect after the stall", stall+retry+1500*time.Millisecond, func() bool { return srv.connections.Load() >= 2 })
	t.Logf("reconnected %s after the stall began", time.Since(firstStall).Round(100*time.Millisecond))
	waitFor(t, "frames after reconnecting", 20*time.Second, func() bool { return cam.Status().Frames > 15 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := cam.Status(); st.Reconnects < 1 {
		t.Errorf("status %+v, want at least one reconnect", st)
	}
}

func TestDroppedStreamReconnectsWithoutLeaks(t *testing.T) {
	srv := newMJPEGServer(t, 2, false)
	goroutines := runtime.NumGoroutine()
	mats := liveMats()
	cam, cancel, done := runCamera(t, Config{Name: "drops", Source: srv.URL + "/s.mjpg", Size: 16,
		RetryStart: time.Millisecond, RetryMax: time.Millisecond})
	go func() {
		for range cam.Frames() {
		}
	}()
	waitFor(t, "50 reconnect cycles", 120*time.Second, func() bool { return cam.Status().Reconnects >= 50 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := cam.Status(); st.Frames < 50 {
		t.Errorf("only %d frames over 50 connections", st.Frames)
	}
	if !matProfileEnabled {
		t.Log("built without -tags matprofile: Mat leaks not counted")
	} else if now := liveMats(); now != mats {
		t.Errorf("%d Mats alive after the camera stopped, %d before:\n%s", now, mats, matReport())
	}
	waitFor(t, "goroutines to wind down", 5*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines })
}

// bmpHeader is a 70-byte BMP (BITMAPINFOHEADER, 24 bits) claiming w x h
// pixels and holding none of them.
func bmpHeader(w, h int32) []byte {
	b := []byte("BM")
	b = binary.LittleEndian.AppendUint32(b, 70)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 54)
	for _, v := range []uint32{40, uint32(w), uint32(h)} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, 24)
	for _, v := range []uint32{0, 0, 2835, 2835, 0, 0} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return append(b, make([]byte, 16)...)
}

// Image files are refused from their header when they claim more pixels
// than the limit (a 70-byte BMP claiming 40000x40000 aborted the process
// in OpenCV), JPEG trailers after the end marker are fine, and a file that
// is no image is named as such.
func TestImageFileChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeJPEG(t, "", color.RGBA{0, 200, 0, 255})
	var png20k bytes.Buffer // a PNG header of 20000x20000 and no pixel data
	png20k.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32([]byte("IHDR"), 20000)
	ihdr = append(binary.BigEndian.AppendUint32(ihdr, 20000), 8, 2, 0, 0, 0)
	png20k.Write(binary.BigEndian.AppendUint32(nil, 13))
	png20k.Write(ihdr)
	png20k.Write(binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(ihdr)))
	for _, c := range []struct {
		path, want string // want "": read
	}{
		{write("bomb.bmp", bmpHeader(40000, 40000)), "40000x40000 pixels, over the limit of 50 megapixels"},
		{write("top-down-bomb.bmp", bmpHeader(40000, -40000)), "40000x40000 pixels"},
		{write("empty.bmp", bmpHeader(0, 10)), "0x10 pixels"},
		{write("huge.png", png20k.Bytes()), "20000x20000 pixels"},
		{write("trailer.jpg", append(append([]byte{}, good...), "camera trailer \x00\x01 after EOI"...)), ""},
		{write("notes.jpg", []byte("a text file named .jpg")), "not a jpg file: its first bytes are no JPEG or PNG signature"},
		{write("short.bmp", []byte("BM")), "not a BMP file"},
		// Found by FuzzImageFile: a small BMP with a DIB header size OpenCV
		// rejects by throwing, which aborted the process.
		{write("odd-header.bmp", []byte("BMF\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00#\x00\x00\x00\x13\x00\xfe\xff\xff\xff"+
			"\x01\x00\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x13\v\x00\x00\x13\v\x00\x00"+strings.Repeat("\x00", 12)+"@"+strings.Repeat("\x00", 15))),
			"OpenCV cannot decode it"},
	} {
		rgb, _, err := ReadImageRGB(c.path, 8, false)
		switch {
		case c.want == "" && (err != nil || len(rgb) != 8*8*3):
			t.Errorf("%s: %v", filepath.Base(c.path), err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one saying %q", filepath.Base(c.path), err, c.want)
		}
	}
	// The limit is the flag's: a 32x32 image over a limit of 1000 pixels.
	defer func(old int) { MaxImagePixels = old }(MaxImagePixels)
	MaxImagePixels = 1000
	if _, _, err := ReadImageRGB(write("small.jpg", good), 8, false); err == nil || !strings.Contains(err.Error(), "32x32") {
		t.Errorf("32x32 over a 1000-pixel limit: %v", err)
	}
}

// A FIFO named like an image is no image: folders leave it out and reading
// it by name is refused at once (it hung score and fit past Ctrl-C); a link
// to an image is one.
func TestFIFOsAreNoImages(t *testing.T) {
	dir := t.TempDir()
	writeJPEG(t, filepath.Join(dir, "good.jpg"), color.RGBA{200, 0, 0, 255})
	if err := os.Symlink(filepath.Join(dir, "good.jpg"), filepath.Join(dir, "link.jpg")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "pipe.png")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := ReadImageRGB(fifo, 8, false)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("reading a FIFO: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a FIFO named .png hangs")
	}
	src, err := openFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := src.(*folderSource).paths
	if len(got) != 2 || strings.Contains(strings.Join(got, " "), "pipe.png") {
		t.Errorf("folder images %v, want good.jpg and link.jpg", got)
	}
}

// damagedPartsServer serves one MJPEG stream: good parts with damaged ones
// among them, then holds the connection.
func damagedPartsServer(t *testing.T, parts [][]byte, announced []int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "multipart/x-mixed-replace;boundary=--part")
		for i, p := range parts {
			fmt.Fprintf(w, "--part\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", announced[i])
			w.Write(p)
			w.Write([]byte("\r\n"))
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

// An MJPEG camera sending a few damaged parts: none of them is delivered,
// each is counted, and the stream goes on (the camera never goes
// offline or reconnects). Through FFmpeg, the cut parts decoded with an
// older frame's rows and a part it could not decode dropped the stream.
func TestDamagedMJPEGPartsAreSkippedAndCounted(t *testing.T) {
	good := texturedJPEG(t, gocv.IMWriteJpegQuality, 90)
	scan := scanStart(t, good)
	corrupted := append([]byte{}, good...)
	for i := scan + 200; i < scan+260; i++ {
		corrupted[i] ^= 0x5A
		if corrupted[i] == 0xFF {
			corrupted[i] = 0x7F
		}
	}
	var parts [][]byte
	var announced []int
	add := func(p []byte, n int) { parts = append(parts, p); announced = append(announced, n) }
	for i := range 12 {
		switch i {
		case 2:
			add(good[:len(good)/2], len(good)/2) // cut at 50%, announced as such
		case 4:
			add(good[:len(good)/5], len(good)/5) // cut at 20%
		case 6:
			add(corrupted, len(corrupted)) // a corrupted scan
		case 8:
			add([]byte("<html>camera busy</html>"), 24) // no JPEG
		case 10:
			add(good[:len(good)-100], len(good)) // shorter than announced
		default:
			add(good, len(good))
		}
	}
	srv := damagedPartsServer(t, parts, announced)
	var mu sync.Mutex
	var states []State
	cam, cancel, done := runCameraWatching(t, Config{Name: "mjpeg", Source: srv.URL + "/video.mjpg", Size: 16,
		StallTimeout: 10 * time.Second}, func(s Status) { mu.Lock(); states = append(states, s.State); mu.Unlock() })
	go func() {
		for range cam.Frames() {
		}
	}()
	waitFor(t, "all 12 parts read", 20*time.Second, func() bool { st := cam.Status(); return st.Frames+st.Damaged >= 12 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := cam.Status()
	if st.Frames != 7 || st.Damaged != 5 || st.Reconnects != 0 {
		t.Errorf("status %+v: want 7 frames, 5 damaged, no reconnect", st)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range states {
		if s == StateReconnecting {
			t.Errorf("the camera reconnected: states %v", states)
		}
	}
}

// One outage with one recovery is one reconnect, however many attempts
// failed in between.
func TestReconnectsCountRecoveries(t *testing.T) {
	frame := writeJPEG(t, "", color.RGBA{90, 120, 150, 255})
	var conns atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := conns.Add(1)
		if n >= 2 && n <= 5 { // an outage: four refused attempts
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "multipart/x-mixed-replace; boundary=frame")
		for range 3 {
			fmt.Fprintf(w, "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", len(frame))
			w.Write(frame)
			w.Write([]byte("\r\n"))
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
		if n == 1 {
			return // the first connection drops
		}
		<-r.Context().Done()
	}))
	defer srv.Close()
	cam, cancel, done := runCamera(t, Config{Name: "outage", Source: srv.URL + "/s.mjpg", Size: 16,
		RetryStart: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	go func() {
		for range cam.Frames() {
		}
	}()
	waitFor(t, "frames after the outage", 30*time.Second, func() bool { return cam.Status().Frames >= 6 })
	cancel()
	<-done
	if st := cam.Status(); st.Reconnects != 1 {
		t.Errorf("status %+v after %d connections: want 1 reconnect", st, conns.Load())
	}
}
