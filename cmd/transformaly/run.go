package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/daemon"
)

// daemonFlags are the command-line overrides of the configuration file.
type daemonFlags struct {
	config   string
	broker   string
	metrics  string
	stateDir string
	provider string
	library  string
}

func (f *daemonFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.config, "config", daemon.DefaultConfigPath, "YAML configuration file")
	fs.StringVar(&f.broker, "broker", "", "MQTT broker URL or \"embedded\" (overrides mqtt.broker)")
	fs.StringVar(&f.metrics, "metrics-address", "", "host:port of /metrics, /healthz and /readyz, or \"off\" (overrides metrics.address)")
	fs.StringVar(&f.stateDir, "state-dir", "", "directory for the event queue (overrides state_directory)")
	fs.StringVar(&f.provider, "provider", "", "execution provider: auto, tensorrt, cuda or cpu (overrides detector.provider)")
	fs.StringVar(&f.library, "provider-library", "", "execution-provider plugin libraries, comma-separated (overrides detector.provider_library)")
}

func (f *daemonFlags) override(c *daemon.Config) {
	if f.broker != "" {
		c.MQTT.Broker = f.broker
	}
	if f.metrics != "" {
		c.Metrics.Address = f.metrics
	}
	if f.stateDir != "" {
		c.StateDirectory = f.stateDir
	}
	if f.provider != "" {
		c.Detector.Provider = f.provider
	}
	if f.library != "" {
		c.Detector.ProviderLibrary = f.library
	}
}

func runCommand(fs *pflag.FlagSet) func([]string) error {
	var flags daemonFlags
	var rt runtimeFlags
	flags.register(fs)
	check := fs.Bool("check-config", false, "validate the configuration (and its bundles: that they exist, and that a tiled bundle's tile fits the camera's roi or frame size) and exit")
	rt.register(fs)
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if *check {
			cfg, err := daemon.LoadAndValidate(flags.config, flags.override)
			if err != nil {
				return err
			}
			if err := cfg.CheckBundles(); err != nil {
				return fmt.Errorf("config %s is invalid:\n  %w", flags.config, err)
			}
			fmt.Printf("config %s is valid\n", flags.config)
			// A camera unplugged now is no error (the daemon waits for it),
			// but worth a word before a deployment.
			for i, cam := range cfg.Cameras {
				if kind, dev, _ := capture.ParseKind(cam.Source); kind == capture.KindDevice && strings.HasPrefix(dev, "/dev/") {
					if _, err := os.Stat(dev); err != nil {
						fmt.Printf("note: cameras[%d] (%s): %s is not there now; the daemon will keep trying to open it\n", i, cam.Name, dev)
					}
				}
			}
			return nil
		}
		if err := rt.init(); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return daemon.Run(ctx, daemon.Options{ConfigPath: flags.config, Override: func(c *daemon.Config) {
			flags.override(c)
			if rt.threads > 0 {
				c.Detector.Threads = rt.threads
			}
		}})
	}
}
