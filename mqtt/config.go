package mqtt

import "time"

// Config says where and how to publish (the daemon configuration's mqtt
// section; the daemon checks it, key by key).
type Config struct {
	// Broker is a URL (tcp://host:1883, ssl://host:8883, ws://...) or
	// "embedded" for the in-process broker.
	Broker          string `yaml:"broker"`
	EmbeddedAddress string `yaml:"embedded_address"`
	ClientID        string `yaml:"client_id"`
	TopicPrefix     string `yaml:"topic_prefix"`
	// ScoreQoS is the QoS of per-frame scores (events are always QoS 1).
	ScoreQoS byte `yaml:"score_qos"`
	// ScoreRate limits score messages per camera per second (0: every frame).
	ScoreRate    float64 `yaml:"score_rate"`
	Username     string  `yaml:"username"`
	PasswordFile string  `yaml:"password_file"`
	PasswordEnv  string  `yaml:"password_env"`
	TLS          struct {
		CAFile             string `yaml:"ca_file"`
		CertFile           string `yaml:"cert_file"`
		KeyFile            string `yaml:"key_file"`
		InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	} `yaml:"tls"`
	Snapshots *bool `yaml:"snapshots"`
	// SnapshotSize is the longest side of snapshot JPEGs in pixels: the
	// camera frame (after crop, rotation and flip) shrunk to fit, not the
	// model's small square input. Frames are kept at full resolution until
	// a snapshot is drawn.
	SnapshotSize        int    `yaml:"snapshot_size"`
	HomeAssistant       bool   `yaml:"home_assistant"`
	HomeAssistantPrefix string `yaml:"home_assistant_prefix"`
	// StatsInterval is how often <prefix>/stats is published.
	StatsInterval time.Duration `yaml:"stats_interval"`
	// KeepAlive is the MQTT keepalive: the broker publishes our Last Will
	// (status offline) about 1.5 keepalives after a hung daemon or a cut
	// network went quiet.
	KeepAlive time.Duration `yaml:"keepalive"`
	// QueueLimit bounds the events kept while the broker is unreachable.
	QueueLimit int `yaml:"queue_limit"`
	// SnapshotQueueMB bounds the snapshots kept with them (the oldest goes
	// first past it; events are never dropped for snapshots).
	SnapshotQueueMB int `yaml:"snapshot_queue_mb"`
}
