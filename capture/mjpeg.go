package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/jpeg"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/redact"
)

// mjpegSource reads an HTTP multipart MJPEG stream (the "/video.mjpg" or
// "/stream" endpoint of IP cameras and ESP32 boards) itself rather than
// through FFmpeg. FFmpeg's decoder conceals a cut or corrupted part (the
// missing rows keep an older frame's pixels: scored normal, a defect there
// unseen), and a part it cannot decode failed the read, so the camera
// dropped a working stream. Here each part is checked whole (its announced
// length, then libjpeg, see checkJPEG) and a damaged part is a damaged
// frame, skipped and counted, while the stream goes on.
type mjpegSource struct {
	body     io.ReadCloser
	r        streamReader
	boundary string
	cancel   context.CancelFunc
	timeout  time.Duration // for one whole part
	parsed   int           // parts read, damaged or not
}

// maxMJPEGPart bounds one part's bytes (a 50 MP JPEG is a fraction of it).
const maxMJPEGPart = 64 << 20

// errNotMJPEG says a URL answers with something other than a multipart
// MJPEG stream (HLS, MP4 over HTTP, an error page): FFmpeg reads it.
var errNotMJPEG = errors.New("not a multipart MJPEG stream")

// mjpegTransport bounds connecting and waiting for headers as FFmpeg's
// options do (see ffmpegOptions); reading parts is bounded per part.
var mjpegTransport = &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	TLSHandshakeTimeout:   3 * time.Second,
	ResponseHeaderTimeout: 3 * time.Second,
	DisableCompression:    true,
	DisableKeepAlives:     true, // a stream is one long response; an idle connection would keep two goroutines
}

// isHTTP says whether a stream URL is one openMJPEG may read.
func isHTTP(target string) bool {
	return strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://")
}

// openMJPEG requests target (until ctx ends) and keeps the response if it is a multipart
// stream. An unreachable server is an error; any other answer (a TLS
// certificate Go refuses but FFmpeg accepts, an HTTP error, another
// content type) is errNotMJPEG, for FFmpeg to try.
func openMJPEG(ctx context.Context, target string, timeout time.Duration) (*mjpegSource, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: %v", errNotMJPEG, redact.ParseError(err))
	}
	resp, err := (&http.Client{Transport: mjpegTransport}).Do(req)
	if err != nil {
		cancel()
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("open stream %s: not reachable (%v)", redact.URL(target), op.Err)
		}
		return nil, errNotMJPEG
	}
	media, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	// Some cameras write the boundary parameter with the two dashes its
	// delimiter lines start with.
	boundary := strings.TrimPrefix(params["boundary"], "--")
	if resp.StatusCode != http.StatusOK || err != nil || !strings.HasPrefix(media, "multipart/") || boundary == "" {
		resp.Body.Close()
		cancel()
		return nil, errNotMJPEG
	}
	return &mjpegSource{body: resp.Body, r: streamReader{r: resp.Body}, boundary: boundary, cancel: cancel, timeout: timeout}, nil
}

// Read decodes the next part into dst. A damaged part is an error wrapping
// ErrDamaged (the stream goes on); a stream that stalls for the timeout,
// ends or breaks is an error the camera reconnects on.
func (s *mjpegSource) Read(dst *gocv.Mat) error {
	timer := time.AfterFunc(s.timeout, s.cancel) // a stalled read ends with the body
	defer timer.Stop()
	data, err := s.nextPart()
	if err != nil {
		if !timer.Stop() {
			return fmt.Errorf("no MJPEG part for %s", s.timeout)
		}
		return err
	}
	if !isJPEG(data) {
		return damaged(fmt.Errorf("MJPEG part of %d bytes is no JPEG", len(data)))
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return damaged(fmt.Errorf("MJPEG part's JPEG header: %v", err))
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > int64(MaxImagePixels) {
		return damaged(fmt.Errorf("MJPEG part of %dx%d pixels, over the limit of %d megapixels", cfg.Width, cfg.Height, MaxImagePixels/1_000_000))
	}
	if err := decodeInto(data, dst); err != nil {
		if errors.Is(err, ErrDamaged) {
			return err
		}
		return damaged(fmt.Errorf("MJPEG part: %v", err))
	}
	return nil
}

// nextPart reads one part whole: its boundary line, its headers, and its
// bytes, by its Content-Length header when it has one (the part is then
// complete without waiting for the next part's boundary, a frame's worth
// of latency that mime/multipart would add), else up to the next boundary.
// A part shorter than it announced (a sender that cut a frame) is damaged,
// and the part after it is still found.
func (s *mjpegSource) nextPart() ([]byte, error) {
	length, err := s.partHeader()
	if err != nil {
		return nil, err
	}
	s.parsed++
	delim := []byte("\r\n--" + s.boundary)
	if length < 0 {
		data, err := s.r.until(delim, maxMJPEGPart)
		if err != nil {
			return nil, fmt.Errorf("read an MJPEG part: %w", err)
		}
		s.r.unread(delim[2:]) // the next part's boundary line
		return data, nil
	}
	if length > maxMJPEGPart {
		return nil, fmt.Errorf("read an MJPEG part: it announces %d bytes, over the limit of %d MiB", length, maxMJPEGPart>>20)
	}
	data, err := s.r.take(length)
	if err != nil {
		return nil, fmt.Errorf("read an MJPEG part: %w", err)
	}
	if i := bytes.Index(data, delim); i >= 0 {
		s.r.unread(data[i+2:])
		return nil, damaged(fmt.Errorf("MJPEG part has %d of the %d bytes its header announced", i, length))
	}
	return data, nil
}

// partHeader finds the next boundary line and reads the part's headers; it
// returns the part's Content-Length, or -1 without one.
func (s *mjpegSource) partHeader() (int, error) {
	for skipped := 0; ; {
		line, err := s.r.line()
		switch {
		case errors.Is(err, io.EOF):
			return 0, errors.New("the server ended the MJPEG stream")
		case err != nil && !errors.Is(err, errLongLine):
			return 0, fmt.Errorf("read the MJPEG stream: %w", err)
		}
		line = strings.TrimSpace(line)
		if line == "--"+s.boundary+"--" {
			return 0, errors.New("the server ended the MJPEG stream")
		}
		if line == "--"+s.boundary {
			break
		}
		skipped += len(line) + 1
		if s.parsed == 0 && skipped > 1<<20 {
			return 0, fmt.Errorf("%w: no boundary line %q in its first MiB", errNotMJPEG, "--"+s.boundary)
		}
		if skipped > maxMJPEGPart {
			return 0, fmt.Errorf("read the MJPEG stream: no boundary %q in %d MiB", s.boundary, maxMJPEGPart>>20)
		}
	}
	length := -1
	for range 64 {
		line, err := s.r.line()
		if err != nil {
			return 0, fmt.Errorf("read an MJPEG part's headers: %w", err)
		}
		if line = strings.TrimSpace(line); line == "" {
			return length, nil
		}
		key, value, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(key), "Content-Length") {
			if n, err := strconv.Atoi(strings.TrimSpace(value)); err == nil && n >= 0 {
				length = n
			}
		}
	}
	return 0, errors.New("read an MJPEG part's headers: more than 64 lines")
}

// FrameRate is unknown: an MJPEG stream does not announce one.
func (s *mjpegSource) FrameRate() float64 { return 0 }

func (s *mjpegSource) Close() {
	s.cancel()
	s.body.Close()
}

// streamReader is the buffered reader the MJPEG parser needs: lines, counted
// bytes, bytes up to a delimiter, and bytes put back in front (bufio cannot
// put back more than one byte). By hand because no reader in the standard
// library or the module set here does all four.
type streamReader struct {
	r   io.Reader
	buf []byte // read, not yet consumed
}

// maxLine bounds a boundary or header line; a longer one is skipped.
const maxLine = 4096

var errLongLine = errors.New("line too long")

// fill reads more into buf.
func (b *streamReader) fill() error {
	if cap(b.buf)-len(b.buf) < 32<<10 {
		grown := make([]byte, len(b.buf), 2*len(b.buf)+64<<10)
		copy(grown, b.buf)
		b.buf = grown
	}
	n, err := b.r.Read(b.buf[len(b.buf):cap(b.buf)])
	b.buf = b.buf[:len(b.buf)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// line returns the next line without its line break; a line over maxLine
// comes back cut, with errLongLine.
func (b *streamReader) line() (string, error) {
	for {
		if i := bytes.IndexByte(b.buf, '\n'); i >= 0 {
			l := string(b.buf[:i])
			b.buf = b.buf[i+1:]
			return l, nil
		}
		if len(b.buf) > maxLine {
			l := string(b.buf)
			b.buf = b.buf[len(b.buf):]
			return l, errLongLine
		}
		if err := b.fill(); err != nil {
			return "", err
		}
	}
}

// take returns the next n bytes.
func (b *streamReader) take(n int) ([]byte, error) {
	for len(b.buf) < n {
		if err := b.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	out := bytes.Clone(b.buf[:n])
	b.buf = b.buf[n:]
	return out, nil
}

// until returns the bytes before delim (at most limit) and consumes delim.
func (b *streamReader) until(delim []byte, limit int) ([]byte, error) {
	from := 0
	for {
		if i := bytes.Index(b.buf[from:], delim); i >= 0 {
			out := bytes.Clone(b.buf[:from+i])
			b.buf = b.buf[from+i+len(delim):]
			return out, nil
		}
		if len(b.buf) > limit {
			return nil, fmt.Errorf("no boundary in %d MiB", limit>>20)
		}
		from = max(0, len(b.buf)-len(delim)+1)
		if err := b.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// unread puts p back in front of what is still to read.
func (b *streamReader) unread(p []byte) {
	b.buf = append(bytes.Clone(p), b.buf...)
}
