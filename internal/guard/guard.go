// Package guard keeps a panic in one request's handler (an MQTT command, a
// Modbus request, a console request) from ending the daemon: the panic is
// logged with its stack, counted by adapter, and the request fails alone.
// The Modbus library does not recover its handlers, and paho runs ours on
// its own goroutines, where an unrecovered panic ends the process.
package guard

import (
	"fmt"
	"log/slog"
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
	Panics.WithLabelValues(adapter).Inc()
	slog.Error("handler panicked; the request failed, the daemon goes on", "adapter", adapter, "handling", what,
		"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if then != nil {
		then()
	}
}
