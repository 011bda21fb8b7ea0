package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
)

// TestExternalLineEscapesOrigin: an origin name with a newline and a
// terminal escape prints quoted in `dump external`, on one line.
func TestExternalLineEscapesOrigin(t *testing.T) {
	e := cache.ExternalEntry{Origin: "fw-b\n\x1b[2J", Received: time.Now()}
	got, _ := externalLine(&e, time.Now())
	if strings.ContainsAny(got, "\n\x1b") {
		t.Fatalf("origin printed raw: %q", got)
	}
	e.Origin = "fw-b"
	if got, _ := externalLine(&e, time.Now()); got != "fw-b" {
		t.Fatalf("plain origin printed as %q", got)
	}
}
