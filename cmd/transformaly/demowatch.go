package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// demoWatcher is the demo's MQTT subscriber: it prints scores now and then,
// every event, and saves snapshots (into snapshots, unless ""), the way a
// dashboard would see them.
type demoWatcher struct {
	client mqtt.Client
}

func newDemoWatcher(broker, snapshots string) (*demoWatcher, error) {
	w := &demoWatcher{}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("transformaly-demo-viewer")
	w.client = mqtt.NewClient(opts)
	if tok := w.client.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect to the demo broker: %v", tok.Error())
	}
	tok := w.client.Subscribe("transformaly/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		topic := m.Topic()
		switch {
		case strings.HasSuffix(topic, "/score"):
			var s struct {
				Camera    string  `json:"camera"`
				Frame     uint64  `json:"frame"`
				Score     float64 `json:"score"`
				Threshold float64 `json:"threshold"`
				Anomalous bool    `json:"anomalous"`
			}
			if json.Unmarshal(m.Payload(), &s) == nil && (s.Frame%15 == 0 || s.Anomalous) {
				verdict := "normal"
				if s.Anomalous {
					verdict = "ANOMALOUS"
				}
				fmt.Printf("  %-22s frame %4d  score %9.2f  (threshold %.2f)  %s\n", topic, s.Frame, s.Score, s.Threshold, verdict)
			}
		case strings.HasSuffix(topic, "/snapshot") && snapshots == "":
			fmt.Printf("  %-22s %d-byte JPEG with the anomaly heatmap (see the console's events)\n", topic, len(m.Payload()))
		case strings.HasSuffix(topic, "/snapshot"):
			path := filepath.Join(snapshots, fmt.Sprintf("%s.jpg", time.Now().Format("150405.000")))
			if os.WriteFile(path, m.Payload(), 0o644) == nil {
				fmt.Printf("  %-22s %d-byte JPEG with the anomaly heatmap -> %s\n", topic, len(m.Payload()), path)
			}
		case strings.HasSuffix(topic, "/stats"):
		default:
			fmt.Printf("  %-22s %s\n", topic, m.Payload())
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	return w, nil
}

func (w *demoWatcher) close() { w.client.Disconnect(100) }
