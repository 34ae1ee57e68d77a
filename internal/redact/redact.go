// Package redact keeps secrets out of logs and error messages.
package redact

import "net/url"

// URL hides the password of a URL such as rtsp://user:pass@cam/stream or
// tcp://user:pass@broker:1883; anything else comes back as it is.
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}
