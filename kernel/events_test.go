package kernel

import "testing"

// The filter has one comparison per port (at most 255) between the load
// and the two returns.
func TestOwnPortsFilterAssembles(t *testing.T) {
	for _, n := range []int{0, 1, 16, 300} {
		ports := make([]uint32, n)
		for i := range ports {
			ports[i] = uint32(i + 1)
		}
		raw := ownPortsFilter(ports)
		if want := 3 + min(n, 255); len(raw) != want {
			t.Errorf("%d ports: %d instructions, want %d", n, len(raw), want)
		}
	}
}
