package cache

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// changesText prints taken changes as sorted "port state" or "port deleted".
func changesText(ch []Change) string {
	out := changeLines(ch)
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// changeLines is each change as "port state" or "port deleted", in order.
func changeLines(ch []Change) []string {
	var out []string
	for _, c := range ch {
		if c.Deleted {
			out = append(out, fmt.Sprintf("%d deleted", c.Flow.Orig.SrcPort))
		} else {
			out = append(out, fmt.Sprintf("%d %s", c.Flow.Orig.SrcPort, flow.TCPStateName(c.Flow.TCP.State)))
		}
	}
	return out
}

func TestMinAge(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewInternal(nil)
	c.SetClock(func() time.Time { return now })
	old := tcp(0, flow.TCPEstablished, 600)
	c.Upsert(&old) // cached before the delay is set: replicated as usual
	c.SetMinAge(3 * time.Second)

	short, long := tcp(1, flow.TCPSynSent, 120), tcp(2, flow.TCPSynSent, 120)
	c.Upsert(&short)
	c.Upsert(&long)
	if got := changesText(c.TakeChanges(0)); got != "1000 ESTABLISHED" {
		t.Fatalf("changes before min_age: %q, want only the old flow", got)
	}
	if wait := c.PromoteAged(); wait != 3*time.Second {
		t.Errorf("PromoteAged at birth: next in %v, want 3s", wait)
	}

	now = now.Add(time.Second)
	long.TCP.State = flow.TCPEstablished
	c.Upsert(&long)     // a young flow's update is not sent on its own
	c.Delete(short.Key) // dies young: neither it nor its destroy is sent
	c.PromoteAged()
	if got := changesText(c.TakeChanges(0)); got != "" {
		t.Fatalf("changes at 1s: %q, want none", got)
	}

	now = now.Add(2 * time.Second)
	if wait := c.PromoteAged(); wait != 0 {
		t.Errorf("after promotion: next in %v, want 0 (none waiting)", wait)
	}
	if got := changesText(c.TakeChanges(0)); got != "1002 ESTABLISHED" {
		t.Fatalf("changes at 3s: %q, want the long flow in its latest state", got)
	}
	c.Delete(long.Key) // replicated before: its destroy is sent
	if got := changesText(c.TakeChanges(0)); got != "1002 deleted" {
		t.Fatalf("destroy of a replicated flow: %q", got)
	}
	st := c.Stats()
	if st.NeverSent != 1 || st.Young != 0 {
		t.Errorf("stats: NeverSent %d Young %d, want 1 and 0", st.NeverSent, st.Young)
	}
}

// A young flow that a bulk already sent has its destroy replicated.
func TestMinAgeBulkSendsDestroy(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewInternal(nil)
	c.SetClock(func() time.Time { return now })
	c.SetMinAge(5 * time.Second)
	f := tcp(1, flow.TCPEstablished, 600)
	c.Upsert(&f)
	now = now.Add(time.Second)
	if keys := c.Keys(); len(keys) != 1 {
		t.Fatalf("bulk keys %v", keys)
	}
	c.Delete(f.Key)
	if got := changesText(c.TakeChanges(0)); got != "1001 deleted" {
		t.Fatalf("got %q, want the destroy of the flow the bulk sent", got)
	}
}

// A key replicated, destroyed and re-created at once: the destroy goes out
// (the peer must not keep the old flow), and the new flow waits its minimum
// age like any other.
func TestMinAgeReplacedKey(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewInternal(nil)
	c.SetClock(func() time.Time { return now })
	c.SetMinAge(5 * time.Second)
	f := tcp(1, flow.TCPEstablished, 600)
	c.Upsert(&f)
	now = now.Add(6 * time.Second)
	c.PromoteAged()
	c.TakeChanges(0)
	c.Delete(f.Key)
	f.TCP.State = flow.TCPSynSent
	c.Upsert(&f)
	if got := changesText(c.TakeChanges(0)); got != "1001 deleted" {
		t.Fatalf("got %q, want the old flow's destroy", got)
	}
	now = now.Add(6 * time.Second)
	c.PromoteAged()
	if got := changesText(c.TakeChanges(0)); got != "1001 SYN_SENT" {
		t.Fatalf("got %q, want the replacement once old enough", got)
	}
	c.Delete(f.Key)
	if got := changesText(c.TakeChanges(0)); got != "1001 deleted" {
		t.Fatalf("got %q, want its destroy", got)
	}
}

// Turning the delay off releases every waiting flow.
func TestMinAgeOff(t *testing.T) {
	c := NewInternal(nil)
	c.SetMinAge(time.Minute)
	f := tcp(1, flow.TCPEstablished, 600)
	c.Upsert(&f)
	if got := changesText(c.TakeChanges(0)); got != "" {
		t.Fatalf("got %q", got)
	}
	c.SetMinAge(0)
	if got := changesText(c.TakeChanges(0)); got != "1001 ESTABLISHED" {
		t.Fatalf("got %q, want the waiting flow", got)
	}
}
