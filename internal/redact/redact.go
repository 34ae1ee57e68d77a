// Package redact keeps secrets out of logs and error messages.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// URL hides the password of a URL such as rtsp://user:pass@cam/stream or
// tcp://user:pass@broker:1883; anything else comes back as it is. A URL
// that does not parse (a raw % or # in the password) is redacted all the
// same: everything between "scheme://user:" and the last @ goes.
func URL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	scheme := strings.Index(s, "://")
	if scheme < 0 {
		return s
	}
	rest := s[scheme+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	colon := strings.Index(rest[:at], ":")
	if colon < 0 {
		return s // a user and no password
	}
	return s[:scheme+3] + rest[:colon] + ":xxxxx" + rest[at:]
}

// ParseError is url.Parse's error without the URL it quotes (which holds
// the password): just what is wrong with it.
func ParseError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
