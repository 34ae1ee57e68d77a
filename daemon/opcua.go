package daemon

import (
	"math"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/opcua"
)

// opcuaSource is the daemon as the OPC UA address space sees it: it reads
// the running pipeline's cameras, and its changes and triggers go the
// way MQTT's commands go (control.json, the retained state).
type opcuaSource struct{ d *Daemon }

var _ opcua.Source = opcuaSource{}

func (o opcuaSource) Cameras() []opcua.Camera {
	p := o.d.current()
	if p == nil {
		return nil
	}
	out := make([]opcua.Camera, 0, len(p.cameras))
	for _, c := range p.cameras {
		name := c.cfg.Name
		st := c.cam.Status()
		threshold := c.threshold
		if t, ok := o.d.control.Threshold(name); ok {
			threshold = t
		}
		scored := c.processed.Load() > 0
		score := math.NaN()
		if scored {
			score = math.Float64frombits(c.lastScore.Load())
		}
		out = append(out, opcua.Camera{Name: name, Triggered: c.trig != nil, Online: st.State == capture.StateOnline,
			Ready: o.d.Ready(name), Busy: o.d.Busy(name), Detect: o.d.control.Detect(name), Threshold: threshold,
			// A score that is no number is anomalous, as the pipeline judges it.
			LastScore: score, LastAnomalous: scored && !(score <= threshold), FPS: st.FPS})
	}
	return out
}

func (o opcuaSource) Trigger(camera, partID string) (string, error) {
	return o.d.TriggerPart(camera, partID)
}

func (o opcuaSource) SetDetect(camera string, on bool) error { return o.d.SetDetect(camera, on) }

func (o opcuaSource) SetThreshold(camera string, threshold float64) error {
	return o.d.SetThreshold(camera, &threshold)
}

// startOPCUA serves the OPC UA address space (opcua.address).
func (d *Daemon) startOPCUA(cfg Config) error {
	opts, err := cfg.OPCUA.Options(cfg.StateDirectory)
	if err != nil {
		return err
	}
	opts.Version, opts.Started = models.Version, d.started
	d.opcua, err = opcua.Start(opts, opcuaSource{d})
	return err
}

// opcuaResult is a part result as a camera's LastResult shows it.
func opcuaResult(r PartResult) opcua.Result {
	res := opcua.Result{PartID: r.PartID, Verdict: r.Verdict, Score: math.NaN(), TriggerTime: r.TriggerTime, ResultTime: r.ResultTime, LatencyMS: r.LatencyMS}
	if r.Score != nil {
		res.Score = *r.Score
	}
	if g := r.Region; g != nil {
		res.Region = []int32{int32(g.X), int32(g.Y), int32(g.Width), int32(g.Height)}
	}
	return res
}
