package peerpolicy

import (
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

// FuzzCheck: whatever a peer's flow holds, an admitted flow carries no
// status bit outside the allowed set, no timeout over its cap, and no
// helper off the list; Check never panics.
func FuzzCheck(f *testing.F) {
	c := crafted()
	f.Add(c.Proto, c.TCP.State, c.Status, c.Timeout, c.Mark, c.Zone, "ftp", uint8(0))
	f.Add(flow.ProtoUDP, uint8(0), flow.StatusAssured|flow.StatusFixedTimeout, uint32(1<<31), uint32(0), uint16(0), "", uint8(3))
	f.Fuzz(func(t *testing.T, proto, state uint8, status, timeout, mark uint32, zone uint16, helper string, modes uint8) {
		fl := crafted()
		fl.Proto, fl.TCP.State, fl.Status, fl.Timeout, fl.Mark, fl.Zone = proto, state, status, timeout, mark, zone
		fl.Extra = &flow.Extra{Helper: helper}
		p, err := New(Options{Helpers: []string{"sip"}, Mark: Mode(modes % 4), Labels: Mode(modes / 4 % 4), NAT: Mode(modes / 16 % 4)})
		if err != nil {
			t.Fatal(err)
		}
		if p.Check(&fl) != nil {
			return
		}
		allowed := allowedStatus
		if fl.Extra != nil && fl.Extra.Helper != "" {
			allowed |= flow.StatusHelper
		}
		if fl.Status&^allowed != 0 {
			t.Fatalf("status %#x kept", fl.Status)
		}
		if uint64(fl.Timeout) > timeoutCap(&fl) {
			t.Fatalf("timeout %d over cap %d", fl.Timeout, timeoutCap(&fl))
		}
		if fl.Extra != nil && fl.Extra.Helper != "" && fl.Extra.Helper != "sip" {
			t.Fatalf("helper %q admitted", fl.Extra.Helper)
		}
	})
}
