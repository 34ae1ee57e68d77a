package guard

import (
	"net/http"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func count(adapter string) float64 {
	var m dto.Metric
	Panics.WithLabelValues(adapter).Write(&m)
	return m.GetCounter().GetValue()
}

// A panicking handler answers 500 and is counted; the server lives on.
// net/http's own abort is passed through, not counted as a bug.
func TestHTTPRecoversAndCounts(t *testing.T) {
	h := HTTP("test", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler)
		}
		panic("a bug")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	if rec.Code != http.StatusInternalServerError || count("test") != 1 {
		t.Errorf("status %d, %g panics counted; want 500 and 1", rec.Code, count("test"))
	}
	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Errorf("the abort came back as %v", r)
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/abort", nil))
	}()
	if count("test") != 1 {
		t.Errorf("an abort was counted as a panic")
	}
}
