// Package guard keeps a panic in one request's handler (an MQTT command, a
// Modbus request, a console request) from ending the daemon: the panic is
// logged with its stack, counted by adapter, and the request fails alone.
// The Modbus library does not recover its handlers, and paho runs ours on
// its own goroutines, where an unrecovered panic ends the process.
package guard

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Panics counts recovered panics by adapter (mqtt, modbus, console); the
// daemon registers it with its metrics.
var Panics = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "transformaly_handler_panics_total",
	Help: "Panics recovered in a request handler (logged with their stack); the request failed, the daemon went on.",
}, []string{"adapter"})

// Recover is deferred by a handler: on a panic it logs what was being done
// with the stack, counts it, and calls then (to fail the request, close a
// connection), if not nil. It must be the deferred call itself, since
// recover works only there.
func Recover(adapter, what string, then func()) {
	r := recover()
	if r == nil {
		return
	}
	if r == http.ErrAbortHandler { //nolint:errorlint // a sentinel value, compared as net/http does
		panic(r) // net/http's own way to abort a response, not a bug
	}
	Panics.WithLabelValues(adapter).Inc()
	slog.Error("handler panicked; the request failed, the daemon goes on", "adapter", adapter, "handling", what,
		"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if then != nil {
		then()
	}
}

// HTTP recovers a panic in h's handling of a request: it is logged,
// counted, answered 500 where nothing was written yet, and the connection
// goes on serving others (net/http alone would log it past slog, uncounted).
func HTTP(adapter string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer Recover(adapter, r.Method+" "+r.URL.Path, func() {
			http.Error(w, "internal error (logged by the daemon)", http.StatusInternalServerError)
		})
		h.ServeHTTP(w, r)
	})
}
