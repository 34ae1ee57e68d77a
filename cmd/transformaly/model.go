package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// modelActions are what `model` asks a running daemon for, through its
// console's API (the same checks as the page: web.allow_changes, the
// password, the page's header): one way to change a live bundle.
var modelActions = map[string]string{
	"status": "", "refit": "", "cancel": "", "unshadow": "", "rollback": "",
	"compare": "CANDIDATE", "shadow": "CANDIDATE", "promote": "CANDIDATE",
}

func modelCommand(fs *pflag.FlagSet) func([]string) error {
	base := fs.String("url", "http://127.0.0.1:9108", "the daemon's console (metrics.address, or web.address when set)")
	camera := fs.String("camera", "", "the camera (required)")
	username := fs.String("username", "", "web.username, when the console has a password")
	passwordFile := fs.String("password-file", "", "file holding the console's password (web.password_file)")
	wait := fs.Bool("wait", false, "after refit or compare, print the job's progress until it ends; fail if it did not succeed")
	return func(args []string) error {
		if *camera == "" {
			return usageError("--camera is required")
		}
		if len(args) == 0 {
			return usageError("give an action: status, refit, cancel, compare CANDIDATE, shadow CANDIDATE, unshadow, promote CANDIDATE or rollback")
		}
		action, rest := args[0], args[1:]
		arg, known := modelActions[action]
		if !known {
			return usageError("unknown action %q", action)
		}
		if (arg != "") != (len(rest) == 1) || len(rest) > 1 {
			return usageError("%s takes %s", action, map[bool]string{true: "a candidate id (see status)", false: "no argument"}[arg != ""])
		}
		password := ""
		if *passwordFile != "" {
			b, err := os.ReadFile(*passwordFile)
			if err != nil {
				return fmt.Errorf("--password-file: %w", err)
			}
			password = strings.TrimRight(string(b), "\r\n")
		}
		c := consoleClient{base: strings.TrimRight(*base, "/"), username: *username, password: password}
		modelURL := "/api/cameras/" + url.PathEscape(*camera) + "/model"
		if action != "status" {
			if _, err := c.do(http.MethodPost, modelURL+"/"+action, strings.Join(rest, "")); err != nil {
				return fmt.Errorf("%s: %w", action, err)
			}
		}
		if *wait && slices.Contains([]string{"refit", "compare"}, action) {
			return c.waitForJob(modelURL)
		}
		status, err := c.do(http.MethodGet, modelURL, "")
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(status)
		return err
	}
}

// consoleClient calls a daemon's console API as its page does.
type consoleClient struct{ base, username, password string }

func (c consoleClient) do(method, path, body string) ([]byte, error) {
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Transformaly", "1")
	if c.password != "" {
		req.SetBasicAuth(c.username, c.password)
	}
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("the daemon's console at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return data, nil
}

// waitForJob prints the camera's job progress until it ends.
func (c consoleClient) waitForJob(modelURL string) error {
	last := ""
	for {
		data, err := c.do(http.MethodGet, modelURL, "")
		if err != nil {
			return err
		}
		var m struct {
			Job *struct {
				Kind, State, Stage, Error string
				Fraction                  float64
				LeftS                     float64 `json:"left_s"`
			}
		}
		if err := json.Unmarshal(data, &m); err != nil || m.Job == nil {
			return fmt.Errorf("no job in the daemon's answer: %s", data)
		}
		j := m.Job
		line := fmt.Sprintf("%s %s: %s %.0f%%", j.Kind, j.State, j.Stage, 100*j.Fraction)
		if j.LeftS > 0 {
			line += fmt.Sprintf(", about %.0f s left", j.LeftS)
		}
		if line != last {
			fmt.Fprintln(os.Stderr, line)
			last = line
		}
		switch j.State {
		case "done":
			_, err := os.Stdout.Write(data)
			return err
		case "failed", "cancelled":
			return fmt.Errorf("%s %s: %s", j.Kind, j.State, j.Error)
		}
		time.Sleep(time.Second)
	}
}
