package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/transformaly/transformaly/internal/guard"
)

// collector exposes the running pipeline's figures; it reads whatever
// pipeline is current, so a reload needs no re-registration.
type collector struct {
	d *Daemon

	frames, dropped, damaged, processed           *prometheus.Desc
	reconnects, events                            *prometheus.Desc
	nonFinite, detectorFailed, publishSkipped     *prometheus.Desc
	online, score, inferP50, inferP99             *prometheus.Desc
	queue, connected, queueDropped, queueRejected *prometheus.Desc
	snapshotsDropped                              *prometheus.Desc
	recentOver, promised, drift                   *prometheus.Desc
}

func newCollector(d *Daemon) *collector {
	cam := []string{"camera"}
	return &collector{d: d,
		frames:  prometheus.NewDesc("transformaly_frames_captured_total", "Frames delivered by the camera.", cam, nil),
		dropped: prometheus.NewDesc("transformaly_frames_dropped_total", "Frames replaced by newer ones before they were scored.", cam, nil),
		damaged: prometheus.NewDesc("transformaly_frames_damaged_total",
			"Frames cut or corrupted in transit (or image files that do not decode), skipped unscored.", cam, nil),
		processed:  prometheus.NewDesc("transformaly_frames_scored_total", "Frames scored by the detector.", cam, nil),
		reconnects: prometheus.NewDesc("transformaly_camera_reconnects_total", "Times a failed capture was recreated and delivered frames again.", cam, nil),
		events:     prometheus.NewDesc("transformaly_events_total", "Anomaly events opened.", cam, nil),
		nonFinite: prometheus.NewDesc("transformaly_scores_non_finite_total",
			"Frames whose score (or a part of it) was NaN or infinite, judged anomalous.", cam, nil),
		detectorFailed: prometheus.NewDesc("transformaly_frames_detector_failed_total",
			"Frames not scored because the detector failed on their batch.", cam, nil),
		publishSkipped: prometheus.NewDesc("transformaly_mqtt_publish_skipped_total",
			"Score, snapshot and stats messages not sent because the broker was unreachable (events are queued instead).", nil, nil),
		online:       prometheus.NewDesc("transformaly_camera_online", "1 while the camera delivers frames.", cam, nil),
		score:        prometheus.NewDesc("transformaly_score", "Last anomaly score.", cam, nil),
		inferP50:     prometheus.NewDesc("transformaly_inference_ms_p50", "Median detector batch time over recent frames.", cam, nil),
		inferP99:     prometheus.NewDesc("transformaly_inference_ms_p99", "99th percentile detector batch time over recent frames.", cam, nil),
		queue:        prometheus.NewDesc("transformaly_event_queue_length", "Events waiting for the broker.", nil, nil),
		queueDropped: prometheus.NewDesc("transformaly_event_queue_dropped_total", "Events lost to the queue bound.", nil, nil),
		queueRejected: prometheus.NewDesc("transformaly_event_queue_rejected_total",
			"Queued messages set aside in the queue's rejected/ folder as unreadable or unsendable.", nil, nil),
		connected: prometheus.NewDesc("transformaly_mqtt_connected", "1 while connected to the broker.", nil, nil),
		snapshotsDropped: prometheus.NewDesc("transformaly_snapshots_dropped_total",
			"Queued snapshots dropped past mqtt.snapshot_queue_mb while the broker was unreachable (their events stay).", nil, nil),
		recentOver: prometheus.NewDesc("transformaly_recent_over_threshold_ratio",
			"Share of the camera's last 500 scored frames over its threshold (defects included).", cam, nil),
		promised: prometheus.NewDesc("transformaly_promised_false_alarm_ratio",
			"Share of normal frames the bundle's calibration promised over the threshold in use.", cam, nil),
		drift: prometheus.NewDesc("transformaly_drift",
			"1 while the recent share over the threshold is above the promise beyond chance: the normal has moved, or defects abound.", cam, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.frames, c.dropped, c.damaged, c.processed, c.reconnects, c.events, c.nonFinite, c.detectorFailed, c.publishSkipped, c.online, c.score, c.inferP50, c.inferP99, c.queue, c.queueDropped, c.queueRejected, c.snapshotsDropped, c.connected, c.recentOver, c.promised, c.drift} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	p := c.d.current()
	if p != nil {
		for _, cam := range p.cameras {
			st := cam.cam.Status()
			n := cam.cfg.Name
			online := 0.0
			if st.State == "online" {
				online = 1
			}
			pct := cam.latency.percentiles(0.5, 0.99)
			ch <- prometheus.MustNewConstMetric(c.frames, prometheus.CounterValue, float64(st.Frames), n)
			ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped+cam.dropped.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.damaged, prometheus.CounterValue, float64(st.Damaged), n)
			ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(cam.processed.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(st.Reconnects), n)
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(cam.events.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.nonFinite, prometheus.CounterValue, float64(cam.nonFinite.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.detectorFailed, prometheus.CounterValue, float64(cam.detectorFailed.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.online, prometheus.GaugeValue, online, n)
			ch <- prometheus.MustNewConstMetric(c.score, prometheus.GaugeValue, math.Float64frombits(cam.lastScore.Load()), n)
			ch <- prometheus.MustNewConstMetric(c.inferP50, prometheus.GaugeValue, pct[0], n)
			ch <- prometheus.MustNewConstMetric(c.inferP99, prometheus.GaugeValue, pct[1], n)
			d := p.driftOf(cam)
			drifted := 0.0
			if d.Drifted {
				drifted = 1
			}
			ch <- prometheus.MustNewConstMetric(c.recentOver, prometheus.GaugeValue, d.Share, n)
			if !math.IsNaN(d.Promised) {
				ch <- prometheus.MustNewConstMetric(c.promised, prometheus.GaugeValue, d.Promised, n)
			}
			ch <- prometheus.MustNewConstMetric(c.drift, prometheus.GaugeValue, drifted, n)
		}
	}
	connected := 0.0
	if c.d.pub.Connected() {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(c.d.queue.Len()))
	ch <- prometheus.MustNewConstMetric(c.queueDropped, prometheus.CounterValue, float64(c.d.queue.Dropped()))
	ch <- prometheus.MustNewConstMetric(c.publishSkipped, prometheus.CounterValue, float64(c.d.pub.Skipped()))
	ch <- prometheus.MustNewConstMetric(c.queueRejected, prometheus.CounterValue, float64(c.d.queue.Rejected()))
	ch <- prometheus.MustNewConstMetric(c.snapshotsDropped, prometheus.CounterValue, float64(c.d.queue.SnapshotsDropped()))
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, connected)
}

// serveHTTP starts /metrics, /healthz (the process answers) and /readyz
// (models warmed and at least one camera online).
func (d *Daemon) serveHTTP(address string, console http.Handler) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(d), guard.Panics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p := d.current(); p != nil && p.ready() {
			fmt.Fprintln(w, "ready")
			return
		}
		http.Error(w, "not ready: models loading, no camera online, or the broker refusing what is published", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("POST /trigger/{camera}", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 256))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, err := d.TriggerPart(r.PathValue("camera"), string(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(map[string]string{"camera": r.PathValue("camera"), "part_id": id})
	})
	if console != nil {
		mux.Handle("/", console)
	}
	return listen("metrics.address", address, guard.HTTP("http", mux))
}

// listen serves h at address (named by its configuration key) until the
// returned stop is called.
func listen(key, address string, h http.Handler) (func(), error) {
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, address, err)
	}
	// Idle keep-alive connections were kept forever: each is a goroutine
	// and a file descriptor for as long as a client leaves it open. The
	// write timeout bounds requests; the console's live streams extend it
	// frame by frame.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("HTTP server stopped", "key", key, "err", err)
		}
	}()
	slog.Info("HTTP endpoints listening", "key", key, "address", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
